//! Connections and round trips: one *phase* = a list of commands sent as
//! pipelines in one round trip, with timeouts, `TRYAGAIN` retries and the
//! mapping of errors onto [`StorageError`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_io::Timer;
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
    pub key: String,
    pub cmd: redis::Cmd,
}

impl Command {
    pub fn new(name: &str, key: &str) -> Command {
        let mut cmd = redis::cmd(name);
        cmd.arg(key);
        Command {
            key: key.to_owned(),
            cmd,
        }
    }

    pub fn arg<T: redis::ToRedisArgs>(mut self, arg: T) -> Command {
        self.cmd.arg(arg);
        self
    }
}

enum Connections {
    Standalone(Vec<ConnectionManager>),
    Cluster(Vec<ClusterConnection>),
}

pub(crate) struct Redis {
    connections: Connections,
    next: AtomicUsize,
    timeout: Duration,
    tryagain_attempts: u32,
    tryagain_backoff: Duration,
    round_trips: AtomicU64,
}

fn unavailable(what: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(what.to_string())
}

fn connection_info(node: &str, password: Option<&str>) -> Result<ConnectionInfo, StorageError> {
    let url = if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|error| unavailable(format_args!("invalid node {node:?}: {error}")))?;
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
        Some(Ok(Value::BulkString(info))) => Ok(info.windows(14).any(|w| w == b"cluster_state:")),
        Some(Ok(Value::VerbatimString { text, .. })) => Ok(text.contains("cluster_state:")),
        Some(Ok(_)) => Ok(false),
        Some(Err(error))
            if error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM")) =>
        {
            Err(unavailable(format_args!("connecting: {error}")))
        }
        // "cluster support disabled" or the like: standalone.
        Some(Err(_)) => Ok(false),
    }
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
            return Err(unavailable("no Kvrocks node configured"));
        }
        if settings.key_prefix.contains(['{', '}']) {
            return Err(unavailable(format_args!(
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
        let standalone = match infos.as_slice() {
            [info] => Some(Self::connect_standalone(settings, info, count, deadline).await?),
            _ => None,
        };
        let connections = match standalone {
            Some(managers) if !is_cluster_node(&managers[0], deadline).await? => {
                Connections::Standalone(managers)
            }
            // Several nodes, or one seed node of a cluster.
            _ => Self::connect_cluster(settings, infos, password, count, deadline).await?,
        };
        Ok(Redis {
            connections,
            next: AtomicUsize::new(0),
            timeout: settings.timeout,
            tryagain_attempts: settings.tryagain_attempts,
            tryagain_backoff: settings.tryagain_backoff,
            round_trips: AtomicU64::new(0),
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
            .map_err(|error| unavailable(format_args!("connecting: {error}")))?;
            managers.push(manager);
        }
        Ok(managers)
    }

    async fn connect_cluster(
        settings: &KvrocksSettings,
        infos: Vec<ConnectionInfo>,
        password: Option<&str>,
        count: usize,
        deadline: Instant,
    ) -> Result<Connections, StorageError> {
        let mut builder = ClusterClient::builder(infos)
            .retries(settings.max_redirects)
            .min_retry_wait(10)
            .max_retry_wait(500)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.timeout);
        if let Some(password) = password {
            builder = builder.password(password);
        }
        let client = builder.build().map_err(unavailable)?;
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let connection = before(deadline, client.get_async_connection())
                .await
                .ok_or_else(|| unavailable("connecting to the cluster timed out"))?
                .map_err(|error| unavailable(format_args!("connecting: {error}")))?;
            connections.push(connection);
        }
        Ok(Connections::Cluster(connections))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.connections, Connections::Cluster(_))
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Round trips (phases) sent so far, retries included.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Sends `commands` in one round trip and returns one value per command.
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
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut tryagain = 0;
        let mut reconnected = false;
        let mut backoff = self.tryagain_backoff;
        let prepared = self.prepare(commands);
        loop {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let Some(result) = before(deadline, self.execute(&prepared, commands.len())).await
            else {
                return Err(unavailable(format_args!(
                    "no answer within {:?}",
                    self.timeout
                )));
            };
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

    /// Packs the commands into pipelines once (a retry sends them again).
    fn prepare(&self, commands: &[Command]) -> Prepared {
        match &self.connections {
            Connections::Standalone(_) => {
                let mut pipe = redis::Pipeline::with_capacity(commands.len());
                for command in commands {
                    pipe.add_command(command.cmd.clone());
                }
                pipe.ignore_errors();
                Prepared::One(pipe)
            }
            Connections::Cluster(_) => {
                // A cluster pipeline must stay in one slot: one pipeline per
                // slot, all sent at once (the connection multiplexes them).
                let mut slots: std::collections::HashMap<Slot, usize> = Default::default();
                let mut groups: Vec<(Vec<usize>, redis::Pipeline)> = Vec::new();
                for (index, command) in commands.iter().enumerate() {
                    let group = *slots.entry(Slot::for_key(&command.key)).or_insert_with(|| {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        groups.push((Vec::new(), pipe));
                        groups.len() - 1
                    });
                    let (indices, pipe) = &mut groups[group];
                    indices.push(index);
                    pipe.add_command(command.cmd.clone());
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
