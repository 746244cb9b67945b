//! What the DHCP tests in network namespaces share (`dhcp_netns`, `dhcp_relay`): running setup commands, and
//! Debian's udhcpc run once inside a namespace, its `bound` event's variables read back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `cmd` (argv); panics with its stderr when it fails.
pub fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One udhcpc run: where, and how long it may try.
pub struct Udhcpc<'a> {
    /// The client's network namespace.
    pub ns: &'a str,
    /// Its interface there.
    pub iface: &'a str,
    /// The whole run's bound (`timeout`), seconds.
    pub timeout_secs: u32,
    /// `-t`: discover packets sent.
    pub tries: u32,
    /// `-T`: seconds between them.
    pub pause_secs: u32,
}

impl Udhcpc<'_> {
    /// Runs udhcpc once (`-f -q -n`, extra arguments appended) with its event script and files in `dir`;
    /// returns the variables of its `bound` event, if any, and whether udhcpc exited successfully.
    pub fn once(&self, dir: &Path, extra: &[&str]) -> (Option<BTreeMap<String, String>>, bool) {
        let script = dir.join("udhcpc.sh");
        std::fs::write(&script, "#!/bin/sh\nenv > \"$OUT.$1\"\n").unwrap();
        run(&["chmod", "+x", script.to_str().unwrap()]);
        let out = dir.join("udhcpc");
        let _ = std::fs::remove_file(out.with_extension("bound"));
        let status = Command::new("timeout")
            .arg(self.timeout_secs.to_string())
            .args(["ip", "netns", "exec", self.ns, "udhcpc", "-f", "-q", "-n"])
            .arg("-t")
            .arg(self.tries.to_string())
            .arg("-T")
            .arg(self.pause_secs.to_string())
            .args(["-A", "1", "-i", self.iface, "-s"])
            .arg(&script)
            .args(extra)
            .env("OUT", &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let bound = std::fs::read_to_string(out.with_extension("bound"))
            .ok()
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            });
        (bound, status.success())
    }
}
