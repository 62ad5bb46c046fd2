//! Baseline without ztunnel: the topology works, and the wire checks see plaintext when there is plaintext
//! (so their passing in `ztunnel.rs` means something). Needs root; see `ambit_e2e::runner`.

use ambit_e2e::capture::Capture;
use ambit_e2e::pcap::{self, HBONE_PORT};
use ambit_e2e::topology::{A_IP, B_IP, HTTP_PORT};
use ambit_e2e::{Mode, TwoPods, TwoPodsOptions, e2e_test};
use anyhow::ensure;

const HTTP_BIN: &str = env!("CARGO_BIN_EXE_e2e-http");

#[test]
fn direct_curl_a_to_b_is_plaintext_on_the_wire() {
    e2e_test("direct_curl", |dir| {
        let pods = TwoPods::start(dir, &TwoPodsOptions::new(Mode::Direct).with_http(HTTP_BIN))?;
        let capture = Capture::start(pods.a().ns(), pods.a().interface(), dir.path(), "veth-a")?;
        let r = pods.a().curl(&pods.b_url())?;
        let segments = capture.stop()?;

        ensure!(r.ok(), "curl a -> b failed: {r:?}");
        // The server sees the client's own address: nothing in between.
        ensure!(
            r.body.starts_with(&format!("hello {A_IP}:")),
            "unexpected body {:?}",
            r.body
        );

        let wire = pcap::summarise(&segments, A_IP, B_IP, &[b"GET /"]);
        ensure!(wire.segments > 0, "capture saw nothing");
        ensure!(
            segments
                .iter()
                .filter(|s| s.between(A_IP, B_IP))
                .all(|s| s.has_port(HTTP_PORT) && !s.has_port(HBONE_PORT)),
            "direct traffic should be on :{HTTP_PORT} only"
        );
        ensure!(
            wire.plaintext_found.len() == 1,
            "the request should be visible in clear: {wire:?}"
        );
        ensure!(
            wire.check_only_hbone().is_err(),
            "the HBONE check must reject plaintext"
        );
        Ok(())
    });
}
