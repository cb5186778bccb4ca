//! Connections and round trips: one *phase* = a list of commands sent as
//! pipelines in one round trip (a long one: in several, one after the
//! other), with timeouts, `TRYAGAIN` retries and the mapping of errors onto
//! [`StorageError`].
//!
//! # Bounded load on the server
//!
//! A phase of more than [`PIPELINE_COMMANDS`] commands is sent as
//! consecutive pipelines of at most that many, each sent once the one
//! before it answered (so their commands still run in order). At most
//! [`PIPELINES_IN_FLIGHT`] pipelines of more than [`SMALL_PIPELINE`]
//! commands are in flight at once, all callers together; a pipeline waits for its turn here, not in the server's
//! socket buffers, and its timeout starts when it is sent: the timeout
//! measures how fast the server answers a bounded request, not how long
//! the queue in front of it is (a routing batch of 19,500 enqueues among
//! 300 others would never be answered within 5 s as one pipeline, and
//! retrying it whole would only add to the queue). Waiting for a turn
//! fails as unavailable only when no pipeline at all was answered for
//! [`KvrocksSettings::timeout`].
//!
//! The same holds for whole calls with more than [`PIPELINE_COMMANDS`] ops
//! (`apply` of a big routing batch): at most [`BIG_CALLS`] prepare and run
//! at once, which bounds the memory their commands and replies take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_lock::{Semaphore, SemaphoreGuard};
use easy_mqtt_core::storage::StorageError;
use futures_lite::future;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Client, ConnectionInfo, IntoConnectionInfo, ServerErrorKind, Value};

use crate::settings::KvrocksSettings;

/// One command and the key that routes it (its first key).
#[derive(Debug)]
pub(crate) struct Command {
    pub name: &'static str,
    pub key: String,
    pub cmd: redis::Cmd,
}

impl Command {
    pub fn new(name: &'static str, key: &str) -> Command {
        Command::with_capacity(name, key, 0, 0)
    }

    /// [`new`](Command::new) with room for `args` more arguments of
    /// `bytes` bytes in all: a command of thousands of members (a body's
    /// holders, a session's removals) grown one argument at a time
    /// reallocated and copied its buffers a dozen times, and the copies
    /// touched fresh pages.
    pub fn with_capacity(name: &'static str, key: &str, args: usize, bytes: usize) -> Command {
        let mut cmd = redis::Cmd::with_capacity(args + 2, name.len() + key.len() + bytes);
        cmd.arg(name).arg(key);
        Command {
            name,
            key: key.to_owned(),
            cmd,
        }
    }

    /// Appends `next`'s members to this command when both remove members
    /// of the same key (`ZREM`, `HDEL`, `SREM`) and the result stays within
    /// [`MAX_MERGED_ARGS`]: one command then does what the two did, in the
    /// same order. False (and nothing changed) otherwise.
    pub fn absorb(&mut self, next: &Command) -> bool {
        if self.name != next.name
            || !matches!(self.name, "ZREM" | "HDEL" | "SREM")
            || self.key != next.key
            || self.cmd.args_iter().len() + next.cmd.args_iter().len() > MAX_MERGED_ARGS + 4
        {
            return false;
        }
        // Cursors and the like are never built by this crate for these
        // commands; checked first so that nothing is half appended.
        let members = || next.cmd.args_iter().skip(2);
        if !members().all(|arg| matches!(arg, redis::Arg::Simple(_))) {
            return false;
        }
        for arg in members() {
            if let redis::Arg::Simple(bytes) = arg {
                self.cmd.arg(bytes);
            }
        }
        true
    }

    pub fn arg<T: redis::ToRedisArgs>(mut self, arg: T) -> Command {
        self.cmd.arg(arg);
        self
    }

    /// [`arg`](Command::arg) in place, for a command grown one item at a time.
    pub fn push_arg<T: redis::ToRedisArgs>(&mut self, arg: T) {
        self.cmd.arg(arg);
    }
}

/// At most this many members in a command merged by [`Command::absorb`]:
/// Redis runs a command to its end, so one huge removal would stall every
/// other client of the server meanwhile.
pub(crate) const MAX_MERGED_ARGS: usize = 512;

/// At most this many commands in one pipeline; a longer phase is split.
pub(crate) const PIPELINE_COMMANDS: usize = 2_000;

/// Pipelines of more than [`SMALL_PIPELINE`] commands in flight at once,
/// all callers together.
const PIPELINES_IN_FLIGHT: usize = 16;

/// A pipeline of at most this many commands (a session's journal batch)
/// is sent without waiting for a turn: there is at most one such call per
/// client connection at a time (the broker applies a connection's batches
/// one after the other), and making thousands of them queue for 16 turns
/// would cap the round trips per second, not the load.
const SMALL_PIPELINE: usize = 64;

/// Calls with more than [`PIPELINE_COMMANDS`] ops running at once.
const BIG_CALLS: usize = 4;

enum Connections {
    Standalone(Vec<ConnectionManager>),
    Cluster(Vec<ClusterConnection>),
}

/// The connection of blocking reads (`XREAD ... BLOCK`): one of their own,
/// since a blocked command holds up every command behind it on a
/// multiplexed connection.
enum Waiter {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

pub(crate) struct Redis {
    connections: Connections,
    /// Taken by one blocking read at a time ([`Redis::run_blocking`]).
    waiter: async_lock::Mutex<Waiter>,
    /// Cleared when the server refused a blocking read: its callers poll.
    blocking: std::sync::atomic::AtomicBool,
    next: AtomicUsize,
    timeout: Duration,
    tryagain_attempts: u32,
    tryagain_backoff: Duration,
    round_trips: AtomicU64,
    commands_sent: AtomicU64,
    /// Turns to send a pipeline ([`PIPELINES_IN_FLIGHT`]).
    pipelines: Semaphore,
    /// Turns to run a big call ([`BIG_CALLS`]).
    big_calls: Semaphore,
    /// When the server last answered a pipeline (or failed it), in
    /// milliseconds since `epoch`.
    last_answer: AtomicU64,
    epoch: Instant,
}

fn unavailable(what: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(what.to_string())
}

fn invalid(what: impl std::fmt::Display) -> StorageError {
    StorageError::Invalid(what.to_string())
}

/// Whether the server refused the password, or wants one that was not
/// given (or got one it does not want): retrying will not help.
fn is_auth_error(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || error
            .to_string()
            .contains("without any password configured")
}

/// A refused password, naming the setting (and the original's key).
fn auth_refused(error: impl std::fmt::Display) -> StorageError {
    invalid(format_args!(
        "password refused (password, mqtt.kvrocks.password): {error}"
    ))
}

fn connection_info(node: &str, password: Option<&str>) -> Result<ConnectionInfo, StorageError> {
    let url = if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    };
    let info = url.as_str().into_connection_info().map_err(|error| {
        invalid(format_args!(
            "invalid node address {node:?} (nodes, mqtt.kvrocks.cluster.nodes): {error}"
        ))
    })?;
    // No CLIENT SETINFO after connecting: not every Kvrocks version knows it.
    let mut redis = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(password) = password {
        redis = redis.set_password(password);
    }
    Ok(info.set_redis_settings(redis))
}

/// Whether a single configured node is a cluster node (then it is only a
/// seed: the cluster client finds the others). `CLUSTER INFO` answers on a
/// cluster node of Kvrocks or Redis and is an error elsewhere. This also
/// checks the password: a refused one fails here, at start.
async fn is_cluster_node(
    manager: &ConnectionManager,
    deadline: Instant,
) -> Result<bool, StorageError> {
    let mut manager = manager.clone();
    let mut probe = redis::cmd("CLUSTER");
    probe.arg("INFO");
    match before(deadline, probe.query_async::<Value>(&mut manager)).await {
        None => Err(unavailable("no answer to CLUSTER INFO")),
        Some(Err(error)) if is_auth_error(&error) => Err(auth_refused(error)),
        Some(Ok(Value::BulkString(info))) => Ok(info.windows(14).any(|w| w == b"cluster_state:")),
        Some(Ok(Value::VerbatimString { text, .. })) => Ok(text.contains("cluster_state:")),
        Some(Ok(_)) => Ok(false),
        Some(Err(error))
            if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() =>
        {
            Err(unavailable(format_args!("connecting: {error}")))
        }
        // "cluster support disabled" or the like: standalone.
        Some(Err(_)) => Ok(false),
    }
}

/// Why connecting to a cluster failed: a configured node that answers but
/// is not a cluster node (a wrong node list: several standalone servers)
/// or that refuses the password is a misconfiguration
/// ([`StorageError::Invalid`]); otherwise `error` stands (unreachable
/// nodes may be starting up).
async fn diagnose_cluster(
    settings: &KvrocksSettings,
    infos: &[ConnectionInfo],
    error: StorageError,
) -> StorageError {
    if matches!(error, StorageError::Invalid(_)) {
        return error;
    }
    let deadline = Instant::now() + settings.connect_timeout;
    for info in infos {
        let Ok(client) = Client::open(info.clone()) else {
            continue;
        };
        let connected = before(deadline, client.get_multiplexed_async_connection()).await;
        let mut connection = match connected {
            Some(Ok(connection)) => connection,
            Some(Err(error)) if is_auth_error(&error) => return auth_refused(error),
            _ => continue,
        };
        let mut probe = redis::cmd("CLUSTER");
        probe.arg("INFO");
        match before(deadline, probe.query_async::<Value>(&mut connection)).await {
            Some(Err(error)) if is_auth_error(&error) => return auth_refused(error),
            Some(Err(error)) if error.code().is_some() => {
                return invalid(format_args!(
                    "{:?} is not a cluster node ({error}); list one node for a \
                     standalone Kvrocks, or only nodes of one cluster \
                     (nodes, mqtt.kvrocks.cluster.nodes)",
                    info.addr().to_string()
                ));
            }
            _ => {}
        }
    }
    error
}

/// Resolves to `None` when `deadline` passes first.
pub(crate) async fn before<T>(deadline: Instant, work: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        Timer::at(deadline).await;
        None
    })
    .await
}

impl Redis {
    pub async fn connect(settings: &KvrocksSettings) -> Result<Redis, StorageError> {
        if settings.nodes.is_empty() {
            return Err(invalid(
                "no Kvrocks node configured (nodes, mqtt.kvrocks.cluster.nodes)",
            ));
        }
        if settings.key_prefix.contains(['{', '}']) {
            return Err(invalid(format_args!(
                "key prefix {:?} must not contain '{{' or '}}'",
                settings.key_prefix
            )));
        }
        let password = settings.password.as_deref().filter(|p| !p.is_empty());
        let infos = settings
            .nodes
            .iter()
            .map(|node| connection_info(node, password))
            .collect::<Result<Vec<_>, _>>()?;
        let count = settings.connections.max(1);
        let deadline = Instant::now() + settings.connect_timeout + settings.timeout;
        // One connection more than asked: the blocking reads' own.
        let standalone = match infos.as_slice() {
            [info] => Some(Self::connect_standalone(settings, info, count + 1, deadline).await?),
            _ => None,
        };
        let (connections, waiter) = match standalone {
            Some(mut managers) if !is_cluster_node(&managers[0], deadline).await? => {
                let waiter = managers
                    .pop()
                    .ok_or_else(|| unavailable("no connection for blocking reads"))?;
                (
                    Connections::Standalone(managers),
                    Waiter::Standalone(waiter),
                )
            }
            // Several nodes, or one seed node of a cluster.
            _ => match Self::connect_cluster(settings, &infos, password, count + 1, deadline).await
            {
                Ok(mut connections) => {
                    let waiter = connections
                        .pop()
                        .ok_or_else(|| unavailable("no connection for blocking reads"))?;
                    (Connections::Cluster(connections), Waiter::Cluster(waiter))
                }
                Err(error) => return Err(diagnose_cluster(settings, &infos, error).await),
            },
        };
        Ok(Redis {
            connections,
            waiter: async_lock::Mutex::new(waiter),
            blocking: std::sync::atomic::AtomicBool::new(true),
            next: AtomicUsize::new(0),
            timeout: settings.timeout,
            tryagain_attempts: settings.tryagain_attempts,
            tryagain_backoff: settings.tryagain_backoff,
            round_trips: AtomicU64::new(0),
            commands_sent: AtomicU64::new(0),
            pipelines: Semaphore::new(PIPELINES_IN_FLIGHT),
            big_calls: Semaphore::new(BIG_CALLS),
            last_answer: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    async fn connect_standalone(
        settings: &KvrocksSettings,
        info: &ConnectionInfo,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<ConnectionManager>, StorageError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.timeout))
            // Reconnect quickly after an outage: a call waiting for the
            // reconnection is bounded by `timeout` anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let mut managers = Vec::with_capacity(count);
        for _ in 0..count {
            let client = Client::open(info.clone()).map_err(unavailable)?;
            let manager = before(
                deadline,
                ConnectionManager::new_with_config(client, config.clone()),
            )
            .await
            .ok_or_else(|| unavailable(format_args!("connecting to {:?} timed out", info.addr())))?
            .map_err(|error| {
                if is_auth_error(&error) {
                    auth_refused(error)
                } else {
                    unavailable(format_args!("connecting: {error}"))
                }
            })?;
            managers.push(manager);
        }
        Ok(managers)
    }

    async fn connect_cluster(
        settings: &KvrocksSettings,
        infos: &[ConnectionInfo],
        password: Option<&str>,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<ClusterConnection>, StorageError> {
        let mut builder = ClusterClient::builder(infos.to_vec())
            .retries(settings.max_redirects)
            .min_retry_wait(10)
            .max_retry_wait(500)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.timeout);
        if let Some(password) = password {
            builder = builder.password(password);
        }
        let client = builder.build().map_err(|error| {
            invalid(format_args!(
                "cluster nodes (nodes, mqtt.kvrocks.cluster.nodes): {error}"
            ))
        })?;
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let connection = before(deadline, client.get_async_connection())
                .await
                .ok_or_else(|| unavailable("connecting to the cluster timed out"))?
                .map_err(|error| {
                    if is_auth_error(&error) {
                        auth_refused(error)
                    } else {
                        unavailable(format_args!("connecting to the cluster: {error}"))
                    }
                })?;
            connections.push(connection);
        }
        Ok(connections)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.connections, Connections::Cluster(_))
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The longest a blocking read may ask the server to hold it: well
    /// within the connection's response timeout.
    pub fn block_limit(&self) -> Duration {
        self.timeout / 2
    }

    /// Runs a blocking read (`XREAD ... BLOCK ms`, holding the server for
    /// at most [`Redis::block_limit`]) on the connection kept for them.
    /// `None` when the caller should poll instead: another blocking read
    /// holds that connection, or the server refused one before (a server
    /// without `BLOCK`; warned once).
    pub async fn run_blocking(&self, cmd: &redis::Cmd) -> Result<Option<Value>, StorageError> {
        if !self.blocking.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(mut waiter) = self.waiter.try_lock() else {
            return Ok(None);
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.commands_sent.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.block_limit() + self.timeout;
        let result = match &mut *waiter {
            Waiter::Standalone(connection) => {
                before(deadline, cmd.query_async::<Value>(connection)).await
            }
            Waiter::Cluster(connection) => {
                before(deadline, cmd.query_async::<Value>(connection)).await
            }
        };
        match result {
            None => Err(unavailable(format_args!(
                "no answer to a blocking read within {:?}",
                self.block_limit() + self.timeout
            ))),
            Some(Ok(value)) => {
                self.answered();
                Ok(Some(value))
            }
            Some(Err(error)) if is_auth_error(&error) => Err(auth_refused(error)),
            Some(Err(error)) if error.code().is_some() && !is_transient(&error) => {
                self.answered();
                self.blocking.store(false, Ordering::Relaxed);
                tracing::warn!(%error, "kvrocks: a blocking read (XREAD BLOCK) was refused; polling instead");
                Ok(None)
            }
            Some(Err(error)) => Err(unavailable(error)),
        }
    }

    /// Round trips (pipelines) sent so far, retries included.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Commands sent so far in pipelines, retries included.
    pub fn commands_sent(&self) -> u64 {
        self.commands_sent.load(Ordering::Relaxed)
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn answered(&self) {
        let now = self.millis_since_epoch(Instant::now());
        self.last_answer.fetch_max(now, Ordering::Relaxed);
    }

    /// A turn from `semaphore`: waits as long as the server keeps
    /// answering, fails when it answered nothing for a whole timeout.
    async fn turn<'s>(&self, semaphore: &'s Semaphore) -> Result<SemaphoreGuard<'s>, StorageError> {
        loop {
            if let Some(guard) = semaphore.try_acquire() {
                return Ok(guard);
            }
            let waiting_since = Instant::now();
            if let Some(guard) = before(waiting_since + self.timeout, semaphore.acquire()).await {
                return Ok(guard);
            }
            if self.last_answer.load(Ordering::Relaxed) < self.millis_since_epoch(waiting_since) {
                return Err(unavailable(format_args!(
                    "no answer within {:?} (waiting for a turn)",
                    self.timeout
                )));
            }
        }
    }

    /// A turn for a call of `size` ops: `None` (no turn needed) unless it
    /// is big (see the module documentation).
    pub async fn big_call(&self, size: usize) -> Result<Option<SemaphoreGuard<'_>>, StorageError> {
        if size <= PIPELINE_COMMANDS {
            return Ok(None);
        }
        self.turn(&self.big_calls).await.map(Some)
    }

    /// Sends `commands` and returns one value per command: in one round
    /// trip, or in consecutive ones of at most [`PIPELINE_COMMANDS`]
    /// commands each (in order: each is sent once the previous answered).
    /// Each round trip must be answered by `deadline` or within the
    /// timeout after it was sent, whichever is later.
    ///
    /// Every phase the backend sends is idempotent as a whole (each command
    /// sets or removes a definite value), so a phase that failed part-way
    /// is simply sent again: on `TRYAGAIN` after a back-off, on a dropped
    /// connection once at once (the connection manager reconnects).
    pub async fn run(
        &self,
        commands: &[Command],
        deadline: Instant,
    ) -> Result<Vec<Value>, StorageError> {
        let mut values = Vec::with_capacity(commands.len());
        for chunk in commands.chunks(PIPELINE_COMMANDS) {
            let prepared = self.prepare(
                chunk
                    .iter()
                    .map(|command| (command.key.as_str(), command.cmd.clone())),
            );
            values.extend(self.run_chunk(chunk, prepared, deadline).await?);
        }
        Ok(values)
    }

    /// [`Redis::run`] of commands the caller is done with: each `redis::Cmd`
    /// is moved into its pipeline rather than copied (a routing batch's
    /// commands are tens of MB; copying them was a twentieth of the broker's
    /// CPU). The commands keep their name and key, for error reports.
    pub async fn run_owned(
        &self,
        mut commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<Value>, StorageError> {
        let mut values = Vec::with_capacity(commands.len());
        for chunk in commands.chunks_mut(PIPELINE_COMMANDS) {
            let prepared = self.prepare(chunk.iter_mut().map(|command| {
                let Command { key, cmd, .. } = command;
                let key: &String = key;
                (key.as_str(), std::mem::take(cmd))
            }));
            values.extend(self.run_chunk(chunk, prepared, deadline).await?);
        }
        Ok(values)
    }

    /// One chunk of [`Redis::run`], prepared.
    async fn run_chunk(
        &self,
        chunk: &[Command],
        prepared: Prepared,
        deadline: Instant,
    ) -> Result<Vec<Value>, StorageError> {
        let _turn = if chunk.len() > SMALL_PIPELINE {
            Some(self.turn(&self.pipelines).await?)
        } else {
            None
        };
        let deadline = deadline.max(Instant::now() + self.timeout);
        self.run_pipeline(chunk, &prepared, deadline).await
    }

    /// [`Redis::run`] for one pipeline.
    async fn run_pipeline(
        &self,
        commands: &[Command],
        prepared: &Prepared,
        deadline: Instant,
    ) -> Result<Vec<Value>, StorageError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut tryagain = 0;
        let mut reconnected = false;
        let mut backoff = self.tryagain_backoff;
        loop {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            self.commands_sent
                .fetch_add(commands.len() as u64, Ordering::Relaxed);
            let Some(result) = before(deadline, self.execute(prepared, commands.len())).await
            else {
                return Err(unavailable(format_args!(
                    "no answer within {:?}",
                    self.timeout
                )));
            };
            self.answered();
            let retry_tryagain = match result {
                Ok(values) => match check_values(commands, values)? {
                    Checked::Values(values) => return Ok(values),
                    Checked::TryAgain(detail) => detail,
                },
                Err(error) if error.kind() == ServerErrorKind::TryAgain.into() => error.to_string(),
                Err(error)
                    if !reconnected
                        && (error.is_unrecoverable_error()
                            || error.is_connection_dropped()
                            || error.is_io_error()) =>
                {
                    reconnected = true;
                    tracing::debug!(%error, "kvrocks: connection lost, sending the phase again");
                    continue;
                }
                Err(error) if is_auth_error(&error) => return Err(auth_refused(error)),
                Err(error) => return Err(unavailable(error)),
            };
            tryagain += 1;
            if tryagain > self.tryagain_attempts {
                return Err(unavailable(format_args!(
                    "still TRYAGAIN after {} retries: {retry_tryagain}",
                    self.tryagain_attempts
                )));
            }
            tracing::debug!(attempt = tryagain, "kvrocks: TRYAGAIN, backing off");
            if before(deadline, Timer::after(backoff)).await.is_none() {
                return Err(unavailable(format_args!(
                    "TRYAGAIN until the deadline: {retry_tryagain}"
                )));
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Packs the commands, each with the key that routes it, into
    /// pipelines once (a retry sends them again).
    fn prepare<'k>(
        &self,
        commands: impl ExactSizeIterator<Item = (&'k str, redis::Cmd)>,
    ) -> Prepared {
        match &self.connections {
            Connections::Standalone(_) => {
                let mut pipe = redis::Pipeline::with_capacity(commands.len());
                for (_, cmd) in commands {
                    pipe.add_command(cmd);
                }
                pipe.ignore_errors();
                Prepared::One(pipe)
            }
            Connections::Cluster(_) => {
                // A cluster pipeline must stay in one slot: one pipeline per
                // slot, all sent at once (the connection multiplexes them).
                let mut slots: std::collections::HashMap<Slot, usize> = Default::default();
                let mut groups: Vec<(Vec<usize>, redis::Pipeline)> = Vec::new();
                for (index, (key, cmd)) in commands.enumerate() {
                    let group = *slots.entry(Slot::for_key(key)).or_insert_with(|| {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        groups.push((Vec::new(), pipe));
                        groups.len() - 1
                    });
                    let (indices, pipe) = &mut groups[group];
                    indices.push(index);
                    pipe.add_command(cmd);
                }
                Prepared::PerSlot(groups)
            }
        }
    }

    async fn execute(&self, prepared: &Prepared, count: usize) -> redis::RedisResult<Vec<Value>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match (&self.connections, prepared) {
            (Connections::Standalone(managers), Prepared::One(pipe)) => {
                let mut connection = managers[turn % managers.len()].clone();
                let values: Vec<Value> = pipe.query_async(&mut connection).await?;
                check_len(values, count)
            }
            (Connections::Cluster(connections), Prepared::PerSlot(groups)) => {
                let connection = &connections[turn % connections.len()];
                let requests = groups.iter().map(|(indices, pipe)| {
                    let mut connection = connection.clone();
                    async move {
                        let values: Vec<Value> = pipe.query_async(&mut connection).await?;
                        Ok::<_, redis::RedisError>((indices, check_len(values, indices.len())?))
                    }
                });
                let answers = futures_util::future::try_join_all(requests).await?;
                let mut values = vec![Value::Nil; count];
                for (indices, answer) in answers {
                    for (index, value) in indices.iter().zip(answer) {
                        values[*index] = value;
                    }
                }
                Ok(values)
            }
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "pipeline prepared for another mode",
            ))),
        }
    }
}

/// A redirection (`MOVED`, `ASK`) or a refusal to serve while the cluster
/// changes (`TRYAGAIN`, `CLUSTERDOWN`): worth retrying, not a refusal of
/// the command.
fn is_transient(error: &redis::RedisError) -> bool {
    matches!(
        error.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "LOADING")
    )
}

/// A node to `SCAN`: the standalone server, or one primary of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanNode {
    Standalone,
    Primary { host: String, port: u16 },
}

impl Redis {
    /// The nodes whose keys a full `SCAN` must visit: the server, or every
    /// primary of the cluster (from `CLUSTER NODES`).
    pub async fn scan_nodes(&self) -> Result<Vec<ScanNode>, StorageError> {
        let Connections::Cluster(connections) = &self.connections else {
            return Ok(vec![ScanNode::Standalone]);
        };
        let mut connection = connections[0].clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::Random,
        );
        let value = before(self.deadline(), connection.route_command(cmd, routing))
            .await
            .ok_or_else(|| unavailable("no answer to CLUSTER NODES"))?
            .map_err(unavailable)?;
        let text = match value {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Value::VerbatimString { text, .. } => text,
            other => return Err(unavailable(format_args!("CLUSTER NODES: {other:?}"))),
        };
        // `<id> <ip:port@cport[,hostname]> <flags> ...`
        let mut nodes = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(_), Some(address), Some(flags)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let address = address.split(['@', ',']).next().unwrap_or_default();
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse() else {
                continue;
            };
            nodes.push(ScanNode::Primary {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            });
        }
        nodes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        nodes.dedup();
        Ok(nodes)
    }

    /// One `SCAN cursor MATCH pattern COUNT count` on `node`: the next
    /// cursor (`0` at the end) and the keys of the page.
    pub async fn scan_page(
        &self,
        node: &ScanNode,
        cursor: &[u8],
        pattern: &str,
        count: usize,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), StorageError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let answer = match (&self.connections, node) {
            (Connections::Standalone(managers), ScanNode::Standalone) => {
                let mut connection = managers[turn % managers.len()].clone();
                before(deadline, cmd.query_async::<Value>(&mut connection)).await
            }
            (Connections::Cluster(connections), ScanNode::Primary { host, port }) => {
                let mut connection = connections[turn % connections.len()].clone();
                let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    },
                );
                before(deadline, connection.route_command(cmd, routing)).await
            }
            _ => return Err(unavailable("SCAN target of another mode")),
        };
        let value = answer
            .ok_or_else(|| unavailable(format_args!("no answer within {:?}", self.timeout)))?
            .map_err(|error| {
                if is_auth_error(&error) {
                    auth_refused(error)
                } else {
                    unavailable(error)
                }
            })?;
        let (next, page) = crate::reply::scan_page("SCAN", value)?;
        Ok((next, crate::reply::members("SCAN", page)?))
    }
}

enum Prepared {
    One(redis::Pipeline),
    PerSlot(Vec<(Vec<usize>, redis::Pipeline)>),
}

fn check_len(values: Vec<Value>, expected: usize) -> redis::RedisResult<Vec<Value>> {
    if values.len() == expected {
        Ok(values)
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "pipeline answer count",
            format!("{} answers for {expected} commands", values.len()),
        )))
    }
}

enum Checked {
    Values(Vec<Value>),
    TryAgain(String),
}

/// Server errors inside a pipeline's answers: `TRYAGAIN` is retried,
/// `WRONGTYPE` means a key holds what this backend never writes there
/// (corrupt), anything else makes the storage unavailable for now.
fn check_values(commands: &[Command], values: Vec<Value>) -> Result<Checked, StorageError> {
    let mut tryagain = None;
    for (command, value) in commands.iter().zip(&values) {
        let Value::ServerError(error) = value else {
            continue;
        };
        if error.kind() == Some(ServerErrorKind::TryAgain) {
            tryagain.get_or_insert_with(|| format!("{}: {error:?}", command.key));
        } else if matches!(error.code(), "NOAUTH" | "WRONGPASS" | "NOPERM") {
            return Err(auth_refused(format_args!("{}: {error:?}", command.key)));
        } else if error.code() == "WRONGTYPE" {
            return Err(StorageError::Corrupt {
                key: command.key.clone(),
                reason: format!("{error:?}"),
            });
        } else {
            return Err(unavailable(format_args!("{}: {error:?}", command.key)));
        }
    }
    Ok(match tryagain {
        Some(detail) => Checked::TryAgain(detail),
        None => Checked::Values(values),
    })
}

#[cfg(test)]
mod tests {
    use super::{Command, MAX_MERGED_ARGS};

    fn args(command: &Command) -> Vec<Vec<u8>> {
        command
            .cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"?".to_vec(),
            })
            .collect()
    }

    #[test]
    fn removals_from_one_key_merge_in_order() {
        let mut first = Command::new("ZREM", "k").arg("a");
        assert!(first.absorb(&Command::new("ZREM", "k").arg("b").arg("c")));
        let expected: Vec<Vec<u8>> = ["ZREM", "k", "a", "b", "c"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(args(&first), expected);
    }

    #[test]
    fn other_commands_keys_or_oversized_removals_do_not_merge() {
        let mut zrem = Command::new("ZREM", "k").arg("a");
        assert!(!zrem.absorb(&Command::new("ZREM", "other").arg("b")));
        assert!(!zrem.absorb(&Command::new("HDEL", "k").arg("b")));
        let mut hset = Command::new("HSET", "k").arg("f").arg("1");
        assert!(!hset.absorb(&Command::new("HSET", "k").arg("g").arg("2")));
        assert_eq!(args(&zrem).len(), 3);

        let mut big = Command::new("HDEL", "k");
        for n in 0..MAX_MERGED_ARGS {
            big.push_arg(n);
        }
        assert!(!big.absorb(&Command::new("HDEL", "k").arg("x").arg("y").arg("z")));
        assert_eq!(args(&big).len(), MAX_MERGED_ARGS + 2);
    }
}
