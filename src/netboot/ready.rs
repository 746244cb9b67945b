//! Which listeners are bound: each protocol marks itself once its sockets are bound (and, for DHCP, once it has
//! decided whether to answer); `server.rs` waits for all of them before telling systemd `READY=1`.

use tokio::sync::watch;

/// The set of listeners bound so far. Shared by every protocol through `Shared`.
pub struct Ready {
    bound: watch::Sender<Vec<&'static str>>,
}

impl Default for Ready {
    fn default() -> Self {
        Ready {
            bound: watch::Sender::new(Vec::new()),
        }
    }
}

impl Ready {
    /// Records that the listener `name` (`dhcp`, `tftp`, `http`, `ra`) is bound and serving.
    pub fn bound(&self, name: &'static str) {
        self.bound.send_modify(|v| {
            if !v.contains(&name) {
                v.push(name);
            }
        });
    }

    /// The listeners bound so far.
    pub fn listeners(&self) -> Vec<&'static str> {
        self.bound.borrow().clone()
    }

    /// Waits until every listener in `names` is bound.
    pub async fn all(&self, names: &[&'static str]) {
        let mut rx = self.bound.subscribe();
        let _ = rx.wait_for(|v| names.iter().all(|n| v.contains(n))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_every_named_listener() {
        let r = std::sync::Arc::new(Ready::default());
        r.bound("http");
        let r2 = r.clone();
        let waiter = tokio::spawn(async move { r2.all(&["http", "tftp"]).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "tftp is not bound yet");
        r.bound("tftp");
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.listeners(), ["http", "tftp"]);
    }
}
