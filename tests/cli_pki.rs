//! `imgbuild secrets`, `imgbuild enroll` and `imgbuild kubeconfig` as a user runs them.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
}

fn run(cfg: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = bin().arg("--config").arg(cfg).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn secrets_enroll_and_kubeconfig_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let cfg = common::write_cluster(d.path(), false, |t| t);
    let (ok, out) = run(&cfg, &["secrets", "init"]);
    assert!(ok, "{out}");
    assert!(out.contains("discovery hash: sha256:"), "{out}");
    let (ok, out) = run(&cfg, &["secrets", "init"]);
    assert!(
        !ok && out.contains("refusing to overwrite") && out.contains("To rotate"),
        "{out}"
    );
    let (ok, out) = run(&cfg, &["secrets", "show"]);
    assert!(
        ok && out.contains("expires") && !out.contains("PRIVATE"),
        "{out}"
    );

    // Enrollment state changes through the state file.
    let (ok, out) = run(&cfg, &["enroll", "--open", "30m", "--reset", "worker-1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("window: open until") && out.contains("worker-1"),
        "{out}"
    );
    let st = imgbuild::pki::enroll::Store::at(&d.path().join("state"))
        .read()
        .unwrap();
    assert!(st.open_until_ms.unwrap() > imgbuild::status::now_ms() + 29 * 60 * 1000);
    let (ok, out) = run(&cfg, &["enroll", "--close"]);
    assert!(ok && out.contains("enrollment closed"), "{out}");
    let (ok, out) = run(&cfg, &["enroll", "--reset", "nosuchhost"]);
    assert!(!ok && out.contains("neither a hostname nor a MAC"), "{out}");

    // The admin kubeconfig: private, signed by the cluster CA, pointing at the VIP.
    let kc = d.path().join("admin.conf");
    let (ok, out) = run(&cfg, &["kubeconfig", "-o", kc.to_str().unwrap()]);
    assert!(ok, "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&kc).unwrap();
    let doc = &common::yaml_docs("admin.conf", &text)[0];
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        "https://10.77.0.10:6443"
    );
    let crt = doc["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .unwrap();
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(crt)
        .unwrap();
    let crt_path = d.path().join("admin.crt");
    std::fs::write(&crt_path, pem).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(d.path().join("secrets/ca.crt"))
        .arg(&crt_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&crt_path)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&out.stdout);
    assert!(
        subject.contains("O = kubeadm:cluster-admins") && subject.contains("CN = kubernetes-admin"),
        "{subject}"
    );
}

/// The enrollment state survives kill -9 at any moment: the file is replaced atomically, never torn.
#[test]
fn enrollment_state_survives_kill_9_mid_write() {
    let d = tempfile::tempdir().unwrap();
    let cfg = common::write_cluster(d.path(), false, |t| t);
    let store = imgbuild::pki::enroll::Store::at(&d.path().join("state"));
    // Some state worth keeping.
    {
        let mut l = store.lock().unwrap();
        for m in ["52:54:00:77:00:11", "52:54:00:77:00:21"] {
            l.state.enrolled.insert(
                m.parse().unwrap(),
                imgbuild::pki::enroll::Enrolled {
                    hostname: "x".into(),
                    ip: "10.77.0.11".parse().unwrap(),
                    at_ms: 1,
                },
            );
        }
        l.save().unwrap();
    }
    for i in 0..20u64 {
        let mut child = bin()
            .arg("--config")
            .arg(&cfg)
            .args(["enroll", "--open", "30m"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(500 * (i % 10)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let st = store.read().expect("the state file is never torn");
        assert_eq!(st.enrolled.len(), 2, "round {i}");
    }
}
