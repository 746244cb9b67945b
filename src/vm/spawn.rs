//! Starting the lab's child processes (QEMU, swtpm, `imgbuild serve`, dnsmasq, chronyd, a test's tcpdump) so
//! that they die with this process, even when it is killed and no `Drop` runs (kill -9, or nextest ending a
//! test that ran past its time limit).
//!
//! Each child asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`, set between `fork`
//! and `exec`; it survives the `exec` of `ip netns exec` and of the program that replaces it, none of which is
//! set-user-ID). The kernel's "parent" is the *thread* that forked: a child started from a short-lived thread
//! (a scoped thread that entered a namespace, a test's helper thread) would be killed when that thread ends. So
//! every child is forked by one spawner thread that lives as long as the process ([`spawn`] hands the command
//! to it and waits for the result). A child therefore starts in the spawner's network namespace, the main
//! thread's: run programs in a lab namespace with [`super::netns::Netns::command`] (`ip netns exec`), never by
//! entering the namespace on the calling thread. If the process died between the `fork` and the `prctl`, the
//! child sees another parent and exits at once.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // A new thread inherits the network namespace of the thread that made it, which may be one that
                // entered a lab's namespace: go back to the main thread's, the process's own (root only; without
                // the right the thread stays where it is).
                if let Ok(f) = std::fs::File::open("/proc/self/ns/net") {
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns on an open namespace descriptor affects only this thread.
                    unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                }
                // The sender lives in a static: this loop (and so the thread the children's death signal is
                // tied to) ends only with the process.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(spawn_here(&mut cmd));
                }
            })
            .expect("cannot start the child-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` on the calling thread with the death signal set: only right when the calling thread lives as
/// long as the child should.
fn spawn_here(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions
    // (prctl, getppid); it allocates nothing on success.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before the prctl took effect: nobody would ever kill us.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` so that the child is SIGKILLed when this process dies (see the module documentation). The
/// child starts in the process's original namespaces, whichever thread calls this.
pub fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("the child-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the child-spawner thread is gone"))?
}

/// [`spawn`] as a method, for a command built in one expression (`Command::new(…).args(…).spawn_tied()`).
pub trait SpawnTied {
    /// Spawns the command through [`spawn`]. The command is used up: it is left empty (a program that does not
    /// exist), so build a new one for another child.
    fn spawn_tied(&mut self) -> std::io::Result<Child>;
}

impl SpawnTied for Command {
    fn spawn_tied(&mut self) -> std::io::Result<Child> {
        spawn(std::mem::replace(
            self,
            Command::new("/nonexistent/command-already-spawned"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Set by [`children_die_with_their_parent_even_when_it_is_killed`] for the copy of this test binary it runs
    /// as the "lab".
    const PARENT_ENV: &str = "IMGBUILD_SPAWN_TEST_PARENT";

    fn alive(pid: u32) -> bool {
        // A zombie (dead, not yet reaped by its new parent) counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// The "lab": run only as the child process of the test below (ignored otherwise). Starts a `sleep` through
    /// [`spawn`] from a thread that ends at once, writes the sleep's PID, then waits to be killed.
    #[test]
    #[ignore = "run by children_die_with_their_parent_even_when_it_is_killed as its parent process"]
    fn spawn_test_parent() {
        let Ok(pid_file) = std::env::var(PARENT_ENV) else {
            return;
        };
        let mut child = std::thread::spawn(|| {
            let mut c = Command::new("sleep");
            c.arg("613");
            spawn(c).expect("sleep")
        })
        .join()
        .unwrap();
        // The thread that asked is gone; the child must still be running (it is tied to the spawner thread).
        std::thread::sleep(Duration::from_millis(300));
        let state = if alive(child.id()) { "alive" } else { "dead" };
        std::fs::write(&pid_file, format!("{} {state}\n", child.id())).unwrap();
        std::thread::sleep(Duration::from_secs(120));
        // Not killed by the test within that time: end the child ourselves.
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A lab-like parent process is SIGKILLed (no `Drop` runs): the child it started through [`spawn`] dies
    /// with it. The child survived the end of the thread that asked for it.
    #[test]
    fn children_die_with_their_parent_even_when_it_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args([
                "vm::spawn::tests::spawn_test_parent",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(PARENT_ENV, &pid_file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            match std::fs::read_to_string(&pid_file) {
                Ok(t) if t.ends_with('\n') => break t,
                _ => {}
            }
            if Instant::now() > deadline || parent.try_wait().unwrap().is_some() {
                let _ = parent.kill();
                let _ = parent.wait();
                panic!("the parent process wrote no child PID");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (pid, state) = text.trim().split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert_eq!(cmdline, b"sleep\x00613\x00", "the child is our sleep");
        assert_eq!(
            state, "alive",
            "the child died with the short-lived thread that asked for it"
        );
        parent.kill().unwrap(); // SIGKILL: nothing of the parent runs any more.
        parent.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let gone = !alive(pid);
        if !gone && std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() == cmdline {
            // SAFETY: kill(2) on the PID of the sleep this test started (checked by its command line above).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        assert!(gone, "the child {pid} outlived its killed parent");
    }
}
