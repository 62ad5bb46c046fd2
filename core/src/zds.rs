//! ZDS framing (spec 4.1): one protobuf message per `SOCK_SEQPACKET` packet, no length prefix, read with a
//! 1024-byte buffer (a truncated packet or control message is an error), and a network-namespace file descriptor
//! passed with `SCM_RIGHTS` on `AddWorkload` only. Shared by the node agent (server) and ztunnel (client).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Both sides read with a buffer of this size.
pub const MAX_MESSAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("zds socket: {0}")]
    Io(#[from] io::Error),
    #[error("zds: the peer closed the connection")]
    Closed,
    #[error("zds: message truncated (more than {MAX_MESSAGE} bytes, or too many descriptors)")]
    Truncated,
    #[error("zds: undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Takes ownership of a descriptor the kernel just returned.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful accept4/recvmsg(SCM_RIGHTS) in this module, is open, and nothing
    // else holds it; the returned OwnedFd is its only owner and closes it once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Registers a socket with the runtime's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped, which happens only with the AsyncFd that owns it, and its
    // `as_raw_fd` always returns the same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn nonblocking_seqpacket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// One end of a ZDS connection.
#[derive(Debug)]
pub struct ZdsSocket {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsSocket {
    fn new(fd: OwnedFd) -> io::Result<ZdsSocket> {
        Ok(ZdsSocket {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Connects to the node agent's socket.
    pub fn connect(path: &Path) -> io::Result<ZdsSocket> {
        let fd = nonblocking_seqpacket()?;
        // A unix-domain connect completes at once or fails (EAGAIN only when the backlog is full).
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        ZdsSocket::new(fd)
    }

    /// A connected pair, for tests.
    pub fn pair() -> io::Result<(ZdsSocket, ZdsSocket)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((ZdsSocket::new(a)?, ZdsSocket::new(b)?))
    }

    /// Sends one packet, with `fd` attached when given.
    pub async fn send(&self, payload: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let raw = fd.map(|f| [f.as_raw_fd()]);
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|inner| {
                let iov = [IoSlice::new(payload)];
                let cmsgs: Vec<ControlMessage<'_>> = raw
                    .as_ref()
                    .map(|r| vec![ControlMessage::ScmRights(r)])
                    .unwrap_or_default();
                sendmsg::<()>(
                    inner.get_ref().as_raw_fd(),
                    &iov,
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match res {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet and the descriptor that came with it, if any.
    pub async fn recv(&self) -> Result<(Vec<u8>, Option<OwnedFd>), ZdsError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| {
                let mut buf = vec![0u8; MAX_MESSAGE];
                let mut cmsg = nix::cmsg_space!([RawFd; 1]);
                let (n, flags, fds) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let msg = recvmsg::<()>(
                        inner.get_ref().as_raw_fd(),
                        &mut iov,
                        Some(&mut cmsg),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(r) = c {
                                fds.extend(r.into_iter().map(own));
                            }
                        }
                    }
                    (msg.bytes, msg.flags, fds)
                };
                buf.truncate(n);
                Ok((buf, flags, fds))
            });
            let (buf, flags, mut fds) = match res {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
                return Err(ZdsError::Truncated);
            }
            if buf.is_empty() && fds.is_empty() {
                return Err(ZdsError::Closed);
            }
            return Ok((buf, fds.pop()));
        }
    }

    /// Encodes and sends a message.
    pub async fn send_msg(
        &self,
        msg: &impl prost::Message,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        self.send(&msg.encode_to_vec(), fd).await
    }

    /// Receives and decodes a message.
    pub async fn recv_msg<M: prost::Message + Default>(
        &self,
    ) -> Result<(M, Option<OwnedFd>), ZdsError> {
        let (bytes, fd) = self.recv().await?;
        Ok((M::decode(bytes.as_slice())?, fd))
    }
}

impl AsFd for ZdsSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// The node agent's listening socket.
#[derive(Debug)]
pub struct ZdsListener {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsListener {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> io::Result<ZdsListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = nonblocking_seqpacket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        listen(&fd, Backlog::new(8).map_err(io::Error::from)?)?;
        Ok(ZdsListener {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    pub async fn accept(&self) -> io::Result<ZdsSocket> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                accept4(
                    inner.get_ref().as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(fd)) => return ZdsSocket::new(own(fd)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        let f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        f.metadata().unwrap().ino()
    }

    #[tokio::test]
    async fn messages_and_descriptors_cross_the_socket() {
        let (a, b) = ZdsSocket::pair().unwrap();
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        a.send(b"hello", Some(ns.as_fd())).await.unwrap();
        a.send(b"no fd", None).await.unwrap();
        let (bytes, fd) = b.recv().await.unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(inode(fd.unwrap().as_fd()), inode(ns.as_fd()));
        let (bytes, fd) = b.recv().await.unwrap();
        assert_eq!(bytes, b"no fd");
        assert!(fd.is_none());
        drop(a);
        assert!(matches!(b.recv().await, Err(ZdsError::Closed)));
    }

    #[tokio::test]
    async fn oversized_packets_are_errors() {
        let (a, b) = ZdsSocket::pair().unwrap();
        a.send(&[7u8; MAX_MESSAGE + 1], None).await.unwrap();
        assert!(matches!(b.recv().await, Err(ZdsError::Truncated)));
    }

    #[tokio::test]
    async fn listener_accepts_and_replaces_stale_socket_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zds.sock");
        std::fs::write(&path, b"stale").unwrap();
        let l = ZdsListener::bind(&path).unwrap();
        let c = ZdsSocket::connect(&path).unwrap();
        let s = l.accept().await.unwrap();
        c.send_msg(&ambit_proto::zds::Ack { error: "x".into() }, None)
            .await
            .unwrap();
        let (ack, _) = s.recv_msg::<ambit_proto::zds::Ack>().await.unwrap();
        assert_eq!(ack.error, "x");
    }
}
