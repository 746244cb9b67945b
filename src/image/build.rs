//! Building one role's image: base → artifacts → initrd → role layer → squashfs → store, with a progress line
//! per stage and a cache at every level.
//!
//! An image is built for one architecture (amd64 or arm64, Debian's names): the profile is resolved for it,
//! mmdebstrap installs that architecture's packages (foreign ones run under qemu-user-static, see
//! [`base::check_can_run`]), and the artifacts are that architecture's files. The architecture is in the base
//! digest, the initrd digest, the input key and the manifest, so the images of two architectures never share a
//! cache entry or an id.
//!
//! The image's inputs (base spec, rendered role layer, artifact digests, initrd templates, stand-ins flag) are
//! hashed into an input key first; when `cache/index/<key>` names an intact image, the build is done (warm: no
//! file is read but the manifest). Otherwise the base comes from its cache (or mmdebstrap), the initrd from its
//! cache (or mkinitramfs), and only the role layer and the squashfs are made anew.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::artifacts::{self, ArtifactError};
use super::base::{self, BaseError, BaseSpec};
use super::build_progress::Progress;
use super::initrd::{self, InitrdError};
use super::install::{self, InstallError};
use super::layer::{self, LayerError};
use super::manifest::{FileEntry, INITRD, Inputs, KERNEL, Manifest, ROOTFS};
use super::oci::{OciError, layout, pin_refs};

/// Where the master profile puts the kube-vip static pod manifests (profiles/master/profile.toml).
const KUBE_VIP_DIR: &str = "/usr/share/imgbuild/kube-vip";
use super::squashfs;
use super::standins::{self, StandinError};
use super::store::{self, StoreError};
use super::tree::{self, TreeError};
use super::uki;
use super::verity;
use crate::config::profile;
use crate::config::{Arch, Cluster, ConfigError, Role};
use crate::template::engine_for;

/// The manifest format this builder writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
/// Why an image build failed; each variant wraps the error of one step and says what to fix.
pub enum BuildError {
    #[error(transparent)]
    /// `cluster.toml` or a role profile is invalid, or the profile cannot be resolved for the architecture.
    Config(#[from] ConfigError),
    #[error(transparent)]
    /// The role tree (files of the role layer) could not be rendered.
    Tree(#[from] TreeError),
    #[error(transparent)]
    /// An artifact (kubeadm, kubelet, containerd, …) could not be fetched or did not match `imgbuild.lock`.
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    /// A container image of the role is not fetched, or could not be written into the image.
    Images(#[from] OciError),
    #[error(transparent)]
    /// A labelled stand-in binary could not be made (builds with `--standins`).
    Standin(#[from] StandinError),
    #[error("base layer: {0}")]
    /// The base layer (mmdebstrap) could not be built or read from its cache.
    Base(#[from] BaseError),
    #[error(transparent)]
    /// The initrd (mkinitramfs) could not be made.
    Initrd(#[from] InitrdError),
    #[error(transparent)]
    /// Installing the artifacts into the root tree failed.
    Install(#[from] InstallError),
    #[error("role layer: {0}")]
    /// The role layer could not be applied or its packages listed.
    Layer(#[from] LayerError),
    #[error(transparent)]
    /// The image store refused the image (staging or commit).
    Store(#[from] StoreError),
    #[error(
        "[secure_boot] is enabled but the db certificate cannot be read ({0}): run `imgbuild secrets init` \
         (or set [secure_boot] db_key and db_cert to your own pair)"
    )]
    /// `[secure_boot]` is on but the db certificate is missing or unreadable.
    SecureBootKey(String),
    #[error("uki: {0}")]
    /// The UKI's command line template failed to render.
    Uki(String),
    #[error("{path}: {source}")]
    /// A file or directory of the build (work tree, staging) could not be created, copied or read.
    Io {
        /// The path the operation was on.
        path: PathBuf,
        #[source]
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Labelled stand-ins instead of the real kubeadm, kubelet, containerd, ...
    pub standins: bool,
    /// Draw progress spinners on stderr.
    pub progress: bool,
}

pub use super::build_progress::Stage;

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The role the image was built for.
    pub role: Role,
    /// The architecture the image was built for.
    pub arch: Arch,
    /// The image id: sha256 of its `manifest.json`, lowercase hex.
    pub id: String,
    /// Where the image lives in the store (`images/<id>/`).
    pub dir: PathBuf,
    /// Built with labelled stand-ins instead of the real binaries: never a real cluster.
    pub standins: bool,
    /// The whole image came from the cache (no stage ran).
    pub cached: bool,
    /// The id already existed in the store: nothing in it changed.
    pub existed: bool,
    /// Digest of the base layer's inputs (as in the manifest's `inputs.base_digest`).
    pub base_digest: String,
    /// Digest of the rendered role layer (as in the manifest's `inputs.role_layer_digest`).
    pub role_layer_digest: String,
    /// File name → size and sha256 of `vmlinuz`, `initrd.img`, `rootfs.squashfs`.
    pub files: BTreeMap<String, FileEntry>,
    /// The stages in the order they ran; empty when the whole image came from the cache.
    pub stages: Vec<Stage>,
    /// Wall-clock time of the whole build, in seconds.
    pub seconds: f64,
}

/// Everything that decides an image's bytes, hashed: the key of the build index.
#[derive(Serialize)]
struct InputKey<'a> {
    format: u32,
    builder: &'static str,
    role: Role,
    /// Absent for amd64: the keys of amd64 images are those from before other architectures were built.
    #[serde(skip_serializing_if = "is_amd64")]
    arch: Arch,
    chain: &'a [String],
    standins: bool,
    kernel_args: &'a [String],
    config_digest: &'a str,
    base_digest: &'a str,
    role_layer_digest: &'a str,
    artifacts: &'a BTreeMap<String, String>,
    initrd_digest: &'a str,
    /// Absent without `[secure_boot]`: the keys of images without a UKI are those from before UKIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    uki: Option<&'a UkiInputs>,
    /// The container images baked in (absent when none: the keys of images without any are unchanged).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    images: &'a [layout::BakedImage],
    /// The digests the manifests are pinned to: every image of the cluster the lock records for the
    /// architecture (absent when none).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pins: &'a BTreeMap<String, String>,
}

/// What decides a UKI's bytes beyond the kernel, initrd and root filesystem: the db certificate it is signed
/// with and the server URL, state disk and `init_blank` on its command line.
#[derive(Serialize)]
struct UkiInputs {
    db_cert_sha256: String,
    server_url: String,
    signer: &'static str,
    state_disk: String,
    init_blank: bool,
}

fn is_amd64(a: &Arch) -> bool {
    *a == Arch::Amd64
}

/// sha256 of the parts of the configuration the image is built from that the role layer does not already cover
/// as rendered bytes: the cluster section, the base section and the artifact sources.
pub fn config_digest(cluster: &Cluster) -> String {
    let v = serde_json::json!({
        "cluster": cluster.cluster,
        "base": cluster.base,
        "artifacts": cluster.artifacts,
    });
    hex::encode(Sha256::digest(serde_json::to_vec(&v).expect("serializes")))
}

impl Progress {
    /// [`Progress::run_stage`] for a build stage.
    fn stage<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce() -> Result<(T, bool, String), BuildError>,
    ) -> Result<T, BuildError> {
        self.run_stage(name, what, f)
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Where the root filesystem is unpacked and assembled: `$IMGBUILD_WORKDIR`, else `/dev/shm` when it is a tmpfs
/// with room for a root (4 GiB free: unpacking, packing and deleting 700 MB of small files is several times
/// faster in RAM), else `cache/work`.
pub fn work_dir(cluster: &Cluster) -> PathBuf {
    if let Some(d) = std::env::var_os("IMGBUILD_WORKDIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    let free = (|| {
        let c = std::ffi::CString::new("/dev/shm").ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed statvfs the call fills in.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    })();
    if free.is_some_and(|f| f >= 4 << 30) {
        return shm.join("imgbuild-work");
    }
    cluster.paths.cache.join("work")
}

/// Builds (or finds in the cache) the amd64 image of `role` (see [`build_for`]).
pub fn build(cluster: &Cluster, role: Role, opts: &Options) -> Result<Report, BuildError> {
    build_for(cluster, role, Arch::Amd64, opts)
}

/// The input key of the image of `role` for `arch`: the hash of everything that decides its bytes (without
/// building anything; real builds need the artifacts locked).
pub fn input_key(
    cluster: &Cluster,
    role: Role,
    arch: Arch,
    opts: &Options,
) -> Result<String, BuildError> {
    Ok(inputs(cluster, role, arch, opts)?.key)
}

/// Everything the build starts from: the resolved inputs and their key.
struct Prepared {
    profile: profile::Profile,
    tree: tree::Tree,
    role_layer_digest: String,
    spec: BaseSpec,
    base_digest: String,
    artifact_digests: BTreeMap<String, String>,
    standin_files: Option<standins::Standins>,
    initrd_cfg: initrd::InitrdConfig,
    config_digest: String,
    uki: Option<UkiInputs>,
    images: Vec<layout::BakedImage>,
    pins: BTreeMap<String, String>,
    key: String,
}

fn inputs(
    cluster: &Cluster,
    role: Role,
    arch: Arch,
    opts: &Options,
) -> Result<Prepared, BuildError> {
    let profile = profile::resolve_for(&cluster.paths.profiles, role, arch)?;
    let engine = engine_for(cluster);
    let tree = tree::render(cluster, &profile, &engine)?;
    let role_layer_digest = tree.digest();
    let mut spec = BaseSpec::new(cluster, &profile);
    if opts.standins {
        // Stand-in images run Debian's real containerd and runc (standins::RUNTIME_PACKAGES).
        spec.packages
            .extend(standins::RUNTIME_PACKAGES.iter().map(|p| p.to_string()));
        spec.packages.sort();
        spec.packages.dedup();
    }
    let base_digest = spec.digest();
    let (artifact_digests, standin_files) = if opts.standins {
        let s = standins::generate(cluster, &engine)?;
        (s.digests.clone(), Some(s))
    } else {
        (artifacts::locked_digests(cluster, arch)?, None)
    };
    let initrd_cfg = initrd::render(cluster, &engine, &base_digest, arch)?;
    let config_digest = config_digest(cluster);
    let uki = if uki::wanted(cluster, role, arch) {
        Some(UkiInputs {
            db_cert_sha256: uki::cert_digest(&cluster.secure_boot.db_cert)
                .map_err(|e| BuildError::SecureBootKey(e.to_string()))?,
            server_url: cluster.network.http_base(),
            signer: "osslsigncode -time SOURCE_DATE_EPOCH",
            state_disk: cluster.secure_boot.state_disk.clone(),
            init_blank: cluster.secure_boot.init_blank,
        })
    } else {
        None
    };
    // A real build needs every image of the role fetched; a stand-in build bakes those that are.
    let (images, unfetched) = layout::role_images(cluster, role, arch, !opts.standins)?;
    if !unfetched.is_empty() {
        tracing::warn!(
            role = role.as_str(),
            "{} container image(s) of the role are not fetched and not baked in (nodes would pull them): {}",
            unfetched.len(),
            unfetched.join(", ")
        );
    }
    // The manifests are pinned to every locked image of the cluster, not only the role's (docs/air-gapped.md).
    let pins = pin_refs::cluster_pins(cluster, arch)?;
    let key = hex::encode(Sha256::digest(
        serde_json::to_vec(&InputKey {
            format: FORMAT,
            builder: env!("CARGO_PKG_VERSION"),
            role,
            arch,
            chain: &profile.chain,
            standins: opts.standins,
            kernel_args: &profile.kernel_args,
            config_digest: &config_digest,
            base_digest: &base_digest,
            role_layer_digest: &role_layer_digest,
            artifacts: &artifact_digests,
            initrd_digest: &initrd_cfg.digest,
            uki: uki.as_ref(),
            images: &images,
            pins: &pins,
        })
        .expect("serializes"),
    ));
    Ok(Prepared {
        profile,
        tree,
        role_layer_digest,
        spec,
        base_digest,
        artifact_digests,
        standin_files,
        initrd_cfg,
        config_digest,
        uki,
        images,
        pins,
        key,
    })
}

/// Builds (or finds in the cache) the image of `role` for `arch`.
pub fn build_for(
    cluster: &Cluster,
    role: Role,
    arch: Arch,
    opts: &Options,
) -> Result<Report, BuildError> {
    let t0 = Instant::now();
    let Prepared {
        profile,
        tree,
        role_layer_digest,
        spec,
        base_digest,
        artifact_digests,
        standin_files,
        initrd_cfg,
        config_digest,
        uki: uki_inputs,
        images: baked,
        pins,
        key,
    } = inputs(cluster, role, arch, opts)?;
    let index_dir = cluster.paths.cache.join("index");
    let images = store::open(cluster);
    if let Some((id, m)) = store::lookup(&index_dir, &*images, &key) {
        return Ok(Report {
            role,
            arch: m.arch,
            dir: images.locate(&id).into(),
            id,
            standins: m.standins,
            cached: true,
            existed: true,
            base_digest,
            role_layer_digest,
            files: m.files,
            stages: Vec::new(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }

    // Real artifacts are checked before anything expensive runs: a missing one fails at once.
    let real = if opts.standins {
        Vec::new()
    } else {
        artifacts::resolve(cluster, arch)?
    };
    // A foreign architecture needs qemu-user-static: say so now, not after mmdebstrap's first failure.
    base::check_can_run(arch, Path::new(base::BINFMT_MISC))?;
    base::check_foreign_tools(arch, std::env::var_os("PATH").as_deref())?;

    let mut p = Progress::new(opts.progress);
    let base = p.stage("base", "mmdebstrap", || {
        let b = base::ensure(&base::cache_dir(cluster), &spec)?;
        let detail = format!(
            "{} {}, {} packages",
            spec.release,
            &b.digest[..12],
            spec.packages.len()
        );
        let cached = b.cached;
        Ok((b, cached, detail))
    })?;

    let work_parent = work_dir(cluster);
    std::fs::create_dir_all(&work_parent).map_err(|source| BuildError::Io {
        path: work_parent.clone(),
        source,
    })?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&work_parent)
        .map_err(|source| BuildError::Io {
            path: work_parent.clone(),
            source,
        })?;
    let root = work.path().join("rootfs");
    let staging = images.staging()?;

    let kver = p.stage("unpack", "tar --numeric-owner", || {
        base::unpack(&base, &root)?;
        let kver = layer::kernel_version(&root)?;
        let detail = format!("kernel {kver}");
        Ok((kver, false, detail))
    })?;

    p.stage("initrd", "mkinitramfs + reproducible cpio", || {
        let cache = initrd::cache_dir(cluster);
        let cached_img = cache.join(format!("{}.img", initrd_cfg.digest));
        let out = staging.path().join(INITRD);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BuildError::Io { path, source }
        };
        let cached = cached_img.is_file();
        if !cached {
            std::fs::create_dir_all(&cache).map_err(io(&cache))?;
            initrd::build(&root, &kver, &initrd_cfg, &cached_img)?;
        }
        std::fs::copy(&cached_img, &out).map_err(io(&out))?;
        let size = out.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(((), cached, human(size)))
    })?;

    p.stage(
        "artifacts",
        if opts.standins {
            "stand-ins"
        } else {
            "verified artifacts"
        },
        || {
            let mut n = 0;
            if let Some(s) = &standin_files {
                for f in &s.files {
                    install::put(&root, &f.path, &f.contents, f.mode)?;
                    n += 1;
                }
            } else {
                for a in &real {
                    n += install::install_real(&root, &a.name, &a.path)?.len();
                }
            }
            let detail = if opts.standins {
                format!("{n} STAND-IN files (not a real cluster image)")
            } else {
                format!("{n} files from {} artifacts", real.len())
            };
            Ok(((), false, detail))
        },
    )?;

    p.stage("images", "container images (OCI layout)", || {
        let bytes = layout::write(&cluster.paths.cache, &baked, &root)?;
        Ok((
            (),
            false,
            format!("{} images, {}", baked.len(), human(bytes)),
        ))
    })?;

    let packages = p.stage("role", "role layer", || {
        layer::scrub(&root)?;
        layer::apply_tree(&root, &tree)?;
        layer::check_scrubbed(&root)?;
        layer::preset(&root, &profile.enable_units)?;
        // The manifests name the cluster's locked images by digest (docs/air-gapped.md).
        let pinned = pin_refs::pin_dirs(&root, &[install::MANIFEST_DIR, KUBE_VIP_DIR], &pins)?;
        let pk = layer::packages(&root)?;
        let detail = format!(
            "{} files, {} units, {pinned} image refs pinned, {}",
            tree.files.len(),
            profile.enable_units.len(),
            &role_layer_digest[..12]
        );
        Ok((pk, false, detail))
    })?;

    let rootfs_verity = p.stage("squashfs", "mksquashfs -comp zstd + veritysetup", || {
        let kernel = root.join(format!("boot/vmlinuz-{kver}"));
        let kout = staging.path().join(KERNEL);
        std::fs::copy(&kernel, &kout).map_err(|source| BuildError::Io {
            path: kernel.clone(),
            source,
        })?;
        let out = staging.path().join(ROOTFS);
        squashfs::pack(&root, &out)?;
        let v = verity::append(&out)?;
        let size = out.metadata().map(|m| m.len()).unwrap_or(0);
        let detail = format!("{}, verity {}", human(size), &v.root_hash[..12]);
        Ok((v, false, detail))
    })?;
    if let Some(u) = &uki_inputs {
        p.stage("uki", "objcopy + osslsigncode", || {
            let cmdline = engine_for(cluster)
                .render(
                    crate::template::UKI_CMDLINE_TEMPLATE,
                    &serde_json::json!({
                        "role": role,
                        "server_url": u.server_url,
                        "verity": rootfs_verity,
                        "state_disk": u.state_disk,
                        "init_blank": u.init_blank,
                        "kernel_args": profile.kernel_args,
                        "standins": opts.standins,
                    }),
                )
                .map_err(|e| BuildError::Uki(e.to_string()))?
                .lines()
                .collect::<Vec<_>>()
                .join(" ");
            let osrel_path = root.join("usr/lib/os-release");
            let osrel = std::fs::read_to_string(&osrel_path).map_err(|source| BuildError::Io {
                path: osrel_path.clone(),
                source,
            })?;
            let out = staging.path().join(uki::UKI);
            uki::make(
                &uki::Parts {
                    stub: &uki::stub_for(arch, &root),
                    objcopy: uki::objcopy(arch),
                    osrel: &osrel,
                    cmdline: &cmdline,
                    kernel: &staging.path().join(KERNEL),
                    initrd: &staging.path().join(INITRD),
                    key: &cluster.secure_boot.db_key,
                    cert: &cluster.secure_boot.db_cert,
                },
                &work.path().join("uki"),
                &out,
            )?;
            let size = out.metadata().map(|m| m.len()).unwrap_or(0);
            Ok((
                (),
                false,
                format!("{} signed by db {}", human(size), &u.db_cert_sha256[..12]),
            ))
        })?;
    }
    p.stage("cleanup", "removing the work tree", || {
        let path = work.path().to_path_buf();
        work.close()
            .map_err(|source| BuildError::Io { path, source })?;
        Ok(((), false, String::new()))
    })?;

    let manifest = Manifest {
        format: FORMAT,
        role,
        arch,
        profile: profile.chain.clone(),
        standins: opts.standins,
        kernel_args: profile.kernel_args.clone(),
        inputs: Inputs {
            config_digest,
            base_digest: base_digest.clone(),
            role_layer_digest: role_layer_digest.clone(),
            packages,
            artifacts: artifact_digests,
            db_cert_sha256: uki_inputs.as_ref().map(|u| u.db_cert_sha256.clone()),
            images: baked,
        },
        files: BTreeMap::new(),
        rootfs_verity: Some(rootfs_verity),
        boot_apps: Default::default(),
    };
    let (id, existed) = p.stage("store", "hash + rename into images/", || {
        let store::Committed { id, existed } = images.commit(staging, manifest)?;
        let detail = format!(
            "{}{}",
            &id[..16],
            if existed {
                " (already in the store)"
            } else {
                ""
            }
        );
        Ok(((id, existed), false, detail))
    })?;
    store::remember(&index_dir, &key, &id)?;
    let m = images.manifest(&id)?;
    Ok(Report {
        role,
        arch,
        dir: images.locate(&id).into(),
        id,
        standins: opts.standins,
        cached: false,
        existed,
        base_digest,
        role_layer_digest,
        files: m.files,
        stages: p.stages,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
