//! Storage on the simulated network: a storage host serving the storage
//! and cluster ports over the in-memory backend, and [`RemoteStorage`], the
//! client broker hosts use.
//!
//! The hosts all run in one process, so nothing is serialised: a call puts
//! its request (a closure over the backend) into a shared [`Exchange`]
//! under a fresh handle, and only the handle (8 bytes) travels over a
//! simulated TCP connection to the storage host, which takes the request,
//! runs it and sends the handle back once the answer is in the exchange.
//! The network still decides whether and when each request and each answer
//! arrive: partitions, latency, loss and crashes of either end act on the
//! handles exactly as they would on the bytes of a real protocol.
//!
//! - **Durability**: the backend ([`MemoryStorage`]) lives outside the
//!   storage host, so what it acknowledged survives the host's crash (as
//!   Kvrocks' WAL does). A request runs when the storage host receives it;
//!   an answer lost with a crash or a partition leaves the caller with an
//!   unknown outcome (the write may have happened), which it must handle by
//!   retrying idempotent batches.
//! - **Timeouts**: every call is bounded by [`CALL_TIMEOUT`] of virtual time
//!   (plus the wait of a long-polling inbox read) and then fails with
//!   [`StorageError::Unavailable`]; the connection it used is dropped and
//!   the next call opens a new one.
//! - **Inbox reads** wait on the storage host (as `XREAD BLOCK` does) until
//!   entries arrive or `wait` passes, polling the backend every
//!   [`INBOX_POLL`].

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{
    BusEntry, Claim, Cluster, InboxId, Liveness, Member, Owner, Presence,
};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{
    BoxFuture, Op, SessionSubscriptions, Storage, StorageError, StoredSession,
};
use easy_mqtt_storage_memory::MemoryStorage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use turmoil::net::{TcpListener, TcpStream};

/// The port the storage host listens on.
pub const STORAGE_PORT: u16 = 6379;
/// The bound on one call (virtual time).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a waiting inbox read looks at the inbox again.
pub const INBOX_POLL: Duration = Duration::from_millis(20);
/// Idle connections a [`RemoteStorage`] keeps.
const POOL: usize = 4;

/// A request: what the storage host runs against the backend.
type Request =
    Box<dyn FnOnce(Arc<MemoryStorage>) -> BoxFuture<'static, Box<dyn Any + Send>> + Send>;

/// Requests and answers waiting for the network to carry their handles.
#[derive(Default)]
pub struct Exchange {
    inner: Mutex<ExchangeInner>,
}

#[derive(Default)]
struct ExchangeInner {
    next: u64,
    requests: HashMap<u64, Request>,
    answers: HashMap<u64, Box<dyn Any + Send>>,
    /// Calls that gave up: their answers are not kept.
    abandoned: HashSet<u64>,
}

/// Sizes of an [`Exchange`], to check that it stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests the storage host never received (lost on the way).
    pub requests: usize,
    /// Answers not taken yet.
    pub answers: usize,
    pub abandoned: usize,
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange::default())
    }

    fn lock(&self) -> MutexGuard<'_, ExchangeInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&self, request: Request) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        let handle = inner.next;
        inner.requests.insert(handle, request);
        handle
    }

    fn take_request(&self, handle: u64) -> Option<Request> {
        self.lock().requests.remove(&handle)
    }

    /// Keeps an answer for its caller; false if the caller gave up.
    fn answer(&self, handle: u64, answer: Box<dyn Any + Send>) -> bool {
        let mut inner = self.lock();
        if inner.abandoned.remove(&handle) {
            return false;
        }
        inner.answers.insert(handle, answer);
        true
    }

    fn take_answer(&self, handle: u64) -> Option<Box<dyn Any + Send>> {
        self.lock().answers.remove(&handle)
    }

    /// The caller gave up on `handle`. A request not received yet stays:
    /// it may still arrive and run (a write's outcome is unknown).
    fn abandon(&self, handle: u64) {
        let mut inner = self.lock();
        if inner.answers.remove(&handle).is_none() {
            inner.abandoned.insert(handle);
        }
    }

    pub fn stats(&self) -> ExchangeStats {
        let inner = self.lock();
        ExchangeStats {
            requests: inner.requests.len(),
            answers: inner.answers.len(),
            abandoned: inner.abandoned.len(),
        }
    }
}

/// The backend of a simulation: in memory, outside every host, with times
/// to live measured on the simulated clock.
pub fn new_backend() -> Arc<MemoryStorage> {
    // Virtual time of the host making the call; never goes back (outside a
    // host, the last time seen).
    let last = Arc::new(AtomicU64::new(0));
    Arc::new(MemoryStorage::with_clock(Arc::new(move || {
        let now = turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let seen = last.fetch_max(now, Ordering::Relaxed).max(now);
        Duration::from_nanos(seen)
    })))
}

/// Serves `backend` on the current host until it stops: one task per
/// connection, requests of one connection run in order.
pub async fn serve(exchange: Arc<Exchange>, backend: Arc<MemoryStorage>) -> turmoil::Result {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), STORAGE_PORT);
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        drop(tokio::task::spawn(serve_connection(
            stream,
            exchange.clone(),
            backend.clone(),
        )));
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    exchange: Arc<Exchange>,
    backend: Arc<MemoryStorage>,
) {
    loop {
        let Ok(handle) = stream.read_u64().await else {
            return;
        };
        let Some(request) = exchange.take_request(handle) else {
            // Not ours to answer (cannot happen: each handle is sent once).
            return;
        };
        let answer = request(backend.clone()).await;
        if exchange.answer(handle, answer) && stream.write_u64(handle).await.is_err() {
            return;
        }
    }
}

/// The storage and cluster ports of a broker host, served by the storage
/// host at `addr` (e.g. `"storage:6379"`).
pub struct RemoteStorage {
    exchange: Arc<Exchange>,
    addr: String,
    idle: Mutex<Vec<TcpStream>>,
}

impl RemoteStorage {
    pub fn new(exchange: Arc<Exchange>, addr: &str) -> RemoteStorage {
        RemoteStorage {
            exchange,
            addr: addr.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<TcpStream>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the storage host; `extra` lengthens the timeout (an
    /// inbox read's wait).
    async fn call<T, F>(&self, extra: Duration, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<MemoryStorage>) -> BoxFuture<'static, T> + Send + 'static,
    {
        let request: Request = Box::new(
            move |backend: Arc<MemoryStorage>| -> BoxFuture<'static, Box<dyn Any + Send>> {
                Box::pin(async move { Box::new(f(backend).await) as Box<dyn Any + Send> })
            },
        );
        let handle = self.exchange.submit(request);
        let deadline = Instant::now() + CALL_TIMEOUT + extra;
        match self.round_trip(handle, deadline).await {
            Ok(stream) => {
                let mut idle = self.idle();
                if idle.len() < POOL {
                    idle.push(stream);
                }
            }
            Err(error) => {
                self.exchange.abandon(handle);
                return Err(StorageError::Unavailable(error));
            }
        }
        match self.exchange.take_answer(handle).map(|a| a.downcast::<T>()) {
            Some(Ok(answer)) => Ok(*answer),
            _ => Err(StorageError::Unavailable(format!(
                "no answer stored for request {handle}"
            ))),
        }
    }

    /// Sends `handle` and waits for it to come back; the connection on
    /// success.
    async fn round_trip(&self, handle: u64, deadline: Instant) -> Result<TcpStream, String> {
        let pooled = self.idle().pop();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => match timeout_at(deadline, TcpStream::connect(self.addr.as_str())).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(format!("connect {}: {e}", self.addr)),
                Err(_) => return Err(format!("connect {}: timed out", self.addr)),
            },
        };
        match timeout_at(deadline, stream.write_u64(handle)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("send: {e}")),
            Err(_) => return Err("send: timed out".into()),
        }
        match timeout_at(deadline, stream.read_u64()).await {
            Ok(Ok(back)) if back == handle => Ok(stream),
            Ok(Ok(other)) => Err(format!("answer {other} to request {handle}")),
            Ok(Err(e)) => Err(format!("receive: {e}")),
            Err(_) => Err("receive: timed out".into()),
        }
    }
}

/// `Err(Invalid)` when the backend does not share cluster state.
fn no_cluster() -> StorageError {
    StorageError::Invalid("the backend has no cluster state".into())
}

impl Storage for RemoteStorage {
    fn name(&self) -> &'static str {
        "sim-remote"
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.call(Duration::ZERO, move |b| {
                Box::pin(async move { b.apply(ops).await })
            })
            .await?
        })
    }

    fn load_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSession>, StorageError>> {
        let client_id = client_id.to_owned();
        Box::pin(async move {
            self.call(Duration::ZERO, move |b| {
                Box::pin(async move { b.load_session(&client_id).await })
            })
            .await?
        })
    }

    fn load_subscriptions(&self) -> BoxFuture<'_, Result<Vec<SessionSubscriptions>, StorageError>> {
        Box::pin(async move {
            self.call(Duration::ZERO, |b| {
                Box::pin(async move { b.load_subscriptions().await })
            })
            .await?
        })
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StorageError>> {
        Box::pin(async move {
            self.call(Duration::ZERO, |b| {
                Box::pin(async move { b.load_retained().await })
            })
            .await?
        })
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }
}

/// Runs one cluster call on the backend's [`Cluster`].
macro_rules! cluster_call {
    ($self:ident, $extra:expr, |$c:ident| $body:expr) => {
        Box::pin(async move {
            $self
                .call($extra, move |b| {
                    Box::pin(async move {
                        match b.cluster() {
                            Some($c) => $body.await,
                            None => Err(no_cluster()),
                        }
                    })
                })
                .await?
        })
    };
}

impl Cluster for RemoteStorage {
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        incarnation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Liveness, StorageError>> {
        let node = node.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.heartbeat(
            &node,
            incarnation,
            ttl
        ))
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        cluster_call!(self, Duration::ZERO, |c| c.members())
    }

    fn claim_adoption<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
        by: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        let (dead, by) = (dead.to_owned(), by.to_owned());
        cluster_call!(self, Duration::ZERO, |c| c.claim_adoption(
            &dead,
            incarnation,
            &by
        ))
    }

    fn adopter<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<Option<ByteStr>, StorageError>> {
        let dead = dead.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.adopter(&dead, incarnation))
    }

    fn forget_member<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        let node = node.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.forget_member(&node))
    }

    fn claim_owner<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StorageError>> {
        let (client_id, node) = (client_id.to_owned(), node.to_owned());
        cluster_call!(self, Duration::ZERO, |c| c.claim_owner(&client_id, &node))
    }

    fn owner<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Owner>, StorageError>> {
        let client_id = client_id.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.owner(&client_id))
    }

    fn owned_by<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        let node = node.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.owned_by(&node))
    }

    fn responsible<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        let client_id = client_id.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.responsible(&client_id))
    }

    fn presence<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Presence>, StorageError>> {
        let node = node.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.presence(&node))
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<(ByteStr, Vec<ByteStr>)>, StorageError>> {
        cluster_call!(self, Duration::ZERO, |c| c.routes())
    }

    fn read_inbox<'a>(
        &'a self,
        node: &'a str,
        after: Option<InboxId>,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<(InboxId, BusEntry)>, StorageError>> {
        let node = node.to_owned();
        cluster_call!(self, wait, |c| async {
            // Long poll on the storage host, as XREAD BLOCK does.
            let until = Instant::now() + wait;
            loop {
                let entries = c.read_inbox(&node, after, max, Duration::ZERO).await?;
                if !entries.is_empty() || Instant::now() >= until {
                    return Ok(entries);
                }
                tokio::time::sleep(INBOX_POLL.min(until - Instant::now())).await;
            }
        })
    }

    fn get_record<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        let (space, key) = (space.to_owned(), key.to_owned());
        cluster_call!(self, Duration::ZERO, |c| c.get_record(&space, &key))
    }

    fn scan_records<'a>(
        &'a self,
        space: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(ByteStr, Bytes)>, StorageError>> {
        let space = space.to_owned();
        cluster_call!(self, Duration::ZERO, |c| c.scan_records(&space))
    }

    fn read_log<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StorageError>> {
        let (space, key) = (space.to_owned(), key.to_owned());
        cluster_call!(self, Duration::ZERO, |c| c.read_log(&space, &key, max))
    }
}
