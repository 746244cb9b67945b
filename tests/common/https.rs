//! The server's whole application on loopback, as `imgbuild serve` runs it: HTTPS with a certificate from the
//! provisioning CA (`tls.rs`), and a plain HTTP listener beside it (which must refuse secrets).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use imgbuild::config::Cluster;
use imgbuild::netboot::state::Shared;
use imgbuild::status::Events;

/// The server's state for the loopback test cluster written into `dir` (`edit` applied to its cluster.toml): its
/// secrets made, no pins, its event log on disk as `serve` keeps it.
pub fn server_state(dir: &Path, edit: impl Fn(String) -> String) -> (Cluster, Arc<Shared>) {
    let cfg = super::write_cluster(dir, true, edit);
    let cluster = imgbuild::config::load(&cfg).unwrap();
    imgbuild::pki::secrets::init(&cluster.paths.secrets).unwrap();
    let events = Events::open(
        &cluster.paths.state.join("events.jsonl"),
        &cluster.limits.events,
    )
    .unwrap();
    let shared = Arc::new(Shared::new(cfg, cluster.clone(), BTreeMap::new(), events));
    (cluster, shared)
}

/// Where [`serve`] listens; abort `task` to stop both listeners' server.
pub struct Listeners {
    /// The HTTPS listener (127.0.0.1, certificate for 127.0.0.1 from the provisioning CA).
    pub https: SocketAddr,
    /// The plain HTTP listener.
    pub plain: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves `app` (with connect info, as the enrollment rules need the peer address) over HTTPS and plain HTTP on
/// 127.0.0.1, the certificate made from the provisioning CA in `secrets`.
pub async fn serve(app: axum::Router, secrets: &Path) -> Listeners {
    let ca = imgbuild::pki::provisioning::load_ca(secrets).unwrap();
    let id = imgbuild::pki::provisioning::server_cert(&ca, &["127.0.0.1".parse().unwrap()], &[])
        .unwrap();
    let acceptor = imgbuild::netboot::http::tls::acceptor(&id).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = l.local_addr().unwrap();
    let p = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = p.local_addr().unwrap();
    let plain_app = app.clone();
    let task = tokio::spawn(async move {
        tokio::spawn(async move {
            axum::serve(
                p,
                plain_app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        imgbuild::netboot::http::tls::serve_tls_listener(l, acceptor, app)
            .await
            .unwrap();
    });
    Listeners { https, plain, task }
}
