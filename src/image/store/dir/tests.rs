//! Tests of the directory store and of what is computed over a store (`list`, `gc`, `verify`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use super::*;
use crate::config::Role;
use crate::image::catalog;
use crate::image::manifest::Inputs;
use crate::image::manifest::{INITRD, KERNEL, ROOTFS};
use crate::image::pins::Pins;
use crate::image::store::{self, ImageStore};

fn manifest(n: u8, role: Role) -> Manifest {
    Manifest {
        format: 1,
        role,
        arch: Default::default(),
        profile: vec!["base".into(), role.to_string()],
        standins: true,
        kernel_args: vec![],
        inputs: Inputs {
            config_digest: format!("{n}"),
            ..Inputs::default()
        },
        files: BTreeMap::new(),
        rootfs_verity: None,
        boot_apps: Default::default(),
    }
}

/// A staging directory holding the three artifacts, each the one byte `n`.
fn staged(s: &DirStore, n: u8) -> tempfile::TempDir {
    let st = s.staging().unwrap();
    for f in [KERNEL, INITRD, ROOTFS] {
        std::fs::write(st.path().join(f), [n]).unwrap();
    }
    st
}

fn fake(s: &DirStore, n: u8, role: Role) -> String {
    let c = s.commit(staged(s, n), manifest(n, role)).unwrap();
    assert!(!c.existed);
    // Distinct creation times, oldest first.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + n as u64);
    std::fs::File::open(s.dir.join(&c.id))
        .unwrap()
        .set_modified(t)
        .unwrap();
    c.id
}

fn store() -> (tempfile::TempDir, DirStore) {
    let d = tempfile::tempdir().unwrap();
    let s = DirStore::new(&d.path().join("images"));
    (d, s)
}

#[test]
fn gc_keeps_pinned_and_the_newest_unpinned_and_verify_rehashes() {
    let (_d, s) = store();
    let ids: Vec<String> = (1..=4).map(|n| fake(&s, n, Role::Worker)).collect();
    let mut pins = Pins::default();
    pins.pin(&s, Role::Worker, &ids[0]).unwrap();
    let listed = catalog::list(&s, &pins).unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0].id, ids[3], "newest first");
    assert_eq!(listed[3].pinned_by, vec!["worker/amd64".to_string()]);
    let removed = catalog::gc(&s, &pins, 1).unwrap();
    // Pinned (oldest) kept, newest unpinned kept, the two in between removed.
    assert_eq!(removed.len(), 2);
    assert!(removed.contains(&ids[1]) && removed.contains(&ids[2]));
    assert!(s.dir.join(&ids[0]).is_dir() && s.dir.join(&ids[3]).is_dir());
    assert!(store::verify(&s, &ids[3]).unwrap().iter().all(|c| c.ok));
    assert!(matches!(
        store::verify(&s, &ids[1]),
        Err(StoreError::NoImage { .. })
    ));
}

#[test]
fn committing_an_existing_id_leaves_the_store_untouched() {
    let (_d, s) = store();
    let id = fake(&s, 7, Role::Master);
    let before = std::fs::read(s.dir.join(&id).join(MANIFEST)).unwrap();
    let m = s.manifest(&id).unwrap();
    let c = s
        .commit(
            staged(&s, 7),
            Manifest {
                files: BTreeMap::new(),
                ..m
            },
        )
        .unwrap();
    assert_eq!(c.id, id);
    assert!(c.existed);
    assert_eq!(
        std::fs::read(s.dir.join(&id).join(MANIFEST)).unwrap(),
        before
    );
    let names: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no staging dir left: {names:?}");
}

#[test]
fn a_half_written_image_is_never_listed_nor_looked_up() {
    let (_d, s) = store();
    let id = fake(&s, 1, Role::Worker);
    // A build in progress (or one that crashed): artifacts and even a manifest, but not yet renamed.
    let st = staged(&s, 2);
    let m = manifest(2, Role::Worker);
    std::fs::write(st.path().join(MANIFEST), m.to_bytes()).unwrap();
    let tmp_name = st
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let listed: Vec<String> = s.list().unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(listed, vec![id.clone()]);
    assert!(matches!(
        s.manifest(&tmp_name),
        Err(StoreError::BadId { .. })
    ));
    assert!(matches!(
        s.open(&tmp_name, KERNEL),
        Err(StoreError::BadId { .. })
    ));
    // Committed, it appears whole under its id.
    let c = s.commit(st, m).unwrap();
    assert!(!listed.contains(&c.id));
    assert!(s.manifest(&c.id).is_ok());
    assert_eq!(s.list().unwrap().len(), 2);
}

#[test]
fn a_missing_id_is_a_clear_error() {
    let (_d, s) = store();
    let id = "ab".repeat(32);
    let e = s.manifest(&id).unwrap_err();
    assert!(matches!(e, StoreError::NoImage { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&id) && text.contains("imgbuild images") && text.contains("images"),
        "{text}"
    );
    assert!(matches!(
        s.open(&id, KERNEL),
        Err(StoreError::NoImage { .. })
    ));
    // An empty or missing store lists nothing.
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn open_serves_manifest_files_with_their_size_and_digest_and_refuses_the_rest() {
    let (_d, s) = store();
    let id = fake(&s, 9, Role::Worker);
    let m = s.manifest(&id).unwrap();
    let mut a = s.open(&id, INITRD).unwrap();
    assert_eq!(a.size, 1);
    assert_eq!(a.sha256, m.files[INITRD].sha256);
    let mut b = Vec::new();
    a.reader.read_to_end(&mut b).unwrap();
    assert_eq!(b, [9]);
    a.reader.seek(SeekFrom::Start(0)).unwrap();
    let mf = s.open(&id, MANIFEST).unwrap();
    assert_eq!(mf.sha256, id);
    assert_eq!(mf.size, m.to_bytes().len() as u64);
    // A file in the image directory that the manifest does not list.
    let extra = s.dir.join(&id).join("secret");
    std::fs::write(&extra, b"no").unwrap();
    let e = s.open(&id, "secret").err().unwrap();
    assert!(
        matches!(e, StoreError::Manifest(ManifestError::MissingFile { .. })),
        "{e:?}"
    );
    // The same through a kept manifest (the HTTP server's path): same size, digest and bytes.
    let mut l = s.open_listed(&id, INITRD, &m).unwrap();
    assert_eq!((l.size, &l.sha256), (1, &m.files[INITRD].sha256));
    let mut b = Vec::new();
    l.reader.read_to_end(&mut b).unwrap();
    assert_eq!(b, [9]);
    assert_eq!(s.open_listed(&id, MANIFEST, &m).unwrap().sha256, id);
    let e = s.open_listed(&id, "secret", &m).err().unwrap();
    assert!(
        matches!(e, StoreError::Manifest(ManifestError::MissingFile { .. })),
        "{e:?}"
    );
    // A listed artifact that is missing on disk.
    std::fs::remove_file(s.dir.join(&id).join(ROOTFS)).unwrap();
    assert!(matches!(
        s.open(&id, ROOTFS),
        Err(StoreError::NoFile { .. })
    ));
    assert!(matches!(
        s.open_listed(&id, ROOTFS, &m),
        Err(StoreError::NoFile { .. })
    ));
    // An artifact whose size changed.
    let k = s.dir.join(&id).join(KERNEL);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&k, b"grown").unwrap();
    let e = s.open(&id, KERNEL).err().unwrap();
    assert!(e.to_string().contains("its manifest says 1"), "{e}");
    let e = s.open_listed(&id, KERNEL, &m).err().unwrap();
    assert!(e.to_string().contains("its manifest says 1"), "{e}");
    // verify reports it, with what was found.
    let checks = store::verify(&s, &id).unwrap();
    let k = checks.iter().find(|c| c.file == KERNEL).unwrap();
    assert!(!k.ok && k.actual.is_some());
    let r = checks.iter().find(|c| c.file == ROOTFS).unwrap();
    assert!(!r.ok && r.actual.is_none());
}

#[test]
fn symlinks_are_refused() {
    let (d, s) = store();
    let id = fake(&s, 3, Role::Worker);
    let other = fake(&s, 4, Role::Worker);
    // An artifact that is a symlink to a file with the right content.
    let outside = d.path().join("outside");
    std::fs::rename(s.dir.join(&id).join(KERNEL), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.dir.join(&id).join(KERNEL)).unwrap();
    let e = s.open(&id, KERNEL).err().unwrap();
    assert!(matches!(e, StoreError::NotRegular { .. }), "{e:?}");
    let m = s.manifest(&id).unwrap();
    let e = s.open_listed(&id, KERNEL, &m).err().unwrap();
    assert!(matches!(e, StoreError::NotRegular { .. }), "{e:?}");
    // A FIFO where an artifact belongs is refused without blocking the open.
    std::fs::remove_file(s.dir.join(&id).join(INITRD)).unwrap();
    let fifo = std::ffi::CString::new(
        s.dir
            .join(&id)
            .join(INITRD)
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let e = s.open_listed(&id, INITRD, &m).err().unwrap();
    assert!(matches!(e, StoreError::NotRegular { .. }), "{e:?}");
    let other_m = s.manifest(&other).unwrap();
    // A whole image directory that is a symlink to a valid image elsewhere.
    let elsewhere = d.path().join("elsewhere");
    std::fs::rename(s.dir.join(&other), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.dir.join(&other)).unwrap();
    let e = s.open(&other, MANIFEST).err().unwrap();
    assert!(
        e.to_string().contains("is a symlink or not a directory"),
        "{e}"
    );
    let e = s.open_listed(&other, KERNEL, &other_m).err().unwrap();
    assert!(
        e.to_string().contains("is a symlink or not a directory"),
        "{e}"
    );
}

#[test]
fn path_traversal_in_an_id_or_a_name_is_refused() {
    let (d, s) = store();
    let id = fake(&s, 5, Role::Worker);
    std::fs::write(d.path().join("cluster.toml"), b"[cluster]").unwrap();
    for bad in [
        "..",
        "../cluster.toml",
        "",
        "/etc",
        &format!("{id}/.."),
        &format!("../images/{id}"),
        &"a".repeat(63),
    ] {
        let refused = |e: Option<StoreError>| matches!(e, Some(StoreError::BadId { .. }));
        assert!(refused(s.manifest(bad).err()), "{bad}");
        assert!(refused(s.open(bad, KERNEL).err()), "{bad}");
        assert!(refused(s.remove(bad).err()), "{bad}");
        assert!(refused(s.rehash(bad, KERNEL).err()), "{bad}");
    }
    for bad in [
        "..",
        "../../cluster.toml",
        "../x",
        "a/b",
        ".",
        "",
        "x\0y",
        ".tmp",
    ] {
        assert!(
            matches!(s.open(&id, bad), Err(StoreError::BadName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(s.rehash(&id, bad), Err(StoreError::BadName { .. })),
            "{bad:?}"
        );
    }
    assert!(d.path().join("cluster.toml").is_file());
    assert!(s.manifest(&id).is_ok());
}

#[test]
fn remove_takes_the_image_away_and_list_is_newest_first() {
    let (_d, s) = store();
    let ids: Vec<String> = (1..=3).map(|n| fake(&s, n, Role::Storage)).collect();
    let listed: Vec<String> = catalog::list(&s, &Pins::default())
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    s.remove(&ids[1]).unwrap();
    assert!(matches!(
        s.manifest(&ids[1]),
        Err(StoreError::NoImage { .. })
    ));
    let left: Vec<String> = catalog::list(&s, &Pins::default())
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, vec![ids[2].clone(), ids[0].clone()]);
    // A damaged image is still listed, with its problem.
    let mp = s.dir.join(&ids[0]).join(MANIFEST);
    std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&mp, b"{}").unwrap();
    let l = catalog::list(&s, &Pins::default()).unwrap();
    assert!(
        l[1].problem.as_deref().unwrap().contains("hashes to"),
        "{l:?}"
    );
}
