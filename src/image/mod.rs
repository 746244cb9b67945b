//! Node images: the role layer, the base, packing, and the immutable content-addressed store.

pub mod tree;
