//! The S3 image store against a real 3-node Garage cluster in a private network namespace: push (artifacts
//! first, manifest last; a half-pushed image is never visible; pushing again is harmless), pull into an empty
//! local store (byte-identical), `imgbuild serve` with an empty cache serving an image straight from the bucket
//! over its real HTTP listener (curl), an object whose bytes were changed in the bucket refused and never
//! served, and reads going on with one Garage node stopped (replication factor 3). No VM.

mod common;
#[path = "common/garage.rs"]
mod garage;
mod netboot;

use std::path::Path;
use std::process::Output;

use garage::{Garage, in_netns};
use imgbuild::config::Role;
use netboot::*;
use object_store::ObjectStore;

/// `imgbuild -c <cluster> <args>` inside the namespace (where the object store is).
fn imgbuild_in(ns: &Netns, c: &ClusterDir, args: &[&str]) -> Output {
    let mut cmd = ns.cmd("timeout");
    cmd.arg("60")
        .arg(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-c")
        .arg(&c.config)
        .args(args)
        .env("NO_COLOR", "1");
    run(&mut cmd)
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A cluster directory whose `[store]` is the Garage bucket, with its own (empty) cache.
fn s3_cluster(g: &Garage) -> ClusterDir {
    let c = ClusterDir::new(None);
    let creds = c.dir.path().join("s3-credentials");
    g.write_credentials(&creds);
    let mut text = std::fs::read_to_string(&c.config).unwrap();
    text.push_str(&g.store_toml(&creds, &c.dir.path().join("store-cache")));
    std::fs::write(&c.config, text).unwrap();
    c
}

/// The bucket's keys, listed by the test itself (object_store, inside the namespace).
fn bucket_keys(g: &Garage, ns: &Netns) -> Vec<String> {
    let client = client(g);
    in_netns(&ns.name, move || {
        use futures::StreamExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut keys: Vec<String> = client
                .list(None)
                .map(|m| m.unwrap().location.to_string())
                .collect()
                .await;
            keys.sort();
            keys
        })
    })
}

fn client(g: &Garage) -> std::sync::Arc<object_store::aws::AmazonS3> {
    std::sync::Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&g.endpoint)
            .with_bucket_name(&g.bucket)
            .with_region(&g.region)
            .with_allow_http(true)
            .with_access_key_id(&g.key_id)
            .with_secret_access_key(&g.secret)
            .build()
            .unwrap(),
    )
}

/// Overwrites object `key` in the bucket with `bytes` (someone changed it there).
fn overwrite(g: &Garage, ns: &Netns, key: &str, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    let client = client(g);
    let key = object_store::path::Path::from(key);
    in_netns(&ns.name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client.put(&key, bytes.into())).unwrap();
    });
}

fn metric(ns: &Netns, name: &str) -> f64 {
    let (_, _, body) = http(ns, &[], "/metrics");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn read_image(dir: &Path, id: &str, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(id).join(name)).unwrap()
}

#[test]
fn push_pull_serve_from_an_empty_cache_refuse_changed_bytes_and_survive_a_stopped_node() {
    let t0 = std::time::Instant::now();
    let ns = Netns::new();
    let mut g = Garage::start(&ns.name);
    let builder = s3_cluster(&g);
    let (worker, wfiles) = builder.make_image(Role::Worker, false, "s3");
    let (master, mfiles) = builder.make_image(Role::Master, false, "s3");

    // A push that fails half-way (the local rootfs of the master image was damaged, same size) leaves its
    // artifacts in the bucket but no manifest: the image is not visible, not listed, not served.
    let rootfs = builder.images.join(&master).join("rootfs.squashfs");
    let good = std::fs::read(&rootfs).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&rootfs, &bad).unwrap();
    let o = imgbuild_in(&ns, &builder, &["push", "--quiet", &master]);
    assert!(!o.status.success(), "a damaged push must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sha256"), "{err}");
    let keys = bucket_keys(&g, &ns);
    assert!(
        keys.iter().any(|k| k.starts_with("blobs/sha256/")),
        "the artifacts before the damaged one were uploaded: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("manifests/")),
        "no manifest of a half-pushed image: {keys:?}"
    );
    let listed = ok(&imgbuild_in(&ns, &builder, &["images"]));
    assert!(!listed.contains(&master[..12]), "{listed}");
    std::fs::write(&rootfs, &good).unwrap();

    // Push both; pushing again sends nothing and says so.
    for id in [&worker, &master] {
        let out = ok(&imgbuild_in(&ns, &builder, &["push", "--quiet", id]));
        assert!(out.contains(&format!("pushed image {id}")), "{out}");
    }
    let again = ok(&imgbuild_in(&ns, &builder, &["push", "--quiet", &worker]));
    assert!(again.contains("was already in"), "{again}");
    assert!(!again.contains("uploaded"), "{again}");
    let keys = bucket_keys(&g, &ns);
    assert!(keys.contains(&format!("manifests/{worker}")), "{keys:?}");
    assert!(
        keys.contains(&format!(
            "blobs/sha256/{}",
            sha256_hex(&wfiles["rootfs.squashfs"])
        )),
        "{keys:?}"
    );

    // Pull into an empty local store with an empty cache: byte-identical.
    let puller = s3_cluster(&g);
    let out = ok(&imgbuild_in(
        &ns,
        &puller,
        &["pull", "--quiet", &worker[..10]],
    ));
    assert!(out.contains(&format!("pulled image {worker}")), "{out}");
    for (name, bytes) in &wfiles {
        assert_eq!(
            &read_image(&puller.images, &worker, name),
            bytes,
            "{name} differs after pull"
        );
    }
    ok(&imgbuild_in(&ns, &puller, &["verify", &worker]));

    // A replica started empty (no local images, empty cache) serves the pushed image over HTTP.
    let replica = s3_cluster(&g);
    let pin = ok(&imgbuild_in(&ns, &replica, &["pin", "worker", &worker]));
    assert!(pin.contains(&worker), "{pin}");
    assert_eq!(std::fs::read_dir(&replica.images).unwrap().count(), 0);
    let server = Server::start(&ns, &replica);
    let (code, _, script) = http(&ns, &[], &format!("/ipxe/{}", WORKER1.replace(':', "-")));
    assert_eq!(code, 200);
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.contains(&format!("/images/{worker}/vmlinuz")),
        "{script}"
    );
    for name in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        let (code, hdr, body) = http(&ns, &[], &format!("/images/{worker}/{name}"));
        assert_eq!(code, 200, "{name}: {}", String::from_utf8_lossy(&body));
        assert_eq!(body, wfiles[name], "{name} served from the bucket differs");
        assert_eq!(
            header(&hdr, "etag"),
            Some(format!("\"{}\"", sha256_hex(&wfiles[name])).as_str())
        );
    }
    // The second fetch is a cache hit; the fills are counted.
    let hits = metric(&ns, "imgbuild_store_cache_hits_total");
    let (code, _, _) = http(&ns, &[], &format!("/images/{worker}/vmlinuz"));
    assert_eq!(code, 200);
    assert!(metric(&ns, "imgbuild_store_cache_hits_total") > hits);
    // Three artifacts fetched from the bucket by this server (the manifest was already in the replica's cache:
    // `imgbuild pin` above read it through the same cache directory).
    assert!(metric(&ns, "imgbuild_store_cache_misses_total") >= 3.0);
    let filled = metric(&ns, "imgbuild_store_cache_fill_bytes_total");
    let wsize: usize = wfiles.values().map(Vec::len).sum();
    assert!(
        filled >= (wsize - wfiles["manifest.json"].len()) as f64,
        "{filled}"
    );
    assert!(server.wait_log("fetched from the bucket into the local cache"));

    // Someone changes the master's rootfs in the bucket (same size, other bytes): the replica refuses it with
    // a 502 that says what to do, never serves a byte of it, never caches it; a pull refuses it too.
    let rsha = sha256_hex(&mfiles["rootfs.squashfs"]);
    let mut changed = mfiles["rootfs.squashfs"].clone();
    changed[5] ^= 0x55;
    overwrite(&g, &ns, &format!("blobs/sha256/{rsha}"), changed.clone());
    let (code, _, body) = http(&ns, &[], &format!("/images/{master}/rootfs.squashfs"));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{msg}");
    assert!(
        msg.contains("changed in the bucket") && msg.contains("imgbuild push --force"),
        "{msg}"
    );
    assert!(
        body.len() < 2000
            && !body
                .windows(64)
                .any(|w| changed.windows(64).next() == Some(w))
    );
    assert_eq!(metric(&ns, "imgbuild_store_digest_refusals_total"), 1.0);
    assert!(server.wait_log("changed in the bucket"));
    let cache = replica.dir.path().join("store-cache/blobs/sha256");
    assert!(
        !cache.join(&rsha).exists(),
        "a refused object is never cached"
    );
    let fresh = s3_cluster(&g);
    let o = imgbuild_in(&ns, &fresh, &["pull", "--quiet", &master]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("changed in the bucket"));
    assert!(!fresh.images.join(&master).exists());
    // `push --force` from the host that has it intact repairs the object.
    ok(&imgbuild_in(
        &ns,
        &builder,
        &["push", "--quiet", "--force", &master],
    ));

    // One Garage node stopped: reads go on (replication factor 3, read quorum 2). The master's kernel and the
    // repaired rootfs were never fetched by this replica: they come from the bucket now.
    g.stop_node(2);
    for name in ["vmlinuz", "rootfs.squashfs"] {
        let (code, _, body) = http(&ns, &[], &format!("/images/{master}/{name}"));
        assert_eq!(
            code,
            200,
            "{name} with a node down: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(body, mfiles[name]);
    }
    let other = s3_cluster(&g);
    ok(&imgbuild_in(&ns, &other, &["pull", "--quiet", &worker]));
    assert_eq!(
        read_image(&other.images, &worker, "initrd.img"),
        wfiles["initrd.img"]
    );
    drop(server);
    eprintln!("whole scenario: {:?}", t0.elapsed());
}

#[test]
fn store_section_is_validated_and_credentials_in_cluster_toml_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("cluster.toml")).unwrap();
    let load = |extra: &str| {
        let text = format!("{base}\n{extra}");
        imgbuild::config::load_str(&d.path().join("cluster.toml"), &text, d.path())
    };
    // Default: the directory store.
    assert_eq!(load("").unwrap().store, imgbuild::config::Store::Dir);
    let good = load(
        "[store]\nbackend = \"s3\"\nendpoint = \"https://s3.example.net\"\nbucket = \"images\"\n",
    )
    .unwrap();
    let imgbuild::config::Store::S3(s) = good.store else {
        panic!()
    };
    assert_eq!(s.region, "us-east-1");
    assert!(s.cache.ends_with("cache/store"));
    // A secret in cluster.toml: refused, with file, line and key, and what to do instead; the value not echoed.
    let e = load("[store]\nbackend = \"s3\"\nendpoint = \"https://s3.example.net\"\nbucket = \"images\"\nsecret_access_key = \"hunter2hunter2\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.toml:"), "{e}");
    assert!(e.contains("store.secret_access_key"), "{e}");
    assert!(
        e.contains("AWS_SECRET_ACCESS_KEY") && e.contains("credentials_file"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let line = base.lines().count() + 6;
    assert!(e.contains(&format!(":{line}:")), "line {line}: {e}");
    // Plain HTTP to another host, a bad bucket, an unknown backend, S3 keys with the dir backend.
    let e = load(
        "[store]\nbackend = \"s3\"\nendpoint = \"http://10.0.0.5:3900\"\nbucket = \"Bad_Bucket\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("plain HTTP") && e.contains("https://"), "{e}");
    assert!(e.contains("not a bucket name"), "{e}");
    // `ca`: a PEM certificate for an https:// endpoint (a store behind a TLS proxy with the site's CA).
    std::fs::write(d.path().join("not-a-cert.pem"), "hello\n").unwrap();
    let e = load("[store]\nbackend = \"s3\"\nendpoint = \"https://s3.example.net\"\nbucket = \"images\"\nca = \"not-a-cert.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("store.ca") && e.contains("not a readable PEM certificate"),
        "{e}"
    );
    std::fs::write(
        d.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ok = load("[store]\nbackend = \"s3\"\nendpoint = \"https://s3.example.net\"\nbucket = \"images\"\nca = \"ca.pem\"\n")
        .unwrap();
    let imgbuild::config::Store::S3(s) = ok.store else {
        panic!()
    };
    assert_eq!(s.ca, Some(d.path().join("ca.pem")));
    let e = load("[store]\nbackend = \"ftp\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected one of: dir, s3"), "{e}");
    let e = load("[store]\nbucket = \"images\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backend = \\\"s3\\\"") || e.contains("backend = \"s3\""),
        "{e}"
    );
}
