//! A small reader for classic pcap files (what `tcpdump -w` writes) and the wire checks of the e2e tests.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Result, bail, ensure};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// One IPv4 TCP segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl TcpSegment {
    pub fn between(&self, x: Ipv4Addr, y: Ipv4Addr) -> bool {
        (*self.src.ip() == x && *self.dst.ip() == y) || (*self.src.ip() == y && *self.dst.ip() == x)
    }

    pub fn has_port(&self, port: u16) -> bool {
        self.src.port() == port || self.dst.port() == port
    }
}

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// All IPv4 TCP segments in a pcap file (other packets are skipped).
pub fn tcp_segments(file: &[u8]) -> Result<Vec<TcpSegment>> {
    ensure!(
        file.len() >= 24,
        "pcap: file too short ({} bytes)",
        file.len()
    );
    let magic: [u8; 4] = [file[0], file[1], file[2], file[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("pcap: unknown magic {magic:02x?} (pcapng is not supported; use tcpdump -w)"),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = file.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = u32_at(20).unwrap_or_default() & 0x0fff_ffff;
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let Some(incl) = u32_at(at + 8) else { break };
        let start = at + 16;
        let end = start.saturating_add(incl as usize);
        ensure!(end <= file.len(), "pcap: truncated record at offset {at}");
        if let Some(seg) = packet(linktype, &file[start..end]) {
            segments.push(seg);
        }
        at = end;
    }
    Ok(segments)
}

/// The IPv4 TCP segment in one link-layer frame, if it is one.
fn packet(linktype: u32, frame: &[u8]) -> Option<TcpSegment> {
    let ip = match linktype {
        LINKTYPE_ETHERNET => {
            let mut off = 12;
            let mut ethertype = u16_be(frame, off)?;
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4;
                ethertype = u16_be(frame, off)?;
            }
            (ethertype == 0x0800).then(|| frame.get(off + 2..))??
        }
        LINKTYPE_LINUX_SLL => (u16_be(frame, 14)? == 0x0800).then(|| frame.get(16..))??,
        LINKTYPE_LINUX_SLL2 => (u16_be(frame, 0)? == 0x0800).then(|| frame.get(20..))??,
        LINKTYPE_RAW => frame,
        _ => return None,
    };
    ipv4_tcp(ip)
}

fn ipv4_tcp(ip: &[u8]) -> Option<TcpSegment> {
    if ip.len() < 20 {
        return None;
    }
    let first = ip[0];
    if first >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    // Offloaded (GSO) frames may carry a zero total length: then the captured bytes are the packet.
    let total = match usize::from(u16_be(ip, 2)?) {
        0 => ip.len(),
        n => n.min(ip.len()),
    };
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total)?;
    let src_port = u16_be(tcp, 0)?;
    let dst_port = u16_be(tcp, 2)?;
    let data_off = usize::from(*tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    let payload = tcp.get(data_off..)?.to_vec();
    Some(TcpSegment {
        src: SocketAddrV4::new(src_ip, src_port),
        dst: SocketAddrV4::new(dst_ip, dst_port),
        flags,
        payload,
    })
}

/// TLS handshake record carrying a message of `kind` (1 = ClientHello, 2 = ServerHello) at the start of `payload`.
fn is_tls_handshake(payload: &[u8], kind: u8) -> bool {
    payload.len() >= 6 && payload[0] == 0x16 && payload[1] == 0x03 && payload[5] == kind
}

/// What crossed the wire between two pods.
#[derive(Debug, Default)]
pub struct WireSummary {
    /// TCP segments between the two addresses.
    pub segments: usize,
    /// Segments with neither port 15008.
    pub non_hbone: Vec<String>,
    pub client_hello_to_hbone: bool,
    pub server_hello_from_hbone: bool,
    /// Needles found in a payload or in a direction's concatenated payloads.
    pub plaintext_found: Vec<String>,
}

/// Summarises the segments between `x` and `y`, looking for each of `needles` in the payloads.
pub fn summarise(
    segments: &[TcpSegment],
    x: Ipv4Addr,
    y: Ipv4Addr,
    needles: &[&[u8]],
) -> WireSummary {
    let mut s = WireSummary::default();
    let mut streams: std::collections::BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<u8>> =
        Default::default();
    for seg in segments.iter().filter(|seg| seg.between(x, y)) {
        s.segments += 1;
        if !seg.has_port(HBONE_PORT) && s.non_hbone.len() < 10 {
            s.non_hbone.push(format!("{} -> {}", seg.src, seg.dst));
        }
        s.client_hello_to_hbone |=
            seg.dst.port() == HBONE_PORT && is_tls_handshake(&seg.payload, 1);
        s.server_hello_from_hbone |=
            seg.src.port() == HBONE_PORT && is_tls_handshake(&seg.payload, 2);
        streams
            .entry((seg.src, seg.dst))
            .or_default()
            .extend_from_slice(&seg.payload);
    }
    for needle in needles {
        let found = streams.iter().find(|(_, bytes)| contains(bytes, needle));
        if let Some(((src, dst), _)) = found {
            s.plaintext_found.push(format!(
                "{:?} in {src} -> {dst}",
                String::from_utf8_lossy(needle)
            ));
        }
    }
    s
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl WireSummary {
    /// Only mTLS to 15008 between the pods: traffic present, every segment on 15008, a TLS handshake both ways,
    /// none of the needles in clear.
    pub fn check_only_hbone(&self) -> Result<()> {
        ensure!(
            self.segments > 0,
            "no TCP segments between the pods were captured"
        );
        ensure!(
            self.non_hbone.is_empty(),
            "segments not on port {HBONE_PORT}: {:?}",
            self.non_hbone
        );
        ensure!(
            self.client_hello_to_hbone,
            "no TLS ClientHello to port {HBONE_PORT} in the capture"
        );
        ensure!(
            self.server_hello_from_hbone,
            "no TLS ServerHello from port {HBONE_PORT} in the capture"
        );
        ensure!(
            self.plaintext_found.is_empty(),
            "plaintext on the wire: {:?}",
            self.plaintext_found
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a little-endian, microsecond, Ethernet pcap of the given segments.
    fn pcap(segments: &[(SocketAddrV4, SocketAddrV4, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for (src, dst, payload) in segments {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + 20 + payload.len()) as u16;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&src.ip().octets());
            ip.extend_from_slice(&dst.ip().octets());
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&src.port().to_be_bytes());
            tcp.extend_from_slice(&dst.port().to_be_bytes());
            tcp.extend_from_slice(&[0; 8]);
            tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            frame.extend_from_slice(&ip);
            frame.extend_from_slice(&tcp);
            frame.extend_from_slice(payload);
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&frame);
        }
        f
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0, 0, 0x0c];
    const SERVER_HELLO: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x10, 0x02, 0, 0, 0x0c];

    #[test]
    fn parses_segments() {
        let a = SocketAddrV4::new(A, 40000);
        let b = SocketAddrV4::new(B, 8080);
        let segs = tcp_segments(&pcap(&[(a, b, b"GET / HTTP/1.1\r\n"), (b, a, b"")])).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].src, a);
        assert_eq!(segs[0].dst, b);
        assert_eq!(segs[0].flags, 0x18);
        assert_eq!(segs[0].payload, b"GET / HTTP/1.1\r\n");
        assert!(segs[1].payload.is_empty());
    }

    #[test]
    fn hbone_only_capture_passes() {
        let a = SocketAddrV4::new(A, 40000);
        let b = SocketAddrV4::new(B, HBONE_PORT);
        let file = pcap(&[
            (a, b, CLIENT_HELLO),
            (b, a, SERVER_HELLO),
            (a, b, &[0x17, 0x03, 0x03, 0, 2, 0xaa, 0xbb]),
        ]);
        let s = summarise(&tcp_segments(&file).unwrap(), A, B, &[b"GET /"]);
        assert_eq!(s.segments, 3);
        s.check_only_hbone().unwrap();
    }

    #[test]
    fn plaintext_and_other_ports_fail() {
        let a = SocketAddrV4::new(A, 40000);
        let b = SocketAddrV4::new(B, 8080);
        let file = pcap(&[(a, b, b"GE"), (a, b, b"T / HTTP/1.1\r\n")]);
        let s = summarise(&tcp_segments(&file).unwrap(), A, B, &[b"GET /"]);
        assert_eq!(s.non_hbone.len(), 2);
        // Found across two segments of the same direction.
        assert_eq!(s.plaintext_found.len(), 1);
        assert!(s.check_only_hbone().is_err());
    }

    #[test]
    fn missing_handshake_or_traffic_fails() {
        let a = SocketAddrV4::new(A, 40000);
        let b = SocketAddrV4::new(B, HBONE_PORT);
        let file = pcap(&[(a, b, CLIENT_HELLO)]);
        let s = summarise(&tcp_segments(&file).unwrap(), A, B, &[]);
        assert!(
            s.check_only_hbone()
                .unwrap_err()
                .to_string()
                .contains("ServerHello")
        );
        let other = Ipv4Addr::new(10, 1, 1, 1);
        let s = summarise(&tcp_segments(&file).unwrap(), A, other, &[]);
        assert!(
            s.check_only_hbone()
                .unwrap_err()
                .to_string()
                .contains("no TCP segments")
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(tcp_segments(b"not a pcap file at all, no").is_err());
    }
}
