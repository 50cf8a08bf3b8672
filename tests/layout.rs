//! The code reads the way the design does: docs/DESIGN.md's module map names every source file
//! and script, its dependency table is what the code uses (both ways), no source file is longer
//! than 800 lines before its tests, and no function longer than 150 lines (the wasmtime linker
//! registration tables aside: one line per import, nothing to split). Cheap checks that keep
//! the summary parts of the design from going stale while its detailed sections stay true.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines a source file may have before its tests.
const FILE_MAX: usize = 800;
/// The most lines a function may have.
const FUNCTION_MAX: usize = 150;
/// Functions that are tables: one registration per line.
const TABLES: &[(&str, &str)] = &[
    ("src/realizer/wasi.rs", "add_to_linker"),
    ("src/realizer/host.rs", "add_to_linker"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn design() -> String {
    fs::read_to_string(root().join("docs/DESIGN.md")).expect("docs/DESIGN.md")
}

/// Every file under `dir` (relative to the repository), sorted.
fn files(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root()).unwrap();
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The module map's entries: each line that starts a path at column 0 opens an entry, its
/// indented lines continue it.
fn module_map(design: &str) -> BTreeMap<String, String> {
    let start = design.find("## Module map").expect("a module map");
    let block = &design[start..];
    let block = &block[block.find("```").expect("its code block") + 3..];
    let block = &block[..block.find("```").expect("its end")];
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in block.lines() {
        if line.starts_with(' ') {
            if let Some(text) = current.as_ref().and_then(|path| entries.get_mut(path)) {
                text.push_str(line);
            }
        } else if let Some(path) = line.split_whitespace().next() {
            current = Some(path.to_owned());
            entries.insert(path.to_owned(), line[path.len()..].to_owned());
        }
    }
    entries
}

/// Whether `text` names `word` as a word of its own (`lazy.rs` is not named by `xlazy.rs`).
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
    })
}

#[test]
fn the_module_map_names_every_source_file_and_script() {
    let design = design();
    let map = module_map(&design);
    let mut missing = Vec::new();
    for file in files("src") {
        if map.contains_key(&file) {
            continue;
        }
        let (dir, name) = file.rsplit_once('/').unwrap();
        match map.get(&format!("{dir}/")) {
            Some(text) if names(text, name) => {}
            _ => missing.push(file),
        }
    }
    let scripts = map.get("scripts/").expect("a scripts/ entry");
    for script in files("scripts") {
        let name = script.trim_start_matches("scripts/");
        if !names(scripts, name) {
            missing.push(script);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/DESIGN.md's module map does not name: {missing:?}"
    );
}

/// The code of `file` outside its tests: the lines before `#[cfg(test)]` (none for a file of
/// tests), comments dropped.
fn code(file: &Path) -> Vec<String> {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = fs::read_to_string(file).unwrap();
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_owned)
        .collect()
}

/// The top-level module a file of `src/` belongs to (`src/store/gc/mod.rs` → `store`).
fn module_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then(|| module.to_owned())
}

#[test]
fn the_dependency_table_is_what_the_code_uses() {
    let design = design();
    let mut declared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let table = &design[design.find("| module | uses |").expect("the dependency table")..];
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let module = cells[1].trim_matches('`').to_owned();
        let uses = cells[2]
            .split(',')
            .map(|u| u.trim().trim_matches('`').to_owned())
            .filter(|u| !u.is_empty() && u != "—")
            .collect();
        declared.insert(module, uses);
    }
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files("src") {
        let Some(module) = module_of(&file) else { continue };
        let entry = used.entry(module.clone()).or_default();
        for line in code(&root().join(&file)) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != module {
                    entry.insert(name);
                }
            }
        }
    }
    assert_eq!(
        used, declared,
        "docs/DESIGN.md's dependency table (right) against what the code names (left)"
    );
}

#[test]
fn no_file_and_no_function_is_too_long() {
    let mut long = Vec::new();
    for file in files("src") {
        let lines = code(&root().join(&file));
        if lines.len() > FILE_MAX {
            long.push(format!("{file}: {} lines before its tests", lines.len()));
        }
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let Some(at) = trimmed.find("fn ") else { continue };
            let head = &trimmed[..at];
            let is_fn = head
                .split_whitespace()
                .all(|w| w.starts_with("pub") || matches!(w, "async" | "const" | "unsafe" | "extern" | "\"C\""));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let name: String = trimmed[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let end = format!("{indent}}}");
            let Some(length) = lines[i..].iter().position(|l| *l == end) else {
                continue;
            };
            if length + 1 > FUNCTION_MAX && !TABLES.contains(&(file.as_str(), name.as_str())) {
                long.push(format!("{file}: fn {name} has {} lines", length + 1));
            }
        }
    }
    assert!(long.is_empty(), "too long: {long:#?}");
}
