//! Node images: the role layer, the base, packing, and the immutable content-addressed store.

pub mod manifest;
pub mod pins;
pub mod tree;
