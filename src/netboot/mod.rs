//! The netboot server (`imgbuild serve`): DHCP, TFTP and HTTP around one boot decision.

pub mod boot;
pub mod dhcp;
pub mod server;
