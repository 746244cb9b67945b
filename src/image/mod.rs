//! Node images: the role layer, the base, packing, and the immutable content-addressed store.
//!
//! - [`build`]: one role's image from its inputs, with caches at every level.
//! - [`base`]: the Debian base from mmdebstrap; [`layer`]: the role layer over it.
//! - [`artifacts`], [`lock`], [`install`], [`standins`]: kubeadm & co. — fetched and verified, or stand-ins.
//! - [`initrd`]: the netboot initrd; [`squashfs`]: the root filesystem image; [`verity`]: its dm-verity tree.
//! - [`store`]: the [`store::ImageStore`] interface and `images/<id>/`, written once; [`catalog`]: images with
//!   their pins, `gc`; [`manifest`], [`pins`], [`tree`].

pub mod artifacts;
pub mod authenticode;
pub mod base;
pub mod build;
mod build_progress;
pub mod bundle;
pub mod catalog;
pub mod initrd;
pub mod install;
pub mod layer;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod pins;
pub mod squashfs;
pub mod standins;
pub mod store;
pub mod tree;
pub mod uki;
pub mod verity;
