//! The house rules of `src/`, checked on the source text (docs/architecture.md explains them):
//!
//! - **Floors, imports one way:** `cli` → `vm` → `netboot` → `pki`, `status` → `image` → `config`, `template`. Code
//!   outside test modules never names a module on a higher floor, nor a sibling on its own floor (`template` may
//!   read `config`'s types: the engine factory takes the cluster's paths).
//! - **No import circle between files**, re-exports followed to the file that defines the item.
//! - **No file over 700 lines**, test-only files excepted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

const FLOORS: &[(&str, u8)] = &[
    ("cli", 5),
    ("vm", 4),
    ("netboot", 3),
    ("pki", 2),
    ("status", 2),
    ("image", 1),
    ("config", 0),
    ("template", 0),
];
/// Same-floor reads that are allowed: (from, to).
const SIDEWAYS: &[(&str, &str)] = &[("template", "config")];
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn floor(m: &str) -> Option<u8> {
    FLOORS.iter().find(|(n, _)| *n == m).map(|(_, f)| *f)
}

/// One source file: its module path (`netboot::dhcp::core`) and its text with test modules removed.
#[derive(Debug)]
struct File {
    rel: String,
    module: Vec<String>,
    code: String,
    test_only: bool,
    lines: usize,
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// Removes `#[cfg(test)]` items (`mod tests { … }`, test-only functions) and comments; returns the names of
/// test-only child modules declared as `#[cfg(test)] mod x;`.
fn strip_tests(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_children = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if l.starts_with("#[cfg(test)]") {
            // Skip further attributes, then the item: `mod x;` or a braced item.
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().starts_with("#[") {
                j += 1;
            }
            if j < lines.len() {
                let item = lines[j].trim();
                if let Some(name) = item
                    .strip_prefix("mod ")
                    .or_else(|| item.strip_prefix("pub mod "))
                    .or_else(|| item.strip_prefix("pub(crate) mod "))
                    .and_then(|r| r.strip_suffix(';'))
                {
                    test_children.push(name.trim().to_string());
                    i = j + 1;
                    continue;
                }
                if !item.contains('{') && item.ends_with(';') {
                    i = j + 1;
                    continue;
                }
                // Braced item: skip to its matching brace (counting braces outside strings and chars roughly).
                let mut depth = 0i64;
                let mut opened = false;
                while j < lines.len() {
                    for c in code_chars(lines[j]) {
                        if c == '{' {
                            depth += 1;
                            opened = true;
                        } else if c == '}' {
                            depth -= 1;
                        }
                    }
                    j += 1;
                    if opened && depth <= 0 {
                        break;
                    }
                }
                i = j;
                continue;
            }
        }
        let code = lines[i].split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
        i += 1;
    }
    (out, test_children)
}

/// The characters of a line outside string and char literals and `//` comments.
fn code_chars(line: &str) -> Vec<char> {
    let mut out = Vec::new();
    let mut in_str = false;
    let mut prev = ' ';
    let cs: Vec<char> = line.chars().collect();
    let mut k = 0;
    while k < cs.len() {
        let c = cs[k];
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '\'' && k + 2 < cs.len() && cs[k + 2] == '\'' {
            k += 3;
            prev = ' ';
            continue;
        } else if c == '/' && cs.get(k + 1) == Some(&'/') {
            break;
        } else {
            out.push(c);
        }
        prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        k += 1;
    }
    out
}

fn read_files() -> Vec<File> {
    let mut paths = Vec::new();
    let mut stack = vec![src()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    let mut files: Vec<File> = Vec::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for p in &paths {
        let rel = p.strip_prefix(src()).unwrap();
        let text = std::fs::read_to_string(p).unwrap();
        let (code, children) = strip_tests(&text);
        let module = module_of(rel);
        for c in children {
            let mut m = module.clone();
            m.push(c);
            test_only.insert(m);
        }
        files.push(File {
            rel: rel.display().to_string(),
            module,
            code,
            test_only: false,
            lines: text.lines().count(),
        });
    }
    for f in &mut files {
        f.test_only = test_only.iter().any(|t| f.module.starts_with(t));
    }
    files
}

/// Expands a `use` tree (`crate::a::{b, c::{d, e as f}}`) into full paths (aliases dropped).
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or(&tree);
        return vec![leaf.replace(' ', "")];
    };
    let prefix = tree[..open].replace(' ', "");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p)
                .into_iter()
                .map(|s| {
                    if s == "self" {
                        prefix.trim_end_matches("::").to_string()
                    } else {
                        format!("{prefix}{s}")
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every path a file names: `use` trees expanded, inline `crate::…` / `super::…` paths, and paths through its
/// own child modules written bare (`check::run` in `cli/mod.rs` is `self::check::run`).
fn paths_named(code: &str) -> Vec<String> {
    let decl = Regex::new(r"(?m)^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;").unwrap();
    let children: Vec<String> = decl.captures_iter(code).map(|c| c[1].to_string()).collect();
    let mut out = paths_named_qualified(code);
    let without_uses = Regex::new(r"(?s)\buse\s+[^;]*;")
        .unwrap()
        .replace_all(code, "");
    for child in children {
        let bare = Regex::new(&format!(
            r"(?:^|[^A-Za-z0-9_:]){child}((?:::[A-Za-z_][A-Za-z0-9_]*)+)"
        ))
        .unwrap();
        for c in bare.captures_iter(&without_uses) {
            out.push(format!("self::{child}{}", &c[1]));
        }
    }
    out
}

fn paths_named_qualified(code: &str) -> Vec<String> {
    let use_re = Regex::new(r"(?s)\buse\s+((?:crate|super|self)::[^;]*);").unwrap();
    let inline = Regex::new(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let mut out = Vec::new();
    for c in use_re.captures_iter(code) {
        out.extend(expand(&c[1]));
    }
    let without_uses = use_re.replace_all(code, "");
    for c in inline.captures_iter(&without_uses) {
        out.push(c[1].to_string());
    }
    out
}

/// Resolves `path` named in module `from` to absolute segments (`crate::` dropped, `super`/`self` applied).
fn absolute(from: &[String], is_mod_file: bool, path: &str) -> Vec<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = Vec::new();
    let mut rest = &segs[..];
    match segs.first() {
        Some(&"crate") => rest = &segs[1..],
        Some(&"super") | Some(&"self") => {
            // In `a/b.rs` (module a::b) `super` is `a`; `self` is `a::b`.
            base = from.to_vec();
            let _ = is_mod_file;
            while let Some(&s) = rest.first() {
                match s {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().map(|s| s.to_string()));
    base
}

#[test]
fn imports_run_one_way_down_the_floors() {
    let mut bad = Vec::new();
    for f in read_files().iter().filter(|f| !f.test_only) {
        let Some(me) = f.module.first() else { continue };
        let Some(my_floor) = floor(me) else { continue };
        for p in paths_named(&f.code) {
            let abs = absolute(&f.module, f.rel.ends_with("mod.rs"), &p);
            let Some(to) = abs.first() else { continue };
            let Some(their_floor) = floor(to) else {
                continue;
            };
            let up = their_floor > my_floor;
            let sideways = their_floor == my_floor
                && to != me
                && !SIDEWAYS.contains(&(me.as_str(), to.as_str()));
            if up || sideways {
                bad.push(format!(
                    "src/{}: {} ({me} is on floor {my_floor}, {to} on {their_floor})",
                    f.rel, p
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run up (or sideways) the floors cli → vm → netboot → pki, status → image → config, template:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn no_import_circle_between_files() {
    let files = read_files();
    let by_module: BTreeMap<Vec<String>, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let reexport = Regex::new(r"(?s)\bpub(?:\([a-z]+\))?\s+use\s+([^;]*);").unwrap();
    // Item name → the path it is re-exported from, per file.
    let reexports: Vec<BTreeMap<String, String>> = files
        .iter()
        .map(|f| {
            let mut m = BTreeMap::new();
            for c in reexport.captures_iter(&f.code) {
                for p in expand(&c[1]) {
                    if let Some(name) = p.rsplit("::").next() {
                        m.insert(name.to_string(), p.clone());
                    }
                }
            }
            m
        })
        .collect();
    // The file a path lands in: the longest module prefix, following a re-export of the next segment.
    let resolve = |abs: &[String]| -> Option<usize> {
        let mut abs = abs.to_vec();
        for _ in 0..8 {
            let (len, idx) = (0..=abs.len())
                .rev()
                .find_map(|n| by_module.get(&abs[..n]).map(|i| (n, *i)))?;
            let Some(next) = abs.get(len) else {
                return Some(idx);
            };
            let Some(target) = reexports[idx].get(next) else {
                return Some(idx);
            };
            let mut new = absolute(
                &files[idx].module,
                files[idx].rel.ends_with("mod.rs"),
                target,
            );
            new.extend(abs[len + 1..].iter().cloned());
            if new == abs {
                return Some(idx);
            }
            abs = new;
        }
        None
    };
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate().filter(|(_, f)| !f.test_only) {
        for p in paths_named(&f.code) {
            let abs = absolute(&f.module, f.rel.ends_with("mod.rs"), &p);
            if let Some(j) = resolve(&abs)
                && j != i
                && !files[j].test_only
                && !files[j].module.is_empty()
            {
                // A parent's `mod child;` is a declaration, not an import; re-exports are followed above.
                edges.entry(i).or_default().insert(j);
            }
        }
    }
    // Cycles: strongly connected components with more than one file (Tarjan).
    let mut t = Tarjan {
        index: vec![usize::MAX; files.len()],
        low: vec![0; files.len()],
        on_stack: vec![false; files.len()],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..files.len() {
        if t.index[v] == usize::MAX {
            t.visit(v, &edges);
        }
    }
    let circles: Vec<String> = t
        .sccs
        .iter()
        .map(|c| {
            let mut names: Vec<&str> = c.iter().map(|i| files[*i].rel.as_str()).collect();
            names.sort();
            names.join(" ↔ ")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between files in src/:\n  {}",
        circles.join("\n  ")
    );
}

#[test]
fn no_file_in_src_is_over_700_lines_except_tests() {
    let long: Vec<String> = read_files()
        .iter()
        .filter(|f| !f.test_only && f.lines > MAX_LINES)
        .map(|f| format!("src/{}: {} lines", f.rel, f.lines))
        .collect();
    assert!(
        long.is_empty(),
        "split these by what they do:\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_checker_sees_what_it_checks() {
    // The rules above pass trivially if the scan finds nothing: make sure it reads real imports.
    let files = read_files();
    assert!(files.len() > 50, "{} files", files.len());
    let cli = files
        .iter()
        .find(|f| f.rel == "cli/mod.rs")
        .expect("src/cli/mod.rs");
    assert!(
        paths_named(&cli.code)
            .iter()
            .any(|p| p == "self::check::run"),
        "{:?}",
        paths_named(&cli.code)
    );
    let global = files
        .iter()
        .find(|f| f.rel == "cli/global.rs")
        .expect("src/cli/global.rs");
    assert!(
        paths_named(&global.code)
            .iter()
            .any(|p| p.starts_with("crate::config")),
        "{:?}",
        paths_named(&global.code)
    );
    assert_eq!(
        expand("crate::a::{b, c::{d, e as f}, self}"),
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::e",
            "crate::a"
        ]
    );
    let (code, children) = strip_tests(
        "fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n#[cfg(test)]\nmod fuzz;\nfn b() {}\n",
    );
    assert_eq!(code, "fn a() {}\nfn b() {}\n");
    assert_eq!(children, ["fuzz"]);
}

struct Tarjan {
    index: Vec<usize>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    sccs: Vec<Vec<usize>>,
}

impl Tarjan {
    fn visit(&mut self, v: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) {
        self.index[v] = self.next;
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in edges.get(&v).into_iter().flatten() {
            if self.index[w] == usize::MAX {
                self.visit(w, edges);
                self.low[v] = self.low[v].min(self.low[w]);
            } else if self.on_stack[w] {
                self.low[v] = self.low[v].min(self.index[w]);
            }
        }
        if self.low[v] == self.index[v] {
            let mut c = Vec::new();
            loop {
                let w = self.stack.pop().unwrap();
                self.on_stack[w] = false;
                c.push(w);
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                self.sccs.push(c);
            }
        }
    }
}
