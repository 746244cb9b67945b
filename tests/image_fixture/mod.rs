//! Shared set-up of the image tests: a cluster in a temp dir whose `[paths] cache` is one directory shared by
//! every test of the run (`$CARGO_TARGET_TMPDIR/imgbuild-image-cache`), so the Debian base (mmdebstrap, ~30 s to ~3 min depending on the mirror)
//! and the initrd are built once; base builds are serialized by the builder's file lock.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lowers this test's CPU priority (nice 10, inherited by the builds and VMs it starts). For long image tests whose
/// output no lab needs (not the arm64 build: the ProxyDHCP lab boots its image). They run beside the chain of lab
/// VMs, the run's longest path (`.config/nextest.toml`): with equal priority their squashfs builds and boots took
/// the cores the lab's VMs waited for, and the chain finished ~500 s after the other thread had run out of work.
pub fn yield_to_the_lab_chain() {
    // SAFETY: nice(2) on this process only. (Its result is the new niceness; nothing to check: a priority.)
    let _ = unsafe { libc::nice(10) };
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub profiles: PathBuf,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("imgbuild-image-cache")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Stand-ins for kubeadm and kubectl belong to the first-boot work; tests that only need *a* template for
/// them get this labelled one when the repository has none yet.
const TEST_STANDIN: &str = "#!/bin/sh\n{% include \"profiles/standins/_common.sh.j2\" %}\nstandin_say \"would run: {{ binary }} $*\"\nexit 0\n";

impl Fixture {
    /// A cluster (the repository's example) with its own images/state dirs, its own copy of the profiles, and
    /// the shared cache. `edit` may change the cluster.toml text.
    pub fn new(edit: impl FnOnce(String) -> String) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("profiles");
        copy_dir(&repo().join("profiles"), &profiles);
        for n in ["kubeadm", "kubectl"] {
            let p = profiles.join(format!("standins/{n}.sh.j2"));
            if !p.exists() {
                std::fs::write(p, TEST_STANDIN).unwrap();
            }
        }
        let src = std::fs::read_to_string(repo().join("cluster.toml")).unwrap();
        let src = format!(
            "{}\n[paths]\nprofiles = \"{}\"\nipxe = \"{}\"\nimages = \"images\"\nstate = \"state\"\nsecrets = \"secrets\"\ncache = \"{}\"\n",
            edit(src),
            profiles.display(),
            repo().join("ipxe").display(),
            shared_cache().display()
        );
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, src).unwrap();
        Fixture {
            dir,
            config,
            profiles,
        }
    }

    pub fn cluster(&self) -> imgbuild::config::Cluster {
        imgbuild::config::load(&self.config).unwrap()
    }

    pub fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }
}

/// Every secret found in the files under `root`: PEM private keys (a header followed by a base64 body, so the
/// parser strings inside TLS libraries do not count) and kubeadm bootstrap tokens, in every file that is not an
/// ELF binary. ELF files come from Debian packages or digest-verified artifacts, and some carry well-known
/// constants (GnuTLS embeds its FIPS self-test key; brotli's dictionary matches the token pattern); a secret of
/// a cluster would arrive as a rendered or generated file, which is always scanned.
pub fn scan_tree(root: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let data = std::fs::read(e.path()).unwrap();
                hits.extend(
                    scan_bytes(&data)
                        .into_iter()
                        .map(|h| format!("{}: {h}", e.path().display())),
                );
            }
        }
    }
    hits
}

pub fn scan_bytes(data: &[u8]) -> Vec<String> {
    use std::sync::OnceLock;
    static KEY: OnceLock<regex::bytes::Regex> = OnceLock::new();
    static TOKEN: OnceLock<regex::bytes::Regex> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        regex::bytes::Regex::new(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(Proc-Type:|[A-Za-z0-9+/=]{32,})",
        )
        .unwrap()
    });
    let token = TOKEN.get_or_init(|| {
        regex::bytes::Regex::new(r"(?-u)(?:^|[^a-z0-9])([a-z0-9]{6}\.[a-z0-9]{16})(?:[^a-z0-9]|$)")
            .unwrap()
    });
    let mut hits = Vec::new();
    if data.starts_with(b"\x7fELF") {
        return hits;
    }
    if let Some(m) = key.find(data) {
        hits.push(format!(
            "private key {:?}",
            String::from_utf8_lossy(&m.as_bytes()[..40])
        ));
    }
    if let Some(c) = token.captures(data) {
        hits.push(format!(
            "bootstrap token {:?}",
            String::from_utf8_lossy(&c[1])
        ));
    }
    hits
}

/// Unpacks a zstd-compressed newc initrd into `dir` (regular files and directories).
pub fn unpack_initrd(initrd: &Path, dir: &Path) {
    let data = zstd::decode_all(std::fs::File::open(initrd).unwrap()).unwrap();
    let mut r = &data[..];
    loop {
        let mut rd = cpio::NewcReader::new(r).unwrap();
        if rd.entry().is_trailer() {
            break;
        }
        let name = rd.entry().name().to_string();
        let mode = rd.entry().mode();
        let dest = dir.join(&name);
        if mode & 0o170000 == 0o040000 {
            std::fs::create_dir_all(&dest).unwrap();
        } else if mode & 0o170000 == 0o100000 {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut rd, &mut buf).unwrap();
            std::fs::write(&dest, buf).unwrap();
        }
        r = rd.finish().unwrap();
    }
}

pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn tarball(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    let raw = b.into_inner().unwrap();
    if !gzip {
        return raw;
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, &raw).unwrap();
    e.finish().unwrap()
}

/// Writes a mirror with every required artifact and returns the `[artifacts.*]` TOML pointing at it.
/// Binaries and tarballs get `.sha256` files in both formats; the manifests publish none.
pub fn mirror(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut toml = String::new();
    let put = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).unwrap();
    for n in ["kubeadm", "kubelet", "kubectl"] {
        let data = format!("#!/bin/sh\necho mirror {n}\n");
        put(n, data.as_bytes());
        put(
            &format!("{n}.sha256"),
            format!("{}\n", sha(data.as_bytes())).as_bytes(),
        );
        toml += &format!(
            "[artifacts.{n}]\nversion = \"1.36.3\"\nurl = \"file://{}/{n}\"\n\n",
            dir.display()
        );
    }
    let runc = b"#!/bin/sh\necho mirror runc\n";
    put("runc.amd64", runc);
    put(
        "runc.sha256sum",
        format!(
            "{}  runc.arm64\n{}  runc.amd64\n",
            "0".repeat(64),
            sha(runc)
        )
        .as_bytes(),
    );
    toml += &format!(
        "[artifacts.runc]\nversion = \"1.3.3\"\nurl = \"file://{0}/runc.amd64\"\nchecksum_url = \"file://{0}/runc.sha256sum\"\n\n",
        dir.display()
    );
    let tars: [(&str, Vec<u8>); 3] = [
        (
            "containerd.tar.gz",
            tarball(
                &[
                    ("bin/containerd", b"ctd"),
                    ("bin/containerd-shim-runc-v2", b"shim"),
                    ("bin/ctr", b"ctr"),
                ],
                true,
            ),
        ),
        ("crictl.tar.gz", tarball(&[("crictl", b"crictl")], true)),
        (
            "cni-plugins.tgz",
            tarball(
                &[
                    ("./bridge", b"bridge"),
                    ("./host-local", b"hl"),
                    ("./loopback", b"lo"),
                ],
                true,
            ),
        ),
    ];
    for ((file, data), name) in tars.iter().zip(["containerd", "crictl", "cni-plugins"]) {
        put(file, data);
        put(
            &format!("{file}.sha256"),
            format!("{}  {file}\n", sha(data)).as_bytes(),
        );
        toml += &format!(
            "[artifacts.{name}]\nversion = \"1.0.0\"\nurl = \"file://{}/{file}\"\n\n",
            dir.display()
        );
    }
    for n in ["cni-manifest", "metallb-manifest", "longhorn-manifest"] {
        put(
            &format!("{n}.yaml"),
            format!("kind: List # {n}\n").as_bytes(),
        );
        toml += &format!(
            "[artifacts.{n}]\nversion = \"1.0.0\"\nurl = \"file://{}/{n}.yaml\"\nchecksum_url = \"none\"\n\n",
            dir.display()
        );
    }
    toml
}

/// The example cluster with its artifacts served from a file:// mirror under the fixture.
pub fn mirrored() -> (Fixture, std::path::PathBuf) {
    let holder = tempfile::tempdir().unwrap();
    let mdir = holder.keep().join("mirror");
    let arts = mirror(&mdir);
    let f = Fixture::new(|src| {
        let start = src.find("[artifacts.kubeadm]").unwrap();
        let end = src.find("[base]").unwrap();
        format!("{}{}{}", &src[..start], arts, &src[end..])
    });
    own_cache(&f);
    (f, mdir)
}

/// Gives the fixture a cache of its own (tests here evict artifacts; the shared cache is for base builds).
pub fn own_cache(f: &Fixture) -> std::path::PathBuf {
    let cache = f.dir.path().join("own-cache");
    let text = std::fs::read_to_string(&f.config).unwrap();
    let text = text.replace(
        &shared_cache().display().to_string(),
        &cache.display().to_string(),
    );
    std::fs::write(&f.config, text).unwrap();
    cache
}
