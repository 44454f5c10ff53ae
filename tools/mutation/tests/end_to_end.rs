//! The three steps on a crate small enough to build in seconds: its mutants are rewritten, the
//! crate's tests are traced, and each mutant gets the verdict that building it alone would
//! give: caught by a failing test, missed when every test that reaches it passes, unreached when
//! no test runs its code.

use std::path::Path;
use std::process::Command;

const LIB: &str = "pub fn add(a: u32, b: u32) -> u32 {
    a + b
}

pub fn double(a: u32) -> u32 {
    a * 2
}

pub fn never_called(a: u32) -> u32 {
    a - 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds() {
        assert_eq!(super::add(2, 3), 5);
    }

    #[test]
    fn doubles_two() {
        assert_eq!(super::double(2), 4);
    }
}
";

/// The mutants cargo-mutants 27 lists for `LIB` (name, genre, replacement, line, column).
const LISTED: [(&str, &str, &str, usize, usize); 7] = [
    ("add -> 0", "FnValue", "0", 2, 5),
    ("add: + to -", "BinaryOperator", "-", 2, 7),
    ("add: + to *", "BinaryOperator", "*", 2, 7),
    ("double: * to +", "BinaryOperator", "+", 6, 7),
    ("double: * to /", "BinaryOperator", "/", 6, 7),
    ("never_called: - to +", "BinaryOperator", "+", 10, 7),
    ("never_called -> 1", "FnValue", "1", 10, 5),
];

fn write_crate(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), LIB).unwrap();
}

fn tool(args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_resca-mutation"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "resca-mutation {args:?} failed");
}

#[test]
fn each_mutant_gets_the_verdict_of_its_own_build() {
    let work = tempfile::tempdir().unwrap();
    let (source, tree) = (work.path().join("source"), work.path().join("tree"));
    write_crate(&source);
    write_crate(&tree);
    let list: Vec<serde_json::Value> = LISTED
        .iter()
        .map(|(name, genre, replacement, line, column)| {
            let at = serde_json::json!({ "line": line, "column": column });
            serde_json::json!({ "name": name, "file": "src/lib.rs", "genre": genre, "replacement": replacement,
                "span": { "start": at, "end": at } })
        })
        .collect();
    let path = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("list.json"), serde_json::to_string(&list).unwrap()).unwrap();

    let (source_arg, tree_arg) = (source.to_str().unwrap(), tree.to_str().unwrap());
    tool(&[
        "instrument",
        "--list",
        &path("list.json"),
        "--source",
        source_arg,
        "--tree",
        tree_arg,
        "--crate-root",
        "src/lib.rs",
        "--package",
        "tiny",
        "--out",
        &path("schemata.json"),
    ]);
    let schemata: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path("schemata.json")).unwrap()).unwrap();
    assert!(schemata.iter().all(|e| e["not_rewritten"].is_null()), "{schemata:?}");

    let build = Command::new("cargo")
        .args(["test", "--no-run", "--quiet", "--message-format=json"])
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let binary = String::from_utf8_lossy(&build.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(str::to_string))
        .expect("the test binary");

    let binary = format!("{binary}={tree_arg}");
    tool(&[
        "trace",
        "--schemata",
        &path("schemata.json"),
        "--binary",
        &binary,
        "--out",
        &path("coverage.json"),
    ]);
    let judge = || {
        tool(&[
            "run",
            "--schemata",
            &path("schemata.json"),
            "--coverage",
            &path("coverage.json"),
            "--out",
            &path("outcomes.jsonl"),
        ])
    };
    judge();
    let outcomes = std::fs::read_to_string(path("outcomes.jsonl")).unwrap();
    let verdict = |name: &str| -> String {
        let line = outcomes
            .lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .unwrap_or_else(|| panic!("{name}: {outcomes}"));
        serde_json::from_str::<serde_json::Value>(line).unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // 0 != 5; 2 - 3 overflows (a panic in a test build); 2 * 3 != 5.
    assert_eq!(verdict("add -> 0"), "caught");
    assert_eq!(verdict("add: + to -"), "caught");
    assert_eq!(verdict("add: + to *"), "caught");
    // 2 + 2 == 2 * 2: the one test of `double` cannot tell them apart.
    assert_eq!(verdict("double: * to +"), "missed");
    assert_eq!(verdict("double: * to /"), "caught");
    assert_eq!(verdict("never_called: - to +"), "unreached");
    assert_eq!(verdict("never_called -> 1"), "unreached");

    // A second run resumes: every mutant is judged, nothing is added.
    judge();
    assert_eq!(std::fs::read_to_string(path("outcomes.jsonl")).unwrap(), outcomes);
}
