//! The connection driver: moves bytes between a stream and the connection's
//! state machine, and hands its events to the node. One task per connection,
//! reading and writing at the same time, with no per-message allocation
//! beyond what the codec shares.
//!
//! With an authenticator, a CONNECT's decision is a future that the driver
//! keeps and polls in its own loop: the connection stays in its
//! awaiting-decision state (input paused) meanwhile, other connections are
//! not held up, and a connection that closes before the answer drops it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use easy_mqtt_core::packet::Connect;
use easy_mqtt_core::session::{CloseReason, Event};
use easy_mqtt_core::{ConnectReturnCode, PacketId, QoS, SubscribeReturnCode};
use futures_io::{AsyncRead, AsyncWrite};

use easy_mqtt_core::packet::{Publish, Subscribe};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{BoxFuture, Op, StorageError, StoredSession};

use crate::auth::{AuthDecision, AuthRequest};
use crate::metrics::Metrics;
use crate::node::{Attachment, ClientCtx, Node};
use crate::persist::{ConnectPlan, PreparedRoute};
use crate::runtime::Runtime;
use crate::sessions::{ConnCell, SessionKey, lock};

mod buffers;
mod connect;
mod deadline;
mod durable;
mod hibernation;

use buffers::lend_buffer;
use connect::{PendingAuth, PendingConnect};
use deadline::arm_deadline;
use durable::{After, MAX_STORAGE_BACKLOG, StorageQueue};
use hibernation::{Quiet, hibernate};

/// Bytes read per read call; the buffer grows only when a packet needs more.
const READ_CHUNK: usize = 4096;
/// Encoded bytes gathered before a write, so many small packets leave in one syscall.
const WRITE_BATCH: usize = 64 * 1024;
/// Rounds of work before the driver yields to other tasks.
const BUDGET: usize = 64;
/// How long a closed connection waits for its peer to accept any of the
/// bytes still to be sent before giving them up, so that a peer that stopped
/// reading cannot hold the connection (and its slot) open forever.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// While a CONNECT awaits its authentication, the driver still reads (to
/// notice a peer that goes away) but keeps no more than this unprocessed.
const AUTH_READ_LIMIT: usize = 64 * 1024;

/// How a client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    WebSocket,
    WebSocketTls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::WebSocket => "ws",
            Transport::WebSocketTls => "wss",
        }
    }
}

/// What the transport knows about a connection before its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub peer: Option<SocketAddr>,
    pub transport: Transport,
    /// Common name of a verified TLS client certificate. A `Box<str>`:
    /// every connection's task holds this struct, most with no name.
    pub client_cert_cn: Option<Box<str>>,
}

impl ConnectionInfo {
    pub fn tcp(peer: SocketAddr) -> ConnectionInfo {
        ConnectionInfo {
            peer: Some(peer),
            transport: Transport::Tcp,
            client_cert_cn: None,
        }
    }
}

/// Serves one accepted connection until it closes.
///
/// The task is a hand-written future ([`Serve`]) rather than an `async fn`:
/// an `async fn` keeps its arguments (the stream, the connection info) and
/// the locals of every suspension point beside the driver built from them,
/// which made an idle connection's task hundreds of bytes larger.
pub fn serve<S, R>(
    node: Arc<Node<R>>,
    stream: S,
    info: ConnectionInfo,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Runtime,
{
    Serve::Start { node, stream, info }
}

/// The states of a connection's task (see [`serve`]).
// A task spends its life in `Running`: boxing the driver would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Serve<S, R: Runtime> {
    /// Not polled yet: the connection is opened on the first poll.
    Start {
        node: Arc<Node<R>>,
        stream: S,
        info: ConnectionInfo,
    },
    /// A hibernated connection woken (see `hibernation`), not polled yet:
    /// its driver is rebuilt on the first poll, where no lock is held.
    Resume {
        node: Arc<Node<R>>,
        cell: Arc<ConnCell>,
        stream: S,
        attachment: Option<Attachment>,
        span: Option<Box<tracing::Span>>,
        /// What the socket said, should the session not know.
        peer: Option<SocketAddr>,
    },
    /// Over the connection limit: closing the stream.
    Refusing(S),
    /// Driving the connection, then (`lingering`) closing its stream, for
    /// at most [`CLOSE_LINGER`] (the deadline is then the driver's).
    Running {
        driver: Driver<S, R>,
        /// The connection's span, entered while the task runs; none when
        /// the subscriber disabled it (a `Span` is 40 bytes even then).
        span: Option<Box<tracing::Span>>,
        lingering: bool,
    },
    Done,
}

impl<S, R> Future for Serve<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Serve::Start { .. } => {
                    let Serve::Start { node, stream, info } = std::mem::replace(this, Serve::Done)
                    else {
                        return Poll::Ready(());
                    };
                    *this = Serve::open(node, stream, info);
                }
                Serve::Resume { .. } => {
                    let Serve::Resume {
                        node,
                        cell,
                        stream,
                        attachment,
                        span,
                        peer,
                    } = std::mem::replace(this, Serve::Done)
                    else {
                        return Poll::Ready(());
                    };
                    let info = ConnectionInfo {
                        peer: hibernation::recorded_peer(attachment.as_ref(), &cell).or(peer),
                        transport: Transport::Tcp,
                        client_cert_cn: None,
                    };
                    let mut driver = Driver::new(node, cell, stream, info);
                    driver.attachment = attachment;
                    *this = Serve::Running {
                        driver,
                        span,
                        lingering: false,
                    };
                }
                Serve::Refusing(stream) => {
                    if Pin::new(stream).poll_close(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *this = Serve::Done;
                    return Poll::Ready(());
                }
                Serve::Running {
                    driver,
                    span,
                    lingering,
                } => {
                    let outcome = {
                        let _entered = span.as_deref().map(tracing::Span::enter);
                        driver.poll_run(cx, lingering)
                    };
                    match outcome {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Outcome::Closed) => {
                            driver.node.close_connection(&driver.cell);
                            *this = Serve::Done;
                            return Poll::Ready(());
                        }
                        Poll::Ready(Outcome::Idle) => {
                            if hibernate(this) {
                                // The task ends; the connection lives on.
                                return Poll::Ready(());
                            }
                            // Its waker may have been the sleeper's for a
                            // moment: look again for work.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
                Serve::Done => return Poll::Ready(()),
            }
        }
    }
}

impl<S, R> Serve<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    fn open(node: Arc<Node<R>>, stream: S, info: ConnectionInfo) -> Serve<S, R> {
        let Some(cell) = node.open_connection() else {
            tracing::warn!(peer = ?info.peer, "connection limit reached; closing new connection");
            return Serve::Refusing(stream);
        };
        let span = tracing::info_span!(
            "conn",
            node = %node.config().node_id,
            id = cell.id,
            transport = info.transport.as_str(),
            peer = ?info.peer,
            client_id = tracing::field::Empty
        );
        Serve::Running {
            driver: Driver::new(node, cell, stream, info),
            span: (!span.is_disabled()).then(|| Box::new(span)),
            lingering: false,
        }
    }
}

/// How a driver stopped.
enum Outcome {
    /// The connection is over.
    Closed,
    /// Idle past `hibernate-after` with nothing in progress: it may
    /// hibernate (see [`hibernate`]).
    Idle,
}

struct Driver<S, R: Runtime> {
    node: Arc<Node<R>>,
    cell: Arc<ConnCell>,
    stream: S,
    info: ConnectionInfo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    read_closed: bool,
    /// A flush returned `Pending`: the stream (TLS, WebSocket) still holds
    /// bytes, to be flushed again when the socket can take them.
    flush_pending: bool,
    wants_input: bool,
    closed: bool,
    /// PUBLISH packets came in or went out since the driver last went idle:
    /// the state machine's queues are kept for the next burst.
    busy: bool,
    /// Armed for `deadline`, unless `deadline_moved`.
    timer: Option<R::Timer>,
    deadline: Option<Instant>,
    /// `deadline` changed since the timer was armed. A flag rather than
    /// the armed instant: 16 bytes less in every connection's task.
    deadline_moved: bool,
    /// When the connection is still quiet by then, the driver acts: an
    /// open one that stayed idle hibernates (see `tend_quiet`), a closed
    /// one gives up flushing to a peer that reads nothing. One field for
    /// both: a connection is only ever in one of the two phases.
    quiet_until: Option<Instant>,
    /// What the open phase's current quiet period saw.
    quiet: Quiet,
    attachment: Option<Attachment>,
    /// Boxed, like `pending_connect`: a connection spends a moment in
    /// its CONNECT and the rest of its life without one.
    pending_auth: Option<Box<PendingAuth>>,
    /// A CONNECT waiting for storage (durable node).
    pending_connect: Option<Box<PendingConnect>>,
    /// Storage writes in order; the front one is running.
    storage: StorageQueue,
    /// Boxed: only a failing storage write needs it.
    retry_timer: Option<Box<R::Timer>>,
    /// Closed with storage writes still running: detach once they are done.
    detach_pending: bool,
    /// Boxed, and dropped while the connection idles: most connections
    /// idle most of the time, and should not pay ~70 bytes for these.
    work: Option<Box<Work>>,
}

/// What a driver uses while it handles packets.
#[derive(Default)]
struct Work {
    /// The state machine's events, handled outside its lock.
    events: Vec<Event>,
    /// Reused by routing.
    scratch: Vec<(SessionKey, QoS)>,
    /// Inbound QoS 1/2 publishes routed, to acknowledge.
    acks: Vec<PacketId>,
    /// The cluster outbox is over half its bound: no more input until it
    /// has room (see `ClusterState::send_later`). Here rather than in the
    /// driver: only a publisher ever waits, and it has a `Work`.
    outbox_wait: Option<event_listener::EventListener>,
}

/// The driver's [`Work`], made when first needed. A function of the field
/// rather than a method, so that the driver's other fields stay free.
fn work(slot: &mut Option<Box<Work>>) -> &mut Work {
    slot.get_or_insert_with(Box::default)
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    fn new(node: Arc<Node<R>>, cell: Arc<ConnCell>, stream: S, info: ConnectionInfo) -> Self {
        Driver {
            node,
            cell,
            stream,
            info,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_closed: false,
            flush_pending: false,
            wants_input: true,
            closed: false,
            busy: false,
            timer: None,
            deadline: None,
            deadline_moved: false,
            quiet_until: None,
            quiet: Quiet::Watching,
            attachment: None,
            pending_auth: None,
            pending_connect: None,
            storage: StorageQueue::default(),
            retry_timer: None,
            detach_pending: false,
            work: None,
        }
    }

    /// Drives the connection until it is over, then closes the stream:
    /// closing flushes what a TLS or WebSocket stream still holds, and a
    /// peer that reads nothing gets [`CLOSE_LINGER`], not forever.
    fn poll_run(&mut self, cx: &mut Context<'_>, lingering: &mut bool) -> Poll<Outcome> {
        if !*lingering {
            match self.poll_drive(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Outcome::Idle) => return Poll::Ready(Outcome::Idle),
                Poll::Ready(Outcome::Closed) => {}
            }
            *lingering = true;
            self.set_deadline(Some(self.node.runtime().now() + CLOSE_LINGER));
        }
        if Pin::new(&mut self.stream).poll_close(cx).is_ready() || self.poll_timer(cx) {
            return Poll::Ready(Outcome::Closed);
        }
        Poll::Pending
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        for _ in 0..BUDGET {
            let mut progress = self.poll_auth(cx);
            progress |= self.poll_connect(cx);
            progress |= self.poll_outbox_room(cx);
            progress |= self.poll_storage(cx);
            if self.detach_pending && self.storage.is_empty() {
                self.detach_pending = false;
                if let Some(attachment) = &self.attachment {
                    self.node.detach(attachment, &self.cell);
                }
            }
            let got_input = self.poll_read(cx, &mut progress);
            let now = self.node.runtime().now();
            let timer_due = self.deadline.is_some_and(|d| d <= now);
            self.step(cx, got_input, timer_due, now);
            if self.work.as_ref().is_some_and(|w| !w.events.is_empty()) {
                self.handle_events();
                continue;
            }
            // Writes queued by this step (the journal) start now.
            progress |= self.poll_storage(cx);
            let unsent = self.wbuf.len();
            if !self.storage.iter().any(|b| b.gates) {
                self.poll_write(cx, &mut progress);
            }
            if self.closed {
                if !self.storage.is_empty() || self.detach_pending {
                    // Storage writes finish (or give up) first.
                    if !progress {
                        return Poll::Pending;
                    }
                    continue;
                }
                if self.wbuf.is_empty() {
                    return Poll::Ready(Outcome::Closed);
                }
                if self.quiet_until.is_none() || self.wbuf.len() < unsent {
                    self.quiet_until = Some(now + CLOSE_LINGER);
                }
                match self.quiet_until {
                    Some(linger) if linger <= now => return Poll::Ready(Outcome::Closed),
                    linger => self.set_deadline(linger),
                }
            } else {
                self.tend_quiet(now);
            }
            if self.poll_timer(cx) {
                progress = true;
            }
            if !progress {
                self.release_idle_buffers();
                if self.quiet == Quiet::Drowsy {
                    // One attempt per period.
                    self.quiet = Quiet::Watching;
                    if self.can_hibernate() {
                        return Poll::Ready(Outcome::Idle);
                    }
                }
                return Poll::Pending;
            }
        }
        // Out of budget: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the socket has, if the state machine wants input.
    fn poll_read(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> bool {
        // Awaiting authentication, input is paused but the socket is still
        // read (up to a limit), so that a peer that leaves is noticed and
        // its authentication call dropped.
        let watching = (self.pending_auth.is_some() || self.pending_connect.is_some())
            && self.rbuf.len() < AUTH_READ_LIMIT;
        if self.read_closed || !(self.wants_input || watching) {
            return false;
        }
        let len = self.rbuf.len();
        if len == 0 && self.rbuf.capacity() == 0 {
            self.rbuf = lend_buffer();
        }
        self.rbuf.reserve(READ_CHUNK);
        // Zeroing what we read into is cheap next to the syscall; cap it so
        // a buffer grown for one large packet is not cleared whole each time.
        let spare = (self.rbuf.capacity() - len).min(WRITE_BATCH);
        self.rbuf.resize(len + spare, 0);
        let result = Pin::new(&mut self.stream).poll_read(cx, &mut self.rbuf[len..]);
        match result {
            Poll::Ready(Ok(n)) => {
                self.rbuf.truncate(len + n);
                *progress = true;
                self.mark_active();
                if n == 0 {
                    self.read_closed = true;
                }
                n > 0
            }
            Poll::Ready(Err(error)) => {
                self.rbuf.truncate(len);
                tracing::debug!(%error, "read failed");
                self.read_closed = true;
                *progress = true;
                false
            }
            Poll::Pending => {
                self.rbuf.truncate(len);
                false
            }
        }
    }

    /// One pass over the state machine under its lock: input, timeouts,
    /// completions, events out, bytes out.
    fn step(&mut self, cx: &mut Context<'_>, got_input: bool, timer_due: bool, now: Instant) {
        let mut inner = lock(&self.cell.inner);
        if let Some(work) = &mut self.work {
            for id in work.acks.drain(..) {
                inner.conn.complete_publish(id);
            }
        }
        // Also when nothing new was read: bytes that arrived while input was
        // paused (packets sent right after CONNECT, before the CONNACK) are
        // still waiting in the buffer.
        if got_input || !self.rbuf.is_empty() {
            inner.conn.handle_input(&mut self.rbuf, now);
        }
        if self.read_closed && !inner.conn.is_closed() {
            inner.conn.close(CloseReason::TransportClosed, now);
        }
        if timer_due {
            inner.conn.handle_timeout(now);
            // Armed anew below, for what is due next.
            self.deadline = None;
        }
        while let Some(event) = inner.conn.poll_event() {
            work(&mut self.work).events.push(event);
        }
        if self.wbuf.len() < WRITE_BATCH && inner.conn.has_transmit() {
            if self.wbuf.capacity() == 0 {
                self.wbuf = lend_buffer();
            }
            inner.conn.poll_transmit(&mut self.wbuf, WRITE_BATCH);
            let sent = inner.conn.take_publishes_sent();
            if sent > 0 {
                self.busy = true;
                Metrics::add(&self.node.metrics.publishes_sent, sent);
            }
        }
        let changes = match inner.conn.session_mut() {
            Some(session) if session.is_journaled() => session.take_journal(),
            _ => Vec::new(),
        };
        let backlog: usize = self.storage.iter().map(|b| b.routes).sum();
        self.wants_input = inner.conn.wants_input()
            && backlog < MAX_STORAGE_BACKLOG
            && self.work.as_ref().is_none_or(|w| w.outbox_wait.is_none());
        arm_deadline(
            &mut self.deadline,
            &mut self.deadline_moved,
            inner.conn.poll_timeout(),
        );
        let closed = inner.conn.is_closed();
        if closed && !self.closed {
            // The open phase's quiet deadline is no linger deadline.
            self.quiet_until = None;
        }
        self.closed = closed;
        let register = match &inner.waker {
            Some(waker) => !waker.will_wake(cx.waker()),
            None => true,
        };
        if register {
            inner.waker = Some(cx.waker().clone());
        }
        drop(inner);
        if !changes.is_empty()
            && let Some(attachment) = &self.attachment
        {
            let mut ops = Vec::with_capacity(changes.len());
            let gates = crate::persist::journal_ops(
                &attachment.entry.client_id,
                changes,
                &mut ops,
                self.node.cluster.is_some(),
            );
            self.push_storage(ops, After::Journal, gates);
        }
    }

    fn handle_events(&mut self) {
        let Some(mut events) = self.work.as_mut().map(|w| std::mem::take(&mut w.events)) else {
            return;
        };
        let mut routed_in_memory = false;
        for event in events.drain(..) {
            match event {
                Event::Connect(connect) => match self.node.authenticator() {
                    Some(authenticator) => {
                        let request = self.auth_request(&connect);
                        let decision = authenticator.authenticate(request);
                        self.pending_auth = Some(Box::new((connect, decision)));
                    }
                    None => self.start_connect(connect),
                },
                Event::Publish(publish) => {
                    self.busy = true;
                    let packet_id = publish.packet_id();
                    if self.policy_allows(&publish) {
                        // A p2p message is never retained: only its QoS
                        // makes it durable.
                        if self.node.is_durable()
                            && (packet_id.is_some()
                                || (publish.retain && !self.node.is_direct(&publish.topic)))
                        {
                            // Stored first; acknowledged once stored.
                            self.route_durable(publish);
                            continue;
                        }
                        self.node
                            .publish(publish, &mut work(&mut self.work).scratch);
                        routed_in_memory = true;
                    }
                    if let Some(id) = packet_id {
                        work(&mut self.work).acks.push(id);
                    }
                }
                Event::Subscribe(subscribe) => {
                    let Some(attachment) = &self.attachment else {
                        continue;
                    };
                    let codes = self.node.subscribe(attachment, &self.cell, &subscribe);
                    // In a cluster, the routes of new filters are stored
                    // (and announced) before the SUBACK.
                    let route_ops = self.node.route_ops(
                        (subscribe.filters.iter().map(|f| f.filter.clone())).zip(codes.clone()),
                    );
                    let stored = self.stored_client();
                    if stored.is_some() || !route_ops.is_empty() {
                        let mut ops: Vec<Op> = match stored {
                            Some(client_id) => subscribe
                                .filters
                                .iter()
                                .zip(&codes)
                                .filter_map(|(f, code)| match code {
                                    SubscribeReturnCode::Granted(qos) => Some(Op::Subscribe {
                                        client_id: client_id.clone(),
                                        filter: f.filter.clone(),
                                        qos: *qos,
                                    }),
                                    SubscribeReturnCode::Failure => None,
                                })
                                .collect(),
                            None => Vec::new(),
                        };
                        ops.extend(route_ops);
                        self.push_storage(ops, After::Subscribe { subscribe, codes }, false);
                        continue;
                    }
                    lock(&self.cell.inner)
                        .conn
                        .complete_subscribe(subscribe.packet_id, codes.clone());
                    if codes.iter().any(|c| *c != SubscribeReturnCode::Failure) {
                        self.node.deliver_retained(attachment, &subscribe, &codes);
                    }
                }
                Event::Unsubscribe(unsubscribe) => {
                    if let Some(client_id) = self.stored_client()
                        && let Some(attachment) = &self.attachment
                    {
                        self.node
                            .unsubscribe(attachment, &self.cell, &unsubscribe.filters);
                        let ops = unsubscribe
                            .filters
                            .iter()
                            .map(|filter| Op::Unsubscribe {
                                client_id: client_id.clone(),
                                filter: filter.clone(),
                            })
                            .collect();
                        self.push_storage(ops, After::Unsubscribe(unsubscribe.packet_id), false);
                        continue;
                    }
                    if let Some(attachment) = &self.attachment {
                        self.node
                            .unsubscribe(attachment, &self.cell, &unsubscribe.filters);
                    }
                    lock(&self.cell.inner)
                        .conn
                        .complete_unsubscribe(unsubscribe.packet_id);
                }
                Event::Closed { reason, will } => self.handle_closed(reason, will),
            }
        }
        // Its capacity is kept for the next packets.
        let work = work(&mut self.work);
        work.events = events;
        if routed_in_memory
            && work.outbox_wait.is_none()
            && let Some(cluster) = &self.node.cluster
        {
            work.outbox_wait = cluster.outbox_room();
        }
    }

    /// Waiting for room in the cluster outbox: input resumes once the
    /// outbox's writer says so.
    fn poll_outbox_room(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(work) = self.work.as_mut() else {
            return false;
        };
        let Some(listener) = work.outbox_wait.as_mut() else {
            return false;
        };
        if Pin::new(listener).poll(cx).is_pending() {
            return false;
        }
        work.outbox_wait = None;
        true
    }

    fn handle_closed(&mut self, reason: CloseReason, will: Option<easy_mqtt_core::LastWill>) {
        self.pending_auth = None;
        if let Some(pending) = self.pending_connect.take() {
            self.node.connect_abandoned(&pending.0.client_id);
        }
        let will = match will {
            Some(will) if self.node.is_durable() && self.attachment.is_some() => {
                // Through storage like any publish; detach waits for it.
                self.route_will(will);
                None
            }
            will => will,
        };
        let metrics = &self.node.metrics;
        if matches!(reason, CloseReason::ProtocolError(_)) {
            Metrics::inc(&metrics.protocol_errors);
        }
        match &self.attachment {
            Some(attachment) => {
                match &reason {
                    CloseReason::ProtocolError(_) | CloseReason::KeepAliveTimeout => {
                        tracing::warn!(%reason, "client disconnected")
                    }
                    _ => {
                        tracing::info!(%reason, "client disconnected")
                    }
                }
                if let Some(will) = will {
                    self.node.publish_will(&attachment.entry.client_id, will);
                }
                if self.storage.is_empty() {
                    self.node.detach(attachment, &self.cell);
                } else {
                    // After the writes still running (see `poll_drive`).
                    self.detach_pending = true;
                }
                if let Some(policy) = self.node.policy() {
                    policy.on_disconnected(&self.ctx(attachment), &reason, &self.info);
                }
            }
            None => match &reason {
                CloseReason::Refused(_) | CloseReason::ProtocolError(_) => {
                    tracing::warn!(peer = ?self.info.peer, %reason, "connection closed before session")
                }
                _ => {
                    tracing::debug!(peer = ?self.info.peer, %reason, "connection closed before session")
                }
            },
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, progress: &mut bool) {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    // The peer is gone: nothing more can be sent.
                    self.wbuf.clear();
                    self.read_closed = true;
                    *progress = true;
                    return;
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                    *progress = true;
                    self.mark_active();
                }
                Poll::Pending => break,
            }
        }
        if (wrote || self.flush_pending) && self.wbuf.is_empty() {
            // Needed by TLS and WebSocket streams, which buffer themselves;
            // retried on every wake until done, or their last bytes would
            // wait for the next write.
            self.flush_pending = Pin::new(&mut self.stream).poll_flush(cx).is_pending();
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::Serve;
    use crate::runtime::SmolRuntime;
    use easy_mqtt_transport::TcpConnection;

    /// Every idle TCP connection is one task holding this future: a field
    /// that grows it grows the broker's memory per connection (see
    /// BENCHMARKS.md, "conn"). With async-task's header (40 bytes),
    /// async-executor's scheduler (8) and its wrapper (16), 320 fills
    /// jemalloc's 384-byte size class; one byte more costs 64. Raise the
    /// bound only knowingly.
    #[test]
    fn a_tcp_connections_task_stays_small() {
        assert!(std::mem::size_of::<TcpConnection>() <= 24);
        let task = std::mem::size_of::<Serve<TcpConnection, SmolRuntime>>();
        assert!(task <= 320, "a TCP connection's future is {task} bytes");
    }

    /// Every connection's state machine lives in one `Arc<ConnCell>`: with
    /// the `Arc`'s two counts (16 bytes), 144 fills jemalloc's 160-byte
    /// class; one byte more costs 32. The limits are shared
    /// (`Connection::shared`), the CONNECT deadline is derived, the
    /// session's queue limit is a `u32`, and the outbound window and queue
    /// and the inbound QoS 2 set are boxed, and dropped while empty, to
    /// stay there.
    #[test]
    fn a_connections_state_stays_small() {
        let cell = std::mem::size_of::<crate::sessions::ConnCell>();
        assert!(cell <= 144, "a connection's cell is {cell} bytes");
    }

    /// Every client id has one `Arc<SessionEntry>`: with the `Arc`'s counts,
    /// 176 fills jemalloc's 192-byte class. What only a durable node's
    /// loads and recoveries use is boxed to stay there.
    #[test]
    fn a_session_entry_stays_small() {
        let entry = std::mem::size_of::<crate::sessions::SessionEntry>();
        assert!(entry <= 176, "a session entry is {entry} bytes");
    }
}
