//! Network-namespace harness for Ambit end-to-end tests and the L4 benchmark.
//!
//! Everything here shells out to the usual Linux tools (`ip`, `iptables`, `curl`, `tcpdump`, `iperf3`, `wrk`) and
//! needs root. The pieces:
//! * [`netns`]: named network namespaces (`ambit-e2e-*`, removed on drop and swept at start), veth pairs, commands
//!   run inside a namespace;
//! * [`process`]: long-running child processes killed on drop, output to files;
//! * [`testdir`]: a per-test directory that is kept and printed (with log tails) when the test fails;
//! * [`topology`]: the `TwoPods` topology (two pods, each optionally with a dedicated-mode ztunnel);
//! * [`three_pods`]: the `ThreePods` topology of the L7 benchmark (client, waypoint, server on a bridge);
//! * [`localconfig`]: ztunnel local-config YAML (upstream's format);
//! * [`capture`] and [`pcap`]: tcpdump on a veth and a pcap reader with the "only HBONE on the wire" checks;
//! * [`kube`]: the `ambit-apiserver` binary and `kubectl` against it, for the tests in Kubernetes mode;
//! * [`prom`]: a Prometheus text-format reader for asserting on metrics;
//! * [`tools`]: readers for `iperf3 -J` and `wrk --latency` output (used by the benchmark).

pub mod capture;
pub mod kube;
pub mod load;
pub mod local;
pub mod localconfig;
pub mod netns;
pub mod pcap;
pub mod process;
pub mod prom;
pub mod redirection;
pub mod runner;
pub mod testdir;
pub mod three_pods;
pub mod tools;
pub mod topology;

pub use runner::{e2e_test, is_root, require_root};
pub use testdir::TestDir;
pub use topology::{Mode, TwoPods, TwoPodsOptions};
