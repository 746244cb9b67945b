//! systemd's notification protocol (`sd_notify`), in the few lines it takes: a datagram of `KEY=value` lines to
//! the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Under
//! `Type=notify` the unit is started when `READY=1` arrives; with `WatchdogSec=` systemd sets `$WATCHDOG_USEC`
//! and restarts the service when no `WATCHDOG=1` arrives in that time. Outside systemd every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1\nSTATUS=serving`) to systemd. `Ok(false)` when not run by systemd.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// Sends `state` and logs (at debug) when it could not be delivered; the server keeps serving either way.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd ({state:?}); is NOTIFY_SOCKET right?");
    }
}

/// The interval at which to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when the watchdog is on for this
/// process (`$WATCHDOG_PID` absent or ours), else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket_named_by_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only code in the process reading or writing NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nSTATUS=serving").unwrap());
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        assert!(
            !notify("READY=1").unwrap(),
            "without NOTIFY_SOCKET: nothing sent"
        );
    }
}
