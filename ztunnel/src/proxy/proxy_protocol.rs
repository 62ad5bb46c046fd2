//! PROXY protocol v2 (haproxy.org `proxy-protocol.txt` §2.2), written in front of the bytes of an inbound stream to
//! a workload whose application tunnel speaks it (spec 1.10): command PROXY, transport STREAM, the HBONE peer as
//! source, the stream's destination, and TLVs for the source's SPIFFE identity (`0xD0`, when the peer proved one)
//! and the service hostname the client addressed (`0xD1`, for hostname authorities; as upstream does now).
//! ztunnel never reads PROXY headers: this is the only direction.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// Address family and transport: TCP over IPv4, TCP over IPv6.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
/// The source workload's identity, `spiffe://…`.
pub const TLV_SOURCE_IDENTITY: u8 = 0xD0;
/// The hostname of the service the client addressed.
pub const TLV_SERVICE_HOSTNAME: u8 = 0xD1;

/// The v2 header for a stream from `src` to `dst`. Mixed families are written as IPv6 (IPv4-mapped), as the
/// format has no mixed form. A TLV value that would not fit the header's 16-bit length is left out: the addresses
/// are what the application needs first, and no SPIFFE id or DNS name comes near 64 KiB.
pub fn v2_header(
    src: SocketAddr,
    dst: SocketAddr,
    source_identity: Option<&str>,
    service_hostname: Option<&str>,
) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            TCP4
        }
        (s, d) => {
            addresses.extend_from_slice(&v6(s).octets());
            addresses.extend_from_slice(&v6(d).octets());
            TCP6
        }
    };
    addresses.extend_from_slice(&src.port().to_be_bytes());
    addresses.extend_from_slice(&dst.port().to_be_bytes());
    let mut body = addresses;
    for (kind, value) in [
        (TLV_SOURCE_IDENTITY, source_identity),
        (TLV_SERVICE_HOSTNAME, service_hostname),
    ] {
        let Some(value) = value else { continue };
        let fits = u16::try_from(body.len() + 3 + value.len()).is_ok();
        let Ok(len) = u16::try_from(value.len()) else {
            continue;
        };
        if !fits {
            continue;
        }
        body.push(kind);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    out.push(family);
    // The body is at most 36 bytes of addresses plus TLVs checked to fit above.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The bytes, as the spec lays them out, for an IPv4 stream with both TLVs.
    #[test]
    fn ipv4_with_identity_and_hostname_is_laid_out_as_the_spec_says() {
        let h = v2_header(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            Some("spiffe://td/ns/a/sa/b"),
            Some("svc.ns"),
        );
        let mut want = Vec::new();
        want.extend_from_slice(b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a");
        want.extend_from_slice(&[0x21, 0x11]);
        let id = b"spiffe://td/ns/a/sa/b";
        let len = 12 + 3 + id.len() + 3 + 6;
        want.extend_from_slice(&(len as u16).to_be_bytes());
        want.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&8080u16.to_be_bytes());
        want.push(0xD0);
        want.extend_from_slice(&(id.len() as u16).to_be_bytes());
        want.extend_from_slice(id);
        want.push(0xD1);
        want.extend_from_slice(&6u16.to_be_bytes());
        want.extend_from_slice(b"svc.ns");
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_and_mixed_families_are_written_as_ipv6() {
        let h = v2_header(
            "[fd00::1]:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            None,
            None,
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        let dst: [u8; 16] = h[32..48].try_into().unwrap();
        assert_eq!(
            std::net::Ipv6Addr::from(dst),
            "10.0.0.2"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        );
        assert_eq!(&h[48..52], &[0, 1, 0, 2]);
    }

    #[test]
    fn a_value_too_long_for_the_header_is_left_out() {
        let huge = "x".repeat(70_000);
        let h = v2_header(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            Some(&huge),
            Some("svc"),
        );
        // Addresses, then only the hostname TLV.
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12 + 3 + 3);
        assert_eq!(h[16 + 12], 0xD1);
        // Two values that fit alone but not together: the second is left out.
        let big = "y".repeat(40_000);
        let h = v2_header(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            Some(&big),
            Some(&big),
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([h[14], h[15]])),
            12 + 3 + 40_000
        );
        assert_eq!(h.len(), 16 + 12 + 3 + 40_000);
    }
}
