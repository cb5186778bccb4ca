//! Hibernation of an idle TCP connection (`mqtt.server.hibernate-after`).
//!
//! The connection's task ends and leaves a [`Sleeping`] record behind: the
//! node, the connection's cell and session, its span and its socket, now
//! watched by the hibernator (`crate::hibernate`) instead of `async-io`'s
//! reactor. The record is also the connection's waker, so whoever gives it
//! work wakes it as before; waking it spawns a new task around the same
//! state machine. Nothing else changes: the connection stays open and
//! counted, its session attached.

use std::any::{Any, TypeId};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use easy_mqtt_transport::TcpConnection;
use futures_io::{AsyncRead, AsyncWrite};

use super::{Driver, Serve, arm_deadline};
use crate::hibernate::{Hibernator, Sleeper, Watched};
use crate::metrics::Metrics;
use crate::node::{Attachment, Node};
use crate::runtime::Runtime;
use crate::sessions::{ConnCell, SessionEntry, lock};

/// How long a connection that could not be resumed (the reactor refused its
/// socket) waits before the next attempt.
const RESUME_RETRY: Duration = Duration::from_secs(1);

/// A hibernating connection, and its waker.
pub(super) struct Sleeping<R: Runtime> {
    state: Mutex<Sleep<R>>,
}

enum Sleep<R: Runtime> {
    /// Being put to sleep: a wake now is remembered as `Woken`.
    Falling,
    /// Woken while falling asleep: resumed as soon as it lies down.
    Woken,
    Asleep(Parked<R>),
    /// Resumed: later wakes were meant for the task, which has a waker of
    /// its own from its first poll on.
    Awake,
}

/// What a hibernating connection keeps.
struct Parked<R: Runtime> {
    node: Arc<Node<R>>,
    cell: Arc<ConnCell>,
    attachment: Option<Attachment>,
    span: Option<Box<tracing::Span>>,
    watched: Watched,
}

/// Puts the idle connection of a running task to sleep: true when it did
/// (the slot is then empty); false when it cannot sleep now (work arrived,
/// no descriptor to spare), leaving the slot as it was.
fn hibernate_tcp<R: Runtime>(slot: &mut Option<Serve<TcpConnection, R>>) -> bool {
    let Some(Serve::Running { driver, .. }) = slot.as_mut() else {
        return false;
    };
    let Some(hibernator) = Hibernator::get() else {
        return false;
    };
    let sleeping = Arc::new(Sleeping {
        state: Mutex::new(Sleep::Falling),
    });
    // Under the state machine's lock, which whoever gives it work takes
    // too: either the work is seen here, or it wakes the sleeper.
    let deadline = {
        let mut inner = lock(&driver.cell.inner);
        if !inner.conn.is_quiet() {
            return false;
        }
        inner.waker = Some(Waker::from(sleeping.clone()));
        inner.conn.poll_timeout()
    };
    let Some(Serve::Running {
        mut driver, span, ..
    }) = slot.take()
    else {
        return false;
    };
    let socket = match driver.stream.into_socket() {
        Ok(socket) => socket,
        Err((stream, error)) => {
            driver.stream = stream;
            // The task registers its own waker again when it runs.
            lock(&driver.cell.inner).waker = None;
            tracing::debug!(%error, "cannot hibernate the connection now");
            *slot = Some(Serve::Running {
                driver,
                span,
                lingering: false,
            });
            return false;
        }
    };
    let Driver {
        node,
        cell,
        attachment,
        ..
    } = driver;
    Metrics::inc(&node.metrics.connections_hibernated);
    in_span(&span, || tracing::debug!("connection hibernates"));
    let watched = watch(hibernator, &sleeping, socket, deadline);
    sleeping.lie_down(Parked {
        node,
        cell,
        attachment,
        span,
        watched,
    });
    true
}

/// The peer address the session recorded at CONNECT, while the session is
/// still this connection's: the socket may not know it any more (a peer
/// that reset the connection while it slept), and the disconnection's
/// events and logs want it.
pub(super) fn recorded_peer(
    attachment: Option<&Attachment>,
    cell: &Arc<ConnCell>,
) -> Option<SocketAddr> {
    let inner = lock(&attachment?.entry.inner);
    if !SessionEntry::is_attached(&inner, cell) {
        return None;
    }
    inner.connection.as_ref()?.info.peer
}

/// Runs `log` in the connection's span (entered by its task when it runs).
fn in_span(span: &Option<Box<tracing::Span>>, log: impl FnOnce()) {
    match span.as_deref() {
        Some(span) => span.in_scope(log),
        None => log(),
    }
}

/// Watches the socket and the deadline; when the poller refuses the socket,
/// the sleeper is due at once instead (and resumed: a connection is never
/// left unwatched).
fn watch<R: Runtime>(
    hibernator: &'static Hibernator,
    sleeping: &Arc<Sleeping<R>>,
    socket: TcpStream,
    deadline: Option<Instant>,
) -> Watched {
    let sleeper: Arc<dyn Sleeper> = sleeping.clone();
    match hibernator.watch(sleeper.clone(), socket, deadline) {
        Ok(watched) => watched,
        Err((socket, error)) => {
            tracing::warn!(%error, "cannot watch a hibernating connection; resuming it");
            hibernator.wake_at(sleeper, socket, Instant::now())
        }
    }
}

impl<R: Runtime> Sleeping<R> {
    fn lie_down(self: &Arc<Self>, parked: Parked<R>) {
        let mut state = lock(&self.state);
        match *state {
            Sleep::Woken => {
                *state = Sleep::Awake;
                drop(state);
                parked.resume(self);
            }
            _ => *state = Sleep::Asleep(parked),
        }
    }
}

impl<R: Runtime> Parked<R> {
    /// Spawns the connection's task again.
    fn resume(self, sleeping: &Arc<Sleeping<R>>) {
        let Parked {
            node,
            cell,
            attachment,
            span,
            watched,
        } = self;
        let Some((socket, hibernator)) = watched.release() else {
            // Not reachable: only `release` takes the socket, and it
            // consumes the record.
            tracing::error!("a hibernating connection lost its socket");
            return;
        };
        // The reactor gets a duplicate: when it refuses one, it drops it,
        // and this socket stays to try again with.
        match socket.try_clone().and_then(TcpConnection::new) {
            Ok(stream) => {
                drop(socket);
                Metrics::dec(&node.metrics.connections_hibernated);
                let runtime = node.runtime().clone();
                // The session's lock is not taken here (a waker may be
                // called under a connection's lock): the task looks up the
                // recorded peer on its first poll.
                let peer = stream.peer_addr().ok();
                runtime.spawn_unboxed(Serve::Resume {
                    node,
                    cell,
                    stream,
                    attachment,
                    span,
                    peer,
                });
            }
            Err(error) => {
                in_span(
                    &span,
                    || tracing::warn!(%error, "cannot resume a hibernating connection; retrying in 1 s"),
                );
                *lock(&sleeping.state) = Sleep::Falling;
                let watched =
                    hibernator.wake_at(sleeping.clone(), socket, Instant::now() + RESUME_RETRY);
                sleeping.lie_down(Parked {
                    node,
                    cell,
                    attachment,
                    span,
                    watched,
                });
            }
        }
    }
}

impl<R: Runtime> Wake for Sleeping<R> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let parked = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, Sleep::Awake) {
                Sleep::Asleep(parked) => parked,
                Sleep::Falling | Sleep::Woken => {
                    *state = Sleep::Woken;
                    return;
                }
                Sleep::Awake => return,
            }
        };
        parked.resume(self);
    }
}

impl<R: Runtime> Sleeper for Sleeping<R> {
    fn wake_up(self: Arc<Self>) {
        self.wake_by_ref();
    }
}

/// What a driver saw during its current quiet period (see
/// `Driver::tend_quiet`). One byte: it shares the driver's padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// No byte in or out yet.
    Watching,
    /// Bytes came in or went out.
    Active,
    /// The last whole period went by without a byte: hibernate once
    /// nothing else is left to do.
    Drowsy,
}

/// Hibernates a running task's idle connection if its stream can (a plain
/// TCP connection: the others keep state of their own in user space): true
/// when it did, the task is then `Done`; false leaves the task as it was.
/// The stream is told at run time rather than through a bound on every
/// stream type, so that the TLS, WebSocket and simulated streams need
/// nothing: the check is a comparison of type ids.
pub(super) fn hibernate<S, R>(serve: &mut Serve<S, R>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    let mut slot = Some(std::mem::replace(serve, Serve::Done));
    let hibernated = match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<Serve<easy_mqtt_transport::TcpConnection, R>>>()
    {
        Some(tcp) => hibernate_tcp(tcp),
        None => false,
    };
    if let Some(back) = slot {
        *serve = back;
    }
    hibernated
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    /// `hibernate-after`, for a stream that can hibernate (see [`hibernate`]).
    pub(super) fn hibernate_after(&self) -> Option<std::time::Duration> {
        if TypeId::of::<S>() == TypeId::of::<easy_mqtt_transport::TcpConnection>() {
            self.node.config().hibernate_after
        } else {
            None
        }
    }

    /// Keeps the open phase's quiet deadline: `hibernate-after` from when
    /// the driver first runs, then moved on by a period each time it
    /// passes; a period without a byte in or out makes the driver drowsy.
    /// So a connection hibernates one to two periods after its last byte,
    /// and a busy one pays a timer wake per period, not a re-arm per packet.
    pub(super) fn tend_quiet(&mut self, now: Instant) {
        let Some(after) = self.hibernate_after() else {
            return;
        };
        match self.quiet_until {
            Some(quiet) if quiet > now => {}
            Some(_) => {
                self.quiet = match self.quiet {
                    Quiet::Active => Quiet::Watching,
                    Quiet::Watching | Quiet::Drowsy => Quiet::Drowsy,
                };
                self.quiet_until = Some(now + after);
            }
            None => {
                self.quiet = Quiet::Watching;
                self.quiet_until = Some(now + after);
            }
        }
        arm_deadline(
            &mut self.deadline,
            &mut self.deadline_moved,
            self.quiet_until,
        );
    }

    pub(super) fn mark_active(&mut self) {
        self.quiet = Quiet::Active;
    }

    /// Nothing in progress but waiting for the peer: what the driver holds
    /// can be let go and rebuilt (the state machine's own check is made
    /// under its lock, see `hibernation::hibernate`).
    pub(super) fn can_hibernate(&self) -> bool {
        !self.closed
            && !self.read_closed
            && !self.flush_pending
            && self.wants_input
            && self.attachment.is_some()
            && self.pending_auth.is_none()
            && self.pending_connect.is_none()
            && self.storage.is_empty()
            && !self.detach_pending
            && self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && self.work.is_none()
    }
}
