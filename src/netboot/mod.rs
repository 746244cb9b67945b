//! The netboot server (`imgbuild serve`): DHCP, TFTP and HTTP around one boot decision.

pub mod boot;
pub mod bootfiles;
pub mod dhcp;
pub mod grub;
pub mod http;
pub mod metrics;
pub mod peers;
pub mod pinwatch;
pub mod ra;
pub mod server;
pub mod state;
pub mod tftp;
