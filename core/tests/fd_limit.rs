//! `runtime::raise_fd_limit` (its own test binary: it changes a process-wide limit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::resource::{Resource, getrlimit, setrlimit};

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 64 {
        panic!("hard open-file limit {hard}: too low to test");
    }
    setrlimit(Resource::RLIMIT_NOFILE, 32, hard).unwrap();
    assert_eq!(ambit_core::runtime::raise_fd_limit(), Some((32, hard)));
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    assert_eq!(ambit_core::runtime::raise_fd_limit(), None, "already at the hard limit");
}
