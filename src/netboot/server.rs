//! `imgbuild serve`: prepares the shared state ([`Shared`]), spawns DHCP, TFTP, HTTP (and router
//! advertisements) on it, and reloads it.
//!
//! Each protocol module exposes `run(shared) -> anyhow::Result<()>`; this file starts them and owns hot
//! reload (SIGHUP / a changed `cluster.toml`): the cluster and the boot decision are swapped atomically.

use std::sync::Arc;

use super::notify;
use super::state::Shared;
use crate::config::Role;
use crate::pki::state_store::{self, documents};
use crate::status::Events;
use crate::template;

/// Loads the cluster and the pins, and builds the shared state (events in `state/events.jsonl`).
pub fn prepare(config_path: &std::path::Path) -> anyhow::Result<Arc<Shared>> {
    let cluster = crate::config::load(config_path)?;
    let replica = state_store::replica_id();
    let state = state_store::open(&cluster, &replica)?;
    tracing::info!(backend = state.kind(), %replica, "shared state opened");
    let pins = documents::pins(&*state, &cluster.paths.state)?
        .resolve(&*crate::image::store::open(&cluster));
    for ((role, arch), img) in &pins {
        if img.standins {
            tracing::warn!(%role, %arch, image = %img.id, "the pinned image was built with labelled STAND-IN binaries: nodes booting it cannot form a real cluster");
        }
    }
    for role in Role::ALL {
        for arch in crate::config::Arch::ALL {
            if cluster.machines_with_role(role).any(|m| m.arch == arch)
                && !pins.contains_key(&(role, arch))
            {
                tracing::warn!(%role, %arch, "no image pinned: {role} machines on {arch} will be told to wait; run `imgbuild profile {role} --arch {arch}` and `imgbuild pin {role} <id>`");
            }
        }
    }
    let events = Events::open(
        &cluster.paths.state.join("events.jsonl"),
        &cluster.limits.events,
    )?;
    // The barrier and report counters must be readable: refuse to start rather than forget them.
    crate::pki::report_state::ReportState::open_in(state.clone())?;
    Ok(Arc::new(Shared::new_in(
        config_path.to_path_buf(),
        cluster,
        pins,
        events,
        state,
        replica,
    )))
}

/// Re-reads `cluster.toml` and the pins. On an invalid file the running configuration stays and the
/// problems are logged.
pub fn reload(shared: &Shared) {
    match crate::config::load(&shared.config_path) {
        Ok(cluster) => {
            let pins = documents::pins(&*shared.state, &cluster.paths.state)
                .map(|p| p.resolve(&*crate::image::store::open(&cluster)))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read pins; keeping the current ones");
                    shared.booter().pins.clone()
                });
            shared.replace(cluster, pins);
            tracing::info!(config = %shared.config_path.display(), "configuration reloaded");
        }
        Err(e) => tracing::error!("reload refused, still serving the previous configuration: {e}"),
    }
}

/// The listeners systemd waits for before the unit counts as started.
const LISTENERS: [&str; 3] = ["dhcp", "tftp", "http"];

/// Waits for the next watchdog keep-alive, or forever when systemd's watchdog is off.
async fn tick(dog: &mut Option<tokio::time::Interval>) {
    match dog {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs every protocol until one fails or the process is interrupted. SIGHUP reloads. Under systemd
/// (`Type=notify`): `READY=1` once every listener is bound, `WATCHDOG=1` from this loop at half of
/// `WatchdogSec=`, `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` on the way out.
pub async fn serve(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut tasks: tokio::task::JoinSet<(&'static str, anyhow::Result<()>)> =
        tokio::task::JoinSet::new();
    // arm64 machines boot GRUB: make its netboot image before TFTP and HTTP serve it.
    {
        let cluster = shared.cluster();
        super::grub::prepare(&cluster, &template::engine_for(&cluster));
    }
    // One line per protocol.
    shared.register_metrics(|r| crate::status::metrics::register(r, &shared, |s| &s.events));
    // With replicas: announce this one, copy its events into the shared history.
    super::replicas::spawn(&shared);
    shared.register_metrics(crate::image::store::register_metrics);
    if shared.cluster().network.router_advertisements {
        let s = shared.clone();
        tasks.spawn(async move { ("ra", super::ra::run(s).await) });
    }
    let s = shared.clone();
    tasks.spawn(async move { ("dhcp", super::dhcp::run(s).await) });
    let s = shared.clone();
    tasks.spawn(async move { ("tftp", super::tftp::run(s).await) });
    let s = shared.clone();
    tasks.spawn(async move { ("http", super::http::run(s).await) });

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ready = shared.ready.all(&LISTENERS);
    tokio::pin!(ready);
    let mut announced = false;
    let mut dog = notify::watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = &mut ready, if !announced => {
                announced = true;
                let lan = shared.dhcp_probe.snapshot().message;
                let status = if lan.is_empty() { "serving DHCP, TFTP and HTTP".to_string() } else { lan };
                tracing::info!(listeners = ?shared.ready.listeners(), "every listener is bound");
                notify::tell(&format!("READY=1\nSTATUS={status}"));
            }
            _ = tick(&mut dog) => notify::tell("WATCHDOG=1"),
            _ = hup.recv() => {
                notify::tell("RELOADING=1");
                reload(&shared);
                notify::tell("READY=1");
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); notify::tell("STOPPING=1"); return Ok(()); }
            _ = term.recv() => { tracing::info!("terminated; stopping"); notify::tell("STOPPING=1"); return Ok(()); }
            Some(done) = tasks.join_next() => {
                let (name, res) = done?;
                res.map_err(|e| e.context(format!("{name} server stopped")))?;
                anyhow::bail!("{name} server stopped unexpectedly");
            }
        }
    }
}
