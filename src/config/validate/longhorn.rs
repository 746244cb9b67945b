//! `[longhorn]`: the storage system's version, replica count (no more than the storage nodes), paths and disk.

use super::checker::{Checker, Seg, p};
use crate::config::model::{Longhorn, Version};
use crate::config::raw;

/// Checks `[longhorn]`; the replica count against the inventory's storage machines.
pub(super) fn check(
    c: &mut Checker,
    lh: &raw::LonghornRaw,
    raw_machines: &[raw::MachineRaw],
) -> Option<Longhorn> {
    let replicas = match u8::try_from(lh.replicas) {
        Ok(r) if r >= 1 => Some(r),
        _ => {
            c.error(
                &p!["longhorn", "replicas"],
                format!(
                    "{} is not a replica count; expected 1 or more (3 is Longhorn's default)",
                    lh.replicas
                ),
            );
            None
        }
    };
    let storage_nodes = raw_machines.iter().filter(|m| m.role == "storage").count();
    if let Some(r) = replicas
        && storage_nodes > 0
        && usize::from(r) > storage_nodes
    {
        c.error(&p!["longhorn", "replicas"], format!("{r} replicas but only {storage_nodes} storage node(s) carry Longhorn disks; volumes would stay degraded. Use at most {storage_nodes}"));
    }
    if !lh.data_path.starts_with('/') {
        c.error(
            &p!["longhorn", "data_path"],
            format!("{:?} is not an absolute path", lh.data_path),
        );
    }
    if !lh.disk.starts_with("/dev/") {
        c.error(
            &p!["longhorn", "disk"],
            format!(
                "{:?} is not a block device; expected a path such as /dev/vdb",
                lh.disk
            ),
        );
    }
    if lh.version.parse::<Version>().is_err() {
        c.error(
            &p!["longhorn", "version"],
            format!("{:?} is not a version of the form x.y.z", lh.version),
        );
    }
    Some(Longhorn {
        version: lh.version.clone(),
        replicas: replicas?,
        data_path: lh.data_path.clone(),
        disk: lh.disk.clone(),
    })
}
