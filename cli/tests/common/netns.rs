//! A network namespace of the test's own (`ip netns`), deleted on drop. Root only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Netns(pub String);

impl Netns {
    /// `name`, made afresh (a leftover of that name is deleted first) with its loopback up.
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            assert!(
                Command::new("ip").args(&args).status().unwrap().success(),
                "ip {args:?}"
            );
        }
        Netns(name)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }

    /// Runs `f` on a thread inside this namespace: sockets it makes stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
