//! Socket plumbing shared by the listeners: original destinations, packet marks, transparent (spoofed) connects.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How proxy sockets are made: every socket carries the packet mark so the redirection rules skip it; in shared
/// mode every socket of a pod's proxy is created inside that pod's network namespace.
#[derive(Clone, Debug, Default)]
pub struct SocketFactory {
    pub mark: Option<u32>,
    pub keepalive: Option<(Duration, Duration, u32)>,
    /// `TCP_USER_TIMEOUT` for accepted and connected streams ([`crate::config::Config::tcp_user_timeout`]).
    pub user_timeout: Option<Duration>,
    pub netns: Option<Arc<Netns>>,
}

/// A pod's network namespace, and ztunnel's own to return to.
///
/// A socket belongs to the namespace it was created in, whatever thread uses it later; so only the `socket()` call
/// runs inside the pod's namespace: the calling thread switches there and straight back (two `setns` calls, no
/// thread hop), and nothing else ever runs on a thread that is not in ztunnel's own namespace.
#[derive(Debug)]
pub struct Netns {
    pod: OwnedFd,
    host: Arc<OwnedFd>,
}

impl Netns {
    /// `host` is ztunnel's own namespace (`/proc/self/ns/net`, opened once at start).
    pub fn new(pod: OwnedFd, host: Arc<OwnedFd>) -> Netns {
        Netns { pod, host }
    }

    /// Opens the namespace the calling thread is in, to come back to.
    pub fn current() -> io::Result<OwnedFd> {
        Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
    }

    /// Runs `f` (which must not block or yield) with the calling thread inside the pod's namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        setns(&self.pod, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(e) = setns(&*self.host, CloneFlags::CLONE_NEWNET) {
            // A runtime thread left in a pod's namespace would put later sockets in the wrong network: there is no
            // safe way to go on.
            tracing::error!(error = %e, "cannot return to ztunnel's network namespace; aborting");
            std::process::abort();
        }
        out
    }
}

impl SocketFactory {
    fn socket(&self, v4: bool) -> io::Result<TcpSocket> {
        let make = || {
            if v4 {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        match &self.netns {
            Some(ns) => ns.run(make),
            None => make(),
        }
    }

    /// A UDP socket bound to `addr` (in the pod's namespace in shared mode), marked like every proxy socket.
    /// `reuse_port`: as the pod's TCP listeners (`INPOD_PORT_REUSE`): during a rolling restart the old and the new
    /// ztunnel's sockets share the queries, and when the old one closes its socket the rest go to the new one (with
    /// only `SO_REUSEADDR` the kernel may keep delivering to the socket about to close).
    pub fn udp_bind(
        &self,
        addr: SocketAddr,
        reuse_port: bool,
    ) -> io::Result<tokio::net::UdpSocket> {
        let make = || {
            let domain = if addr.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        };
        let s = match &self.netns {
            Some(ns) => ns.run(make)?,
            None => make()?,
        };
        if let Some(mark) = self.mark {
            s.set_mark(mark)?;
        }
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        tokio::net::UdpSocket::from_std(s.into())
    }

    /// Binds a listener. `transparent` lets it accept connections for addresses that are not local (and lets
    /// upstream sockets bind a spoofed source).
    pub fn listen(
        &self,
        addr: SocketAddr,
        transparent: bool,
        reuse_port: bool,
    ) -> io::Result<TcpListener> {
        let socket = self.socket(addr.is_ipv4())?;
        socket.set_reuseaddr(true)?;
        let sref = SockRef::from(&socket);
        if reuse_port {
            sref.set_reuse_port(true)?;
        }
        if transparent {
            // best effort: needs CAP_NET_ADMIN
            let _ = if addr.is_ipv4() {
                sref.set_ip_transparent_v4(true)
            } else {
                sref.set_ip_transparent_v6(true)
            };
        }
        if let Some(mark) = self.mark {
            sref.set_mark(mark)?;
        }
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // [::] also accepts IPv4
            sref.set_only_v6(false)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    }

    /// Connects to `dst`, optionally from a spoofed `src` (needs IP_TRANSPARENT). Sets TCP_NODELAY and keepalive.
    pub async fn connect(&self, dst: SocketAddr, src: Option<SocketAddr>) -> io::Result<TcpStream> {
        let socket = self.socket(dst.is_ipv4())?;
        let sref = SockRef::from(&socket);
        if let Some(mark) = self.mark {
            sref.set_mark(mark)?;
        }
        if let Some(src) = src {
            if src.is_ipv4() {
                sref.set_ip_transparent_v4(true)?;
            } else {
                sref.set_ip_transparent_v6(true)?;
            }
            socket.bind(SocketAddr::new(src.ip(), 0))?;
        }
        let stream = socket.connect(dst).await?;
        self.tune(&stream)?;
        Ok(stream)
    }

    /// Per-connection options for accepted and connected streams.
    pub fn tune(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        if let Some((time, interval, retries)) = self.keepalive {
            let ka = TcpKeepalive::new()
                .with_time(time)
                .with_interval(interval)
                .with_retries(retries);
            SockRef::from(stream).set_tcp_keepalive(&ka)?;
        }
        if let Some(timeout) = self.user_timeout {
            SockRef::from(stream).set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// The destination a redirected connection was originally sent to (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let mapped_v4 = matches!(local.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if local.is_ipv4() || mapped_v4 {
        let sin = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            u32::from_be(sin.sin_addr.s_addr).into(),
            u16::from_be(sin.sin_port),
        )))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            sin6.sin6_addr.s6_addr.into(),
            u16::from_be(sin6.sin6_port),
            sin6.sin6_flowinfo,
            sin6.sin6_scope_id,
        )))
    }
}

/// IPv4-mapped IPv6 addresses (from a `[::]` listener) back to plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    // `original_dst` under a real DNAT rule needs root and a network namespace of its own: that test lives with
    // the other netns tests in `tests/inbound.rs`.
    use super::*;

    #[test]
    fn mapped_addresses_become_v4() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(a), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(b), b);
    }

    #[tokio::test]
    async fn streams_get_the_user_timeout() {
        let timeout = Duration::from_secs(123);
        let f = SocketFactory {
            user_timeout: Some(timeout),
            ..SocketFactory::default()
        };
        let l = f
            .listen("127.0.0.1:0".parse().unwrap(), false, false)
            .unwrap();
        let c = f.connect(l.local_addr().unwrap(), None).await.unwrap();
        assert_eq!(SockRef::from(&c).tcp_user_timeout().unwrap(), Some(timeout));
        let (s, _) = l.accept().await.unwrap();
        f.tune(&s).unwrap();
        assert_eq!(SockRef::from(&s).tcp_user_timeout().unwrap(), Some(timeout));
        // Off by default: the kernel's default (0).
        let plain = SocketFactory::default()
            .connect(l.local_addr().unwrap(), None)
            .await
            .unwrap();
        assert_eq!(SockRef::from(&plain).tcp_user_timeout().unwrap(), None);
    }
}
