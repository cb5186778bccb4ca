//! The TCP listener: bound with `SO_REUSEADDR` and a large backlog, and an
//! accept loop that never fails, so running out of file descriptors slows the
//! broker down instead of stopping it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stream::TcpConnection;

/// The listen backlog: connections the kernel completes before we accept them.
pub const LISTEN_BACKLOG: i32 = 1024;

/// The first pause after an accept error that signals resource exhaustion.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);

/// The longest pause; pauses double from [`BACKOFF_MIN`] up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often at most a resource-exhaustion warning is logged.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// A TCP listener whose [`accept`](TcpListener::accept) never fails.
#[derive(Debug)]
pub struct TcpListener {
    inner: Async<std::net::TcpListener>,
    counters: Counters,
    /// When a resource-exhaustion warning was last logged.
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    transient_errors: AtomicU64,
    resource_errors: AtomicU64,
    other_errors: AtomicU64,
    /// Warnings not logged because of the rate limit, since the last one.
    suppressed_warnings: AtomicU64,
}

/// What a [`TcpListener`] has seen since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptStats {
    /// Connections returned by [`TcpListener::accept`].
    pub accepted: u64,
    /// Accept errors retried at once (the peer went away, a signal, ...).
    pub transient_errors: u64,
    /// Accept errors for lack of resources (`EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`), each followed by a back-off.
    pub resource_errors: u64,
    /// Other, unexpected accept errors, each followed by a back-off too.
    pub other_errors: u64,
}

/// How an accept error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// The failed connection is gone but the listener is fine: retry at once.
    Transient,
    /// Out of file descriptors or memory: back off, then retry.
    Exhausted,
    /// Not expected from `accept`: back off too, so a persistent error cannot
    /// turn into a busy loop.
    Other,
}

impl TcpListener {
    /// Binds with `SO_REUSEADDR` and a large backlog ([`LISTEN_BACKLOG`]) via
    /// socket2, then registers the socket with the reactor.
    pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // On Windows SO_REUSEADDR would let another process take the port.
        #[cfg(not(windows))]
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener = Async::new(std::net::TcpListener::from(socket))?;
        Ok(TcpListener {
            inner: listener,
            counters: Counters::default(),
            last_warning: Mutex::new(None),
        })
    }

    /// The address the listener is bound to (with the actual port when bound
    /// to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// Waits for the next connection and sets `TCP_NODELAY` on it.
    ///
    /// Never returns an error. Transient accept errors (`ECONNABORTED`,
    /// `EINTR`, `EPROTO`, ...) are logged at debug and retried at once.
    /// Resource exhaustion (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) is logged
    /// at warn, at most once per second, and retried after a back-off that
    /// doubles from 5 ms up to 1 s and starts again at 5 ms after a success.
    /// Meanwhile the kernel keeps pending connections in the backlog.
    /// Unexpected errors are handled like resource exhaustion.
    ///
    /// Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&self) -> (TcpConnection, SocketAddr) {
        let mut backoff: Option<Duration> = None;
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let stream = TcpConnection::from_async(stream);
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(err) = stream.set_nodelay(true) {
                        // The peer may already be gone; reading will tell.
                        tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
                    }
                    return (stream, peer);
                }
                Err(err) => match classify(&err) {
                    AcceptError::Transient => {
                        self.counters
                            .transient_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %err, "accept failed; retrying");
                    }
                    kind => {
                        let counter = if kind == AcceptError::Exhausted {
                            &self.counters.resource_errors
                        } else {
                            &self.counters.other_errors
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let delay = backoff.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                        backoff = Some(delay);
                        self.warn_limited(&err, kind, delay);
                        Timer::after(delay).await;
                    }
                },
            }
        }
    }

    /// Counts of accepted connections and accept errors so far.
    pub fn stats(&self) -> AcceptStats {
        AcceptStats {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            transient_errors: self.counters.transient_errors.load(Ordering::Relaxed),
            resource_errors: self.counters.resource_errors.load(Ordering::Relaxed),
            other_errors: self.counters.other_errors.load(Ordering::Relaxed),
        }
    }

    /// Logs a warning unless one was logged less than [`WARN_INTERVAL`] ago.
    fn warn_limited(&self, err: &io::Error, kind: AcceptError, delay: Duration) {
        let now = Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
            self.counters
                .suppressed_warnings
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let suppressed = self.counters.suppressed_warnings.swap(0, Ordering::Relaxed);
        let what = if kind == AcceptError::Exhausted {
            "accept failed for lack of resources (raise the open-file limit, `ulimit -n`)"
        } else {
            "accept failed unexpectedly"
        };
        tracing::warn!(
            error = %err,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            similar_errors_not_logged = suppressed,
            "{what}; pending connections wait in the backlog"
        );
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for TcpListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for TcpListener {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.inner.as_socket()
    }
}

/// Error numbers that the standard library has no stable `ErrorKind` for.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENONET: i32 = 64;
    pub const EPROTO: i32 = 71;
    pub const ENOPROTOOPT: i32 = 92;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENOBUFS: i32 = 105;
    pub const EHOSTDOWN: i32 = 112;
}

/// Error numbers that the standard library has no stable `ErrorKind` for
/// (BSD, macOS and other Unix systems).
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENONET: i32 = -1;
    pub const EPROTO: i32 = 92;
    pub const ENOPROTOOPT: i32 = 42;
    pub const EOPNOTSUPP: i32 = 45;
    pub const ENOBUFS: i32 = 55;
    pub const EHOSTDOWN: i32 = 64;
}

/// Winsock error numbers.
#[cfg(windows)]
mod errno {
    pub const ENOMEM: i32 = 8; // ERROR_NOT_ENOUGH_MEMORY
    pub const ENFILE: i32 = -1;
    pub const EMFILE: i32 = 10024; // WSAEMFILE
    pub const ENONET: i32 = -1;
    pub const EPROTO: i32 = -1;
    pub const ENOPROTOOPT: i32 = 10042; // WSAENOPROTOOPT
    pub const EOPNOTSUPP: i32 = 10045; // WSAEOPNOTSUPP
    pub const ENOBUFS: i32 = 10055; // WSAENOBUFS
    pub const EHOSTDOWN: i32 = 10064; // WSAEHOSTDOWN
}

fn classify(err: &io::Error) -> AcceptError {
    use io::ErrorKind as K;

    if let Some(code) = err.raw_os_error() {
        if [errno::EMFILE, errno::ENFILE, errno::ENOBUFS, errno::ENOMEM].contains(&code) {
            return AcceptError::Exhausted;
        }
        // accept(2) on Linux reports pending network errors of the new
        // connection; they are to be retried like EAGAIN.
        if [
            errno::EPROTO,
            errno::ENOPROTOOPT,
            errno::EHOSTDOWN,
            errno::ENONET,
            errno::EOPNOTSUPP,
        ]
        .contains(&code)
        {
            return AcceptError::Transient;
        }
    }
    match err.kind() {
        K::OutOfMemory => AcceptError::Exhausted,
        K::ConnectionAborted
        | K::ConnectionReset
        | K::ConnectionRefused
        | K::Interrupted
        | K::WouldBlock
        | K::TimedOut
        | K::NetworkDown
        | K::NetworkUnreachable
        | K::HostUnreachable
        // EPERM: a firewall rule refused the connection.
        | K::PermissionDenied => AcceptError::Transient,
        _ => AcceptError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(errno::EMFILE)), AcceptError::Exhausted);
        assert_eq!(classify(&os(errno::ENFILE)), AcceptError::Exhausted);
        assert_eq!(classify(&os(errno::ENOBUFS)), AcceptError::Exhausted);
        assert_eq!(classify(&os(errno::ENOMEM)), AcceptError::Exhausted);
        let kind = |k| classify(&io::Error::from(k));
        assert_eq!(
            kind(io::ErrorKind::ConnectionAborted),
            AcceptError::Transient
        );
        assert_eq!(kind(io::ErrorKind::Interrupted), AcceptError::Transient);
        assert_eq!(kind(io::ErrorKind::InvalidInput), AcceptError::Other);
        #[cfg(target_os = "linux")]
        {
            assert_eq!(classify(&os(errno::EPROTO)), AcceptError::Transient);
            assert_eq!(classify(&os(103)), AcceptError::Transient); // ECONNABORTED
            assert_eq!(classify(&os(4)), AcceptError::Transient); // EINTR
            assert_eq!(classify(&os(22)), AcceptError::Other); // EINVAL
            assert_eq!(classify(&os(9)), AcceptError::Other); // EBADF
        }
    }
}
