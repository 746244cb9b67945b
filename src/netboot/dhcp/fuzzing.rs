//! Fixtures for fuzzing the packet path (the stable in-suite fuzz test and the cargo-fuzz target in
//! `fuzz/`): boot decisions built from the example `cluster.toml` in full mode, full mode with an unknown
//! pool, and proxy mode with a relay id.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::netboot::boot::Booter;

const EXAMPLE: &str = include_str!("../../../cluster.toml");

/// The example cluster, edited by `edit`, as a boot decision.
pub fn booter_with(edit: impl Fn(String) -> String) -> Booter {
    let src = edit(EXAMPLE.to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cluster = crate::config::load_str(&root.join("cluster.toml"), &src, root)
        .unwrap_or_else(|e| panic!("fuzz fixture config invalid: {e}"));
    Booter::new(Arc::new(cluster), BTreeMap::new())
}

/// Enables a three-address unknown pool (10.77.0.200-202).
pub fn with_pool(s: String) -> String {
    s.replace(
        "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }",
        "unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.202\" }",
    )
}

/// Switches to proxy mode.
pub fn proxy_mode(s: String) -> String {
    s.replace("dhcp_mode = \"full\"", "dhcp_mode = \"proxy\"")
}

/// Gives worker-2 the relay id `switch1/port7`.
pub fn with_relay_id(s: String) -> String {
    s.replace(
        "ip = \"10.77.0.22\"",
        "ip = \"10.77.0.22\"\nrelay_id = \"switch1/port7\"",
    )
}

/// Full mode, full mode with a pool, proxy mode with a relay id.
pub fn booters() -> [Booter; 3] {
    [
        booter_with(|s| s),
        booter_with(with_pool),
        booter_with(|s| with_relay_id(proxy_mode(s))),
    ]
}
