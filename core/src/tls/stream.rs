//! The established TLS streams, whatever the backend, with the peer identity found during the handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::Identity;

/// `R` is the rustls stream type, `B` the boring one.
pub(super) enum Inner<R, B> {
    Rustls(R),
    #[cfg(feature = "tls-boring")]
    Boring(B),
    #[cfg(not(feature = "tls-boring"))]
    #[allow(dead_code)]
    Unused(std::convert::Infallible, std::marker::PhantomData<B>),
}

#[cfg(feature = "tls-boring")]
pub(super) type BoringStream<IO> = tokio_boring::SslStream<IO>;
#[cfg(not(feature = "tls-boring"))]
pub(super) type BoringStream<IO> = std::marker::PhantomData<IO>;

/// Runs `$body` with `$s` bound to the backend stream, whichever it is.
macro_rules! dispatch {
    ($inner:expr, $s:ident => $body:expr) => {
        match $inner {
            Inner::Rustls($s) => $body,
            #[cfg(feature = "tls-boring")]
            Inner::Boring($s) => $body,
            #[cfg(not(feature = "tls-boring"))]
            Inner::Unused(never, _) => match *never {},
        }
    };
}

macro_rules! tls_stream {
    ($name:ident, $rustls:ty, $doc:literal) => {
        #[doc = $doc]
        pub struct $name<IO> {
            pub(super) inner: Inner<$rustls, BoringStream<IO>>,
            pub(super) peer: Option<Identity>,
            pub(super) alpn: Option<Vec<u8>>,
            /// The key exchange group agreed on.
            pub(super) group: Option<String>,
            /// The peer, to re-check on CRL updates (a CRL is in force: rustls only).
            pub(super) revocation: Option<Box<super::RevocationWatch>>,
        }

        impl<IO> $name<IO> {
            /// The first SPIFFE URI SAN of the peer's leaf certificate.
            pub fn peer_identity(&self) -> Option<Identity> {
                self.peer.clone()
            }

            /// The ALPN protocol agreed on (`Some(b"h2")`), or `None` when the peer offered none.
            pub fn alpn_protocol(&self) -> Option<&[u8]> {
                self.alpn.as_deref()
            }

            /// The key exchange group agreed on, as IANA names it (`X25519MLKEM768`, `X25519`, `P-256`...).
            pub fn key_exchange_group(&self) -> Option<&str> {
                self.group.as_deref()
            }

            /// The watch on this connection's peer when a CRL is in force: whoever serves the connection selects
            /// on [`super::RevocationWatch::revoked`] and tears the connection down when it fires.
            pub fn take_revocation(&mut self) -> Option<Box<super::RevocationWatch>> {
                self.revocation.take()
            }
        }

        impl<IO> std::fmt::Debug for $name<IO> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("peer", &self.peer.as_ref().map(ToString::to_string)).finish()
            }
        }

        impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for $name<IO> {
            fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                dispatch!(&mut self.inner, s => Pin::new(s).poll_read(cx, buf))
            }
        }

        impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for $name<IO> {
            fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                dispatch!(&mut self.inner, s => Pin::new(s).poll_write(cx, buf))
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                dispatch!(&mut self.inner, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }

            fn is_write_vectored(&self) -> bool {
                dispatch!(&self.inner, s => s.is_write_vectored())
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(&mut self.inner, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(&mut self.inner, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

tls_stream!(
    ServerTlsStream,
    tokio_rustls::server::TlsStream<IO>,
    "An accepted workload mTLS connection (server side)."
);
tls_stream!(
    ClientTlsStream,
    tokio_rustls::client::TlsStream<IO>,
    "An established workload mTLS connection (client side)."
);
