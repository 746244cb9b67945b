//! The repository is self-contained and says what it needs: nothing reads beside the checkout, and every command
//! the tests, scripts and benchmarks call is installed by `scripts/setup` (from `.ci/apt-packages`) or is part of
//! every Debian system — never a silent dependency on what the machine that ran CI happened to have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of the checkout git knows or would add (tracked, and untracked but not ignored).
fn files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| repo().join(String::from_utf8_lossy(p).as_ref()))
        .filter(|p| p.is_file())
        .collect()
}

fn text(p: &Path) -> Option<String> {
    String::from_utf8(std::fs::read(p).ok()?).ok()
}

#[test]
fn nothing_in_the_repository_reads_from_beside_the_checkout() {
    // Built so that this file does not match itself.
    let beside = format!("..{}shared", '/');
    let offenders: Vec<String> = files()
        .iter()
        .filter(|p| text(p).is_some_and(|t| t.contains(&beside)))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these files refer to {beside}, which a user's clone does not have (vendor what they need inside the \
         repository): {offenders:?}"
    );
}

/// Bash builtins and keywords: never a package's command.
const SHELL_BUILTINS: &[&str] = &[
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "case",
    "cd",
    "command",
    "compgen",
    "continue",
    "declare",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "mapfile",
    "printf",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "test",
    "then",
    "time",
    "trap",
    "true",
    "type",
    "ulimit",
    "umask",
    "unset",
    "until",
    "wait",
    "while",
];
/// Words that precede the command they run: skipped to find it (`timeout 5 curl`, `ip netns exec NS udhcpc`).
const PREFIXES: &[&str] = &[
    "!", "exec", "time", "nice", "env", "sudo", "command", "then", "do", "else", "if", "while",
    "until", "elif",
];

/// The command words of one shell line: the first word of each simple command (after `|`, `;`, `&&`, `$(`, …),
/// past prefixes (`timeout N`, `ip netns exec NS`, `$NX`, `VAR=value`).
fn shell_commands(line: &str) -> Vec<String> {
    // Single-quoted text and double-quoted text without substitutions are data, not commands.
    let sq = regex::Regex::new(r"'[^']*'").unwrap();
    let dq = regex::Regex::new(r#""[^"$`]*""#).unwrap();
    let line = sq.replace_all(line, "''");
    let line = dq.replace_all(&line, "\"\"");
    let mut out = Vec::new();
    for seg in line.split(['|', ';', '&', '(', ')', '`', '{', '}']) {
        let mut words = seg.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if PREFIXES.contains(&w) || w.starts_with('$') || w.starts_with('-') || w.contains('=')
            {
                continue;
            }
            if w == "timeout" {
                words.next();
                continue;
            }
            if w == "ip" && words.peek() == Some(&"netns") {
                words.next();
                if words.next() == Some("exec") {
                    words.next();
                    continue;
                }
                out.push("ip".to_string());
                break;
            }
            if w == "-v" {
                continue;
            }
            out.push(w.to_string());
            break;
        }
    }
    out.retain(|w| {
        w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
            && !SHELL_BUILTINS.contains(&w.as_str())
    });
    out
}

/// Command words of the tests, scripts and benchmarks, each with the files that use it: every shell line of the
/// scripts (heredoc bodies and comments skipped), and in Rust `Command::new("x")` plus, in tests, the first command
/// word of every string literal (tests pass shell lines and argument lists to helpers: `ns.sh("udhcpc -i …")`).
fn command_words() -> BTreeMap<String, BTreeSet<String>> {
    let new = regex::Regex::new(r#"Command::new\("([^"]+)"\)"#).unwrap();
    let literal = regex::Regex::new(r#""((?:[^"\\]|\\.)*)""#).unwrap();
    let heredoc = regex::Regex::new(r#"<<-?\s*['"]?([A-Za-z_]+)['"]?"#).unwrap();
    let mut words: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in files() {
        let rel = p.strip_prefix(repo()).unwrap().display().to_string();
        let Some(t) = text(&p) else { continue };
        let mut add = |w: String| {
            words.entry(w).or_default().insert(rel.clone());
        };
        if rel.ends_with(".rs") && (rel.starts_with("src/") || rel.starts_with("tests/")) {
            if rel == "tests/repository.rs" {
                continue;
            }
            for c in new.captures_iter(&t) {
                add(c[1].to_string());
            }
            let lines = if rel.starts_with("tests/") {
                t.lines().collect()
            } else {
                Vec::new()
            };
            for line in lines
                .into_iter()
                .filter(|l| !l.trim_start().starts_with("//"))
            {
                for c in literal.captures_iter(line) {
                    let first = c[1].split("\\n").next().unwrap_or("");
                    shell_commands(first).into_iter().take(1).for_each(&mut add);
                }
            }
        } else if (rel.starts_with("scripts/")
            || rel.starts_with("bench/")
            || rel.starts_with(".ci/"))
            && t.lines()
                .next()
                .is_some_and(|l| l.starts_with("#!") && l.contains("sh"))
        {
            let mut until: Option<String> = None;
            for line in t.lines() {
                if let Some(end) = &until {
                    if line.trim() == end {
                        until = None;
                    }
                    continue;
                }
                let l = line.trim();
                if l.starts_with('#') {
                    continue;
                }
                if let Some(c) = heredoc.captures(l) {
                    until = Some(c[1].to_string());
                }
                shell_commands(l).into_iter().for_each(&mut add);
            }
        }
    }
    words
}

/// Every executable named `word` on PATH, in PATH order.
fn which_all(word: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return Vec::new();
    };
    std::env::split_paths(&path)
        .map(|d| d.join(word))
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect()
}

fn which(word: &str) -> Option<PathBuf> {
    which_all(word).into_iter().next()
}

/// The paths dpkg may know an executable by: itself and its merged-/usr twin, then its target and that one's twin.
fn aliases(path: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = Vec::new();
    for p in [path.to_path_buf(), real] {
        let s = p.display().to_string();
        let twin = match s.strip_prefix("/usr") {
            Some(rest) => PathBuf::from(rest),
            None => PathBuf::from(format!("/usr{s}")),
        };
        out.push(p);
        out.push(twin);
    }
    out
}

/// Path → owning package, for all of `paths` in one `dpkg -S` call.
fn owners(paths: &BTreeSet<PathBuf>) -> BTreeMap<PathBuf, String> {
    let out = Command::new("dpkg")
        .arg("-S")
        .args(paths)
        .output()
        .expect("dpkg runs");
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "pkg1, pkg2: /path" or "diversion by dash from: /bin/sh" (skipped: not a package).
        let Some((pkgs, path)) = line.split_once(": ") else {
            continue;
        };
        if pkgs.starts_with("diversion ") {
            continue;
        }
        let pkg = pkgs.split(',').next().unwrap_or("").trim();
        map.insert(
            PathBuf::from(path.trim()),
            pkg.split(':').next().unwrap_or(pkg).to_string(),
        );
    }
    map
}

/// The packages on every Debian system: Essential, or priority required.
fn every_debian() -> BTreeSet<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Essential} ${Priority}\n"])
        .output()
        .expect("dpkg-query runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" yes ") || l.ends_with(" required"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn every_command_the_tests_and_scripts_run_is_installed_by_setup() {
    if which("dpkg").is_none() {
        eprintln!(
            "SKIPPED: not a Debian system (no dpkg): cannot tell which package a command comes from"
        );
        return;
    }
    let listed: BTreeSet<String> = std::fs::read_to_string(repo().join(".ci/apt-packages"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    // What the listed packages pull in (one level of Depends: `dnsmasq` → `dnsmasq-base`).
    let mut installed = listed.clone();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Pre-Depends},${Depends}\n"])
        .args(&listed)
        .output()
        .expect("dpkg-query runs");
    for dep in String::from_utf8_lossy(&out.stdout).split([',', '\n', '|']) {
        if let Some(name) = dep.split_whitespace().next() {
            installed.insert(name.split(':').next().unwrap_or(name).to_string());
        }
    }
    // What a machine has before setup (README: "a fresh Debian 12 machine with Rust"), and what setup installs
    // with cargo.
    let prerequisites = ["cargo", "rustc", "rustup", "git", "cargo-nextest", "garage"];
    // Words that are executables on some machines but are data where our sources write them, or run only where
    // the caller checks first.
    let not_commands = [
        ("init", "a file name in test initrds"),
        (
            "kubeadm",
            "the stand-in under test, inside a test root, never the host's",
        ),
        (
            "kubectl",
            "the stand-in under test, inside a test root, never the host's",
        ),
        (
            "systemctl",
            "scripts/setup calls it only when systemd runs the machine",
        ),
        ("policy-rc.d", "written by scripts/setup"),
        ("file", "a word in test data and messages"),
        ("node", "a word in test data and messages"),
        ("systemd", "a word in test data (stage names)"),
        ("w", "a one-letter variable in test strings"),
        ("as", "a word in test data"),
    ];
    let words: Vec<(String, BTreeSet<String>, Vec<PathBuf>)> = command_words()
        .into_iter()
        .filter(|(w, _)| {
            !prerequisites.contains(&w.as_str()) && !not_commands.iter().any(|(n, _)| n == w)
        })
        .map(|(w, used)| {
            let paths = which_all(&w);
            (w, used, paths)
        })
        .filter(|(_, _, paths)| !paths.is_empty())
        .collect();
    let all: BTreeSet<PathBuf> = words
        .iter()
        .flat_map(|(_, _, ps)| ps.iter().flat_map(|p| aliases(p)))
        .collect();
    let owner = owners(&all);
    let base = every_debian();
    let checked = words.len();
    let mut missing = Vec::new();
    for (word, used_in, paths) in &words {
        // The package that ships the name itself; only a name no package ships (an alternatives link) counts
        // by what it points to.
        let pkgs: BTreeSet<&String> = paths
            .iter()
            .flat_map(|p| {
                let a = aliases(p);
                let own: Vec<&String> = a[..2].iter().filter_map(|x| owner.get(x)).collect();
                if own.is_empty() {
                    a[2..].iter().filter_map(|x| owner.get(x)).collect()
                } else {
                    own
                }
            })
            .collect();
        if !pkgs
            .iter()
            .any(|p| installed.contains(*p) || base.contains(*p))
        {
            missing.push(format!(
                "{word} ({}, package {}) used in {used_in:?}",
                paths[0].display(),
                pkgs.iter().next().map_or("none", |p| p.as_str())
            ));
        }
    }
    assert!(
        checked > 20,
        "only {checked} commands recognised: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "commands the tests or scripts call that scripts/setup does not install (add the package to \
         .ci/apt-packages, or make the caller skip with a visible reason):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_command_scan_finds_commands_where_the_shell_runs_them() {
    assert_eq!(
        shell_commands("timeout 5 curl -sf \"$u\" | jq .x"),
        ["curl", "jq"]
    );
    assert_eq!(shell_commands("$NX udhcpc -i eth0 && echo ok"), ["udhcpc"]);
    assert_eq!(
        shell_commands("ip netns exec \"$NS\" atftp --get x"),
        ["atftp"]
    );
    assert_eq!(
        shell_commands("X=$(mmdebstrap --version) ; ip link set lo up"),
        ["mmdebstrap", "ip"]
    );
    assert_eq!(
        shell_commands("echo 'perfdhcp is | data'"),
        Vec::<String>::new()
    );
    assert!(
        command_words().contains_key("perfdhcp"),
        "bench/dhcp runs perfdhcp"
    );
    assert!(
        command_words().contains_key("udhcpc"),
        "tests/dhcp_netns.rs runs udhcpc"
    );
}

#[test]
fn setup_installs_the_foreign_architecture_tools_mmdebstrap_calls() {
    // mmdebstrap runs arch-test itself for a foreign architecture: no scan of our sources can see that call.
    let list = std::fs::read_to_string(repo().join(".ci/apt-packages")).unwrap();
    for pkg in [
        "mmdebstrap",
        "arch-test",
        "qemu-user-static",
        "binfmt-support",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == pkg),
            ".ci/apt-packages lacks {pkg}"
        );
    }
}
