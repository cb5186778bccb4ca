//! [`TcpConnection`]: an accepted TCP connection, as the broker reads and
//! writes it.
//!
//! It is `async-io`'s `Async<TcpStream>` and a flag, rather than
//! `async_net::TcpStream`: that type keeps its socket behind a second `Arc`
//! and two boxed-in readiness futures (about 136 bytes more for every idle
//! connection), and reads until the kernel says `EAGAIN`.

use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;
use futures_io::{AsyncRead, AsyncWrite};

/// An accepted TCP connection.
#[derive(Debug)]
pub struct TcpConnection {
    io: Async<TcpStream>,
    /// The last read returned less than it asked for: the kernel's receive
    /// queue was empty then, so the next read would only fail with `EAGAIN`.
    drained: bool,
}

impl TcpConnection {
    /// Registers an accepted socket with the reactor (and makes it
    /// non-blocking).
    pub fn new(stream: TcpStream) -> io::Result<TcpConnection> {
        Ok(TcpConnection {
            io: Async::new(stream)?,
            drained: false,
        })
    }

    pub(crate) fn from_async(io: Async<TcpStream>) -> TcpConnection {
        TcpConnection { io, drained: false }
    }

    /// Leaves the reactor, keeping the connection open: the socket is
    /// duplicated before `async-io`'s registration (and its descriptor) is
    /// dropped, so that a failure to deregister, which `Async::into_inner`
    /// answers by closing the socket, cannot end the connection. On error
    /// (no descriptor left to duplicate) the connection is given back as it
    /// was.
    pub fn into_socket(self) -> Result<TcpStream, (TcpConnection, io::Error)> {
        match self.io.get_ref().try_clone() {
            Ok(socket) => Ok(socket),
            Err(error) => Err((self, error)),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.get_ref().nodelay()
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(nodelay)
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.drained) {
            // Wait for readability instead of reading. The first poll may
            // report the readiness the previous read already consumed; the
            // second then arms the socket again, and if data came in
            // meanwhile the kernel reports it at once, so nothing is missed.
            // The flag is cleared first: the wake that follows reads.
            if this.io.poll_readable(cx).is_ready() {
                std::task::ready!(this.io.poll_readable(cx))?;
            }
        }
        loop {
            match this.io.get_ref().read(buf) {
                Ok(n) => {
                    this.drained = n < buf.len() && n > 0;
                    return Poll::Ready(Ok(n));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(this.io.poll_readable(cx))?;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for TcpConnection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for TcpConnection {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for TcpConnection {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.io.as_socket()
    }
}
