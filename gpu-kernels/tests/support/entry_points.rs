//! The entry points as declared in `src/nvptx.rs` (name, Rust parameter names and types), read from
//! the source text so that the PTX manifest can name every parameter. Shared by the manifest
//! generator (`examples/ptx_manifest.rs`) and the tests.

/// One `extern "ptx-kernel" fn` of `src/nvptx.rs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RustEntry {
    pub name: String,
    /// (parameter name, Rust type as written, whitespace normalised).
    pub params: Vec<(String, String)>,
}

/// The source of `src/<file>`.
pub fn source(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The source of `src/nvptx.rs`.
pub fn nvptx_source() -> String {
    source("nvptx.rs")
}

/// Every entry point of `src/nvptx.rs` (`extern "ptx-kernel" fn`), in source order.
pub fn rust_entries(source: &str) -> Vec<RustEntry> {
    entries_marked(source, "extern \"ptx-kernel\" fn ")
}

/// Every function of `source` whose declaration ends in `mark`, in source order.
pub fn entries_marked(source: &str, mark: &str) -> Vec<RustEntry> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(mark) {
        let after = &rest[at + mark.len()..];
        let open = after.find('(').expect("a parameter list");
        let name = after[..open].trim().to_string();
        // The matching parenthesis (types hold none, but be exact).
        let mut depth = 0usize;
        let mut close = open;
        for (i, ch) in after[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let params = split_top_level(&after[open + 1..close])
            .into_iter()
            .map(|p| {
                let (name, ty) = p
                    .split_once(':')
                    .unwrap_or_else(|| panic!("parameter `{p}` without a type"));
                (
                    name.trim().to_string(),
                    ty.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        out.push(RustEntry { name, params });
        rest = &after[close..];
    }
    out
}

/// Splits a parameter list at the commas outside `<...>`.
fn split_top_level(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for ch in list.chars() {
        match ch {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}
