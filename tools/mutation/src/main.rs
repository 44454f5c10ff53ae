//! `resca-mutation`: mutation testing by mutant schemata, for a machine too small to build every
//! mutant on its own (see docs/verification.md, "Mutation testing").
//!
//! cargo-mutants lists the mutants; this tool compiles all of them into one copy of the tree,
//! each behind a run-time switch (`schemata`), so the judge's tests are built once. It then runs
//! every judge test once with the switches recording which mutants each test reaches (`trace`),
//! and judges each mutant by running only the tests that reach it, quickest first, until one
//! fails (`run`). A test that never reaches a mutant's code behaves the same with the mutant on,
//! so leaving it out cannot change the verdict. `scripts/mutants.sh` drives the steps.

mod judge;
mod schemata;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use schemata::{ListedMutant, NumberedMutant, Placement};

#[derive(Parser)]
#[command(about = "Mutation testing by mutant schemata")]
struct Cli {
    #[command(subcommand)]
    command: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Rewrite the listed mutants' files in the tree as schemata, leaving out each mutant whose
    /// schema does not compile, until the package checks.
    Instrument {
        /// `cargo mutants --list --json` output.
        #[arg(long)]
        list: PathBuf,
        /// The unmutated sources (a workspace root).
        #[arg(long)]
        source: PathBuf,
        /// The copy of the workspace to rewrite.
        #[arg(long)]
        tree: PathBuf,
        /// The crate root of the mutated package, relative to the workspace (gets the switch module).
        #[arg(long)]
        crate_root: PathBuf,
        /// The packages to check the rewritten tree with (`cargo check -p`): the mutated one and
        /// those that use it, so that a const fn called in their const contexts stays const.
        #[arg(long = "package", required = true)]
        packages: Vec<String>,
        /// Where to write what became of each mutant.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run every test of the judge binaries once, recording which mutants each reaches.
    Trace {
        #[arg(long)]
        schemata: PathBuf,
        /// Test binaries (libtest) of the judge, each as `PATH=DIR`: its tests run in DIR, the
        /// package's directory, as under cargo (tests read files and proptest writes its
        /// regressions relative to it).
        #[arg(long = "binary", required = true)]
        binaries: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Judge the rewritten mutants (appends to `out`; mutants already there are skipped).
    Run {
        #[arg(long)]
        schemata: PathBuf,
        #[arg(long)]
        coverage: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Only mutants whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Count the outcomes per file and list the mutants that survived.
    Report {
        #[arg(long)]
        schemata: PathBuf,
        #[arg(long)]
        outcomes: PathBuf,
    },
}

/// The start of the reason of a mutant whose schema does not compile.
pub const UNVIABLE: &str = "its schema does not compile";

/// What `instrument` wrote for one mutant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaEntry {
    pub id: usize,
    pub name: String,
    pub file: String,
    /// None when rewritten; otherwise why not (cargo-mutants judges it instead).
    pub not_rewritten: Option<String>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Step::Instrument {
            list,
            source,
            tree,
            crate_root,
            packages,
            out,
        } => instrument(&list, &source, &tree, &crate_root, &packages, &out),
        Step::Trace {
            schemata,
            binaries,
            out,
            jobs,
        } => judge::trace(&read_schemata(&schemata)?, &binaries, &out, jobs),
        Step::Run {
            schemata,
            coverage,
            out,
            jobs,
            only,
        } => judge::run(&read_schemata(&schemata)?, &coverage, &out, jobs, only.as_deref()),
        Step::Report { schemata, outcomes } => judge::report(&read_schemata(&schemata)?, &outcomes),
    }
}

fn read_schemata(path: &Path) -> anyhow::Result<Vec<SchemaEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a schemata list", path.display()))
}

fn instrument(
    list: &Path,
    source: &Path,
    tree: &Path,
    crate_root: &Path,
    packages: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let listed: Vec<ListedMutant> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not `cargo mutants --list --json` output", list.display()))?;
    let mut by_file: BTreeMap<String, Vec<NumberedMutant>> = BTreeMap::new();
    for (id, mutant) in listed.iter().cloned().enumerate() {
        by_file
            .entry(mutant.file.clone())
            .or_default()
            .push(NumberedMutant { id, mutant });
    }

    let switch_path = tree.join(crate_root).with_file_name("mutant_schemata.rs");
    std::fs::write(&switch_path, schemata::switch_module(listed.len()))?;
    let root_source = std::fs::read_to_string(source.join(crate_root))?;
    std::fs::write(tree.join(crate_root), with_switch(&root_source))?;

    let mut excluded: HashMap<usize, String> = HashMap::new();
    let mut keep_const: HashSet<String> = HashSet::new();
    for attempt in 1.. {
        let mut blames = HashMap::new();
        let mut placements = Vec::new();
        for (file, mutants) in &by_file {
            let original = std::fs::read_to_string(source.join(file)).with_context(|| format!("reading {file}"))?;
            let rewritten = schemata::rewrite(file, &original, mutants, &excluded, &keep_const)?;
            let mut text = rewritten.text;
            if Path::new(file) == crate_root {
                text = with_switch(&text);
            }
            std::fs::write(tree.join(file), text)?;
            placements.extend(rewritten.placements);
            blames.insert(file.clone(), rewritten.blame);
        }
        let errors = check(tree, packages)?;
        if errors.is_empty() {
            let mut entries: Vec<SchemaEntry> = placements
                .into_iter()
                .map(|(id, placement)| SchemaEntry {
                    id,
                    name: listed[id].name.clone(),
                    file: listed[id].file.clone(),
                    not_rewritten: match placement {
                        Placement::Rewritten => None,
                        Placement::NotRewritten(why) => Some(why),
                    },
                })
                .collect();
            entries.sort_by_key(|e| e.id);
            let rewritten = entries.iter().filter(|e| e.not_rewritten.is_none()).count();
            eprintln!(
                "{rewritten} of {} mutants rewritten as schemata ({attempt} checks)",
                entries.len()
            );
            std::fs::write(out, serde_json::to_string_pretty(&entries)?)?;
            return Ok(());
        }
        let mut blamed = 0;
        let kept_before = keep_const.clone();
        for error in &errors {
            let innermost = blames.get(&error.file).and_then(|ranges| {
                ranges
                    .iter()
                    .filter(|(r, _)| r.contains(&error.byte))
                    .min_by_key(|(r, _)| r.len())
            });
            match innermost {
                Some((_, ids)) => {
                    for id in ids {
                        if !excluded.contains_key(id) {
                            excluded.insert(*id, format!("{UNVIABLE}: {}", error.message));
                            blamed += 1;
                        }
                    }
                }
                None => match non_const_fn(&error.message) {
                    // A const fn made plain is called in a const context: it stays const.
                    Some(name) if !kept_before.contains(&name) => {
                        if keep_const.insert(name.clone()) {
                            eprintln!("{name} is called in a const context: it stays a const fn");
                            blamed += 1;
                        }
                    }
                    _ => bail!(
                        "{}:{}: an error outside every schema: {}",
                        error.file,
                        error.byte,
                        error.message
                    ),
                },
            }
        }
        if blamed == 0 {
            bail!("the errors are blamed on mutants already left out: {errors:?}");
        }
        eprintln!("check {attempt}: {} errors, {blamed} mutants left out", errors.len());
    }
    unreachable!()
}

/// A crate root with the switch module. The rewritten code has parentheses and branches a
/// reader would not write: their warnings are off.
fn with_switch(root: &str) -> String {
    format!(
        "#![allow(unused_parens, unreachable_code, clippy::all)]\n{root}\n#[doc(hidden)]\npub mod mutant_schemata;\n"
    )
}

#[derive(Debug)]
struct CompileError {
    file: String,
    byte: usize,
    message: String,
}

/// The function a "cannot call non-const function `path::name` in constants" error names.
fn non_const_fn(message: &str) -> Option<String> {
    if !message.starts_with("cannot call non-const") {
        return None;
    }
    let path = message.split('`').nth(1)?;
    let name = path.split("::<").next()?.split('<').next()?.rsplit("::").next()?;
    Some(name.to_string())
}

/// `cargo check -p package...` in the tree: the errors' primary positions.
fn check(tree: &Path, packages: &[String]) -> anyhow::Result<Vec<CompileError>> {
    let mut args = vec!["check", "--quiet", "--message-format=json"];
    for package in packages {
        args.extend(["-p", package]);
    }
    let output = Command::new("cargo")
        .args(&args)
        .current_dir(tree)
        .output()
        .context("running cargo check")?;
    let mut errors = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = &message["message"];
        if message["level"] != "error" {
            continue;
        }
        let text = message["message"].as_str().unwrap_or("").to_string();
        let spans = message["spans"].as_array().cloned().unwrap_or_default();
        for span in spans.iter().filter(|s| s["is_primary"] == true) {
            errors.push(CompileError {
                file: span["file_name"].as_str().unwrap_or("").to_string(),
                byte: span["byte_start"].as_u64().unwrap_or(0) as usize,
                message: text.clone(),
            });
        }
    }
    if !output.status.success() && errors.is_empty() {
        bail!(
            "cargo check -p {} failed without an error message:\n{}",
            packages.join(" -p "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::non_const_fn;

    #[test]
    fn the_const_fn_of_a_const_context_error_is_named() {
        let message = "cannot call non-const function `gemm_tiled::tiled_shared_bytes` in constants";
        assert_eq!(non_const_fn(message).as_deref(), Some("tiled_shared_bytes"));
        assert_eq!(
            non_const_fn("cannot call non-const fn `row_words::<u32>` in constant functions").as_deref(),
            Some("row_words")
        );
        assert_eq!(non_const_fn("mismatched types"), None);
    }
}
