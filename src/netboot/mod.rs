//! The netboot server (`imgbuild serve`): DHCP, TFTP and HTTP around one boot decision.
//!
//! - [`state`]: what every protocol shares (`Shared`: cluster, boot decision, events, metrics registry);
//!   [`server`]: prepares it, spawns the protocols on it and reloads it.
//! - [`boot`]: the boot decision (boot file, boot plan, kernel command line from `ipxe/cmdline.j2`);
//!   [`grub`]: the arm64 GRUB loaders the server makes; [`bootfiles`]: the boot-loader allowlist and cache.
//! - [`dhcp`], [`tftp`], [`http`] (every HTTP route, including enrollment and the status page), [`ra`]:
//!   the protocols; [`peers`]: address → inventory MAC; [`known_leases`]: the DHCP leases acknowledged, for the
//!   other protocols; [`pinwatch`]: picks up re-pins; [`metrics`]: per-protocol
//!   metric families.
//! - [`doctor`]: `imgbuild doctor`'s checks of a host before the first start.
//! - [`ready`]: which listeners are bound; [`notify`]: systemd's readiness, status and watchdog messages.
//! - [`replicas`]: with a shared state in etcd, each replica announces itself and copies its events into the
//!   shared history (which replica served each stage).

pub mod boot;
pub mod bootfiles;
pub mod dhcp;
pub mod doctor;
pub mod grub;
pub mod http;
pub mod known_leases;
pub mod metrics;
pub mod notify;
pub mod peers;
pub mod pinwatch;
pub mod ra;
pub mod ready;
pub mod replicas;
pub mod server;
pub mod state;
pub mod tftp;
