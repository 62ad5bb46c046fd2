//! Sizes of the per-connection futures, and of the structs they hold, as far as the public API reaches them.
//!
//! A future's size is fixed by its type: the largest set of locals (plus the arguments, which an `async fn`
//! stores twice) live across any one `.await`, over every branch, whether or not the connection ever takes that
//! branch. A spawned task is one allocation of that size plus tokio's header and trailer (120 bytes here, and
//! the whole rounded up to 128), then up to jemalloc's size class (..., 1792, 2048, 2560, 3072, 3584, 4096, ...),
//! for the connection's whole life, idle or not. Measured from the types: the `size_of` of what each `async fn`
//! returns is exactly what `size_of_val` gives for a future made by calling it, and needs no `ProxyInputs`,
//! socket or runtime.
//!
//! Not reachable from here (private): the inbound per-stream task (the handler closure in `inbound::serve` that
//! `hbone::serve` spawns for every CONNECT stream, around `proxy::inbound::stream`, tested in its module), the captured-outbound closure
//! of `app::Listeners::spawn` and the cross-worker wrapper of `proxy::Handlers::dispatch` (each adds ~100 bytes
//! to `outbound::handle`).
//!
//! `cargo test -p ambit-ztunnel --test future_sizes -- --nocapture` prints the table. The ceilings are about 1.25x
//! the sizes after the plain-TCP branches were boxed (outbound 2,400, SOCKS5 2,656, passthrough 1,992 bytes; debug
//! and release builds are within 1 % of each other): they catch a future that grows by a branch, or doubles, as
//! one does when a large future is bound to a name before it is awaited. The inbound stream's future has its own
//! test inside `proxy/inbound.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::mem::size_of;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::drain::DrainWatcher;
use ambit_core::hbone::{H2Stream, HboneClient, PoolKey};
use ambit_ztunnel::metrics::{ConnectionGuard, TrafficLabels};
use ambit_ztunnel::proxy::connections::LiveConnection;
use ambit_ztunnel::proxy::{self, HboneConnector, ProxyInputs};
use tokio::net::TcpStream;

/// The size of what calling `f` returns (for an `async fn`, its future), by arity.
fn ret1<A, R>(_: impl FnOnce(A) -> R) -> usize {
    size_of::<R>()
}

fn ret2<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
    size_of::<R>()
}

fn ret3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
    size_of::<R>()
}

fn ret4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
    size_of::<R>()
}

fn ret5<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
    size_of::<R>()
}

/// tokio's task allocation for a future of `size` bytes (`task::core::Cell`: 120 bytes of header, scheduler
/// handle, id and trailer, aligned to 128 on x86_64), then the jemalloc size class it lands in.
fn task_allocation(size: usize) -> (usize, usize) {
    let cell = (size + 120).div_ceil(128) * 128;
    let k = usize::BITS - (cell - 1).leading_zeros() - 1; // 2^k < cell <= 2^(k+1)
    let spacing = 1usize << (k - 2); // four classes per doubling
    (cell, cell.div_ceil(spacing) * spacing)
}

struct Row {
    what: &'static str,
    size: usize,
    max: usize,
    /// A task of its own, for the connection's life: show its allocation.
    task: bool,
}

fn rows() -> Vec<Row> {
    let outbound: fn(Arc<ProxyInputs>, TcpStream, SocketAddr, SocketAddr, DrainWatcher) -> _ =
        proxy::outbound::handle;
    let row = |what, size, max, task| Row {
        what,
        size,
        max,
        task,
    };
    vec![
        row(
            "proxy::outbound::handle: per captured outbound connection",
            ret5(outbound),
            3000,
            true,
        ),
        row(
            "proxy::socks5::handle: per SOCKS5 connection",
            ret4(proxy::socks5::handle),
            3300,
            true,
        ),
        row(
            "proxy::passthrough::handle: per inbound plaintext connection",
            ret4(proxy::passthrough::handle),
            2500,
            true,
        ),
        row(
            "proxy::inbound::handle: per HBONE TLS connection (shared by its streams)",
            ret4(proxy::inbound::handle),
            10000,
            true,
        ),
        row(
            "hbone::copy_bidirectional::<TcpStream>: in every tunnelled connection, both sides",
            ret2(ambit_core::hbone::copy_bidirectional::<TcpStream>),
            700,
            false,
        ),
        row(
            "HboneClient::connect: outbound CONNECT, boxed, freed once the stream is open",
            ret3(HboneClient::<HboneConnector>::connect),
            6500,
            false,
        ),
        row(
            "ProxyInputs::local_workload",
            ret1(ProxyInputs::local_workload),
            300,
            false,
        ),
        row(
            "H2Stream: held by the copy loop",
            size_of::<H2Stream>(),
            150,
            false,
        ),
        row(
            "TrafficLabels: 26 owned Strings (~300 more bytes of heap), one per connection per side",
            size_of::<TrafficLabels>(),
            700,
            false,
        ),
        row(
            "ConnectionGuard: holds the TrafficLabels for the connection's life",
            size_of::<ConnectionGuard<'static>>(),
            750,
            false,
        ),
        row(
            "LiveConnection: the /config_dump registration guard",
            size_of::<LiveConnection<'static>>(),
            32,
            false,
        ),
        row("PoolKey", size_of::<PoolKey>(), 200, false),
        row(
            "http::request::Parts: the inbound CONNECT request (dropped before the stream's task starts)",
            size_of::<http::request::Parts>(),
            300,
            false,
        ),
        row("DrainWatcher", size_of::<DrainWatcher>(), 32, false),
    ]
}

#[test]
fn per_connection_future_sizes() {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "{:>6} {:>6} {:>12}  what ({build} build)",
        "bytes", "max", "task/class"
    );
    let mut over = Vec::new();
    for r in rows() {
        let task = if r.task {
            let (cell, class) = task_allocation(r.size);
            format!("{cell}/{class}")
        } else {
            String::new()
        };
        println!("{:>6} {:>6} {:>12}  {}", r.size, r.max, task, r.what);
        if r.size > r.max {
            over.push(format!("{}: {} > {}", r.what, r.size, r.max));
        }
    }
    assert!(
        over.is_empty(),
        "per-connection futures grew (see docs/PERFORMANCE.md, idle connections): {over:#?}"
    );
}

#[test]
fn task_allocation_matches_tokio_and_jemalloc() {
    // tokio's `Cell` for socks5::handle's 3208-byte future is 3328 bytes (rustc -Zprint-type-sizes), which
    // jemalloc serves from its 3584 class.
    assert_eq!(task_allocation(3208), (3328, 3584));
    assert_eq!(task_allocation(1440), (1664, 1792));
}
