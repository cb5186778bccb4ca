//! The record of a simulation run: every client-observed event with its
//! virtual timestamp, in the order it happened.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// A shared, append-only event log. The hosts of one simulation all run on
/// the thread that steps it, so the order of the lines is deterministic;
/// the mutex only makes the log usable from a tracing subscriber.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn new() -> Log {
        Log::default()
    }

    /// Records `what` for `who` at the current host's virtual time.
    pub fn event(&self, who: &str, what: impl fmt::Display) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.event_at(at, who, what);
    }

    /// Records `what` for `who` at a given virtual time (for code that runs
    /// outside a host, such as the scenario's fault injection).
    pub fn event_at(&self, at: Duration, who: &str, what: impl fmt::Display) {
        let line = format!("{:>8.3}s {who:<6} {what}", at.as_secs_f64());
        self.lock().push(line);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A tracing subscriber that writes the broker's own log events (targets
/// `easy_mqtt*`, DEBUG and above) into a [`Log`], so the trace shows what
/// the broker saw (connects, takeovers, keep-alive expiries) between the
/// clients' events. Install it for one run with
/// `tracing::subscriber::with_default`; span fields are not recorded.
#[derive(Debug)]
pub struct LogSubscriber {
    log: Log,
    who: &'static str,
    next_span: AtomicU64,
    /// With [`LogSubscriber::per_host`]: the host names of turmoil's `node`
    /// spans by span id, and the stack of the entered ones.
    hosts: Option<Mutex<HostSpans>>,
}

#[derive(Debug, Default)]
struct HostSpans {
    names: std::collections::HashMap<u64, String>,
    entered: Vec<u64>,
}

impl LogSubscriber {
    pub fn new(log: Log, who: &'static str) -> LogSubscriber {
        LogSubscriber {
            log,
            who,
            next_span: AtomicU64::new(1),
            hosts: None,
        }
    }

    /// Names each event after the turmoil host it happened on (turmoil
    /// runs each host inside a `node` span naming it); `who` outside hosts.
    pub fn per_host(log: Log, who: &'static str) -> LogSubscriber {
        LogSubscriber {
            hosts: Some(Mutex::new(HostSpans::default())),
            ..LogSubscriber::new(log, who)
        }
    }

    fn hosts(&self) -> Option<MutexGuard<'_, HostSpans>> {
        (self.hosts.as_ref()).map(|h| h.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Turmoil's span around each host's tick.
fn is_host_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == "node" && metadata.target().starts_with("turmoil")
}

impl Subscriber for LogSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // `SIM_TRACE=1` adds the cluster module's trace events (inbox, routes).
        let level = if metadata.target().starts_with("easy_mqtt_server::cluster")
            && std::env::var_os("SIM_TRACE").is_some()
        {
            Level::TRACE
        } else {
            Level::DEBUG
        };
        (metadata.target().starts_with("easy_mqtt") && *metadata.level() <= level)
            || (self.hosts.is_some() && is_host_span(metadata))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_span.fetch_add(1, Ordering::Relaxed);
        if is_host_span(span.metadata())
            && let Some(mut hosts) = self.hosts()
        {
            let mut fields = Fields::default();
            span.record(&mut fields);
            let name = fields
                .rest
                .trim_start()
                .trim_start_matches("name=")
                .to_owned();
            hosts.names.insert(id, name);
        }
        Id::from_u64(id)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let host = self.hosts().and_then(|hosts| {
            let id = hosts.entered.last()?;
            hosts.names.get(id).cloned()
        });
        self.log.event(
            host.as_deref().unwrap_or(self.who),
            format_args!(
                "[{}] {}{}",
                event.metadata().level(),
                fields.message,
                fields.rest
            ),
        );
    }

    fn enter(&self, span: &Id) {
        if let Some(mut hosts) = self.hosts()
            && hosts.names.contains_key(&span.into_u64())
        {
            hosts.entered.push(span.into_u64());
        }
    }

    fn exit(&self, span: &Id) {
        if let Some(mut hosts) = self.hosts()
            && hosts.entered.last() == Some(&span.into_u64())
        {
            hosts.entered.pop();
        }
    }

    fn try_close(&self, span: Id) -> bool {
        if let Some(mut hosts) = self.hosts()
            && !hosts.entered.contains(&span.into_u64())
        {
            hosts.names.remove(&span.into_u64());
        }
        true
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// The outcome of one scenario run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub seed: u64,
    /// Every event, timestamped with virtual time.
    pub events: Vec<String>,
    /// Broken invariants; empty when the run passed.
    pub violations: Vec<String>,
    /// The one command that replays this run exactly.
    pub replay: String,
}

impl Trace {
    /// A 64-bit FNV-1a digest of the events, to compare runs at a glance.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.events {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok` when every invariant held, otherwise a report naming the seed,
    /// the violations and the tail of the event log.
    pub fn check(&self) -> Result<(), String> {
        if self.passed() {
            return Ok(());
        }
        let mut report = format!(
            "seed {} failed ({} violation(s)); replay with:\n  {}\n",
            self.seed,
            self.violations.len(),
            self.replay
        );
        for violation in self.violations.iter().take(20) {
            report.push_str("  - ");
            report.push_str(violation);
            report.push('\n');
        }
        // `SIM_EVENTS=<n>` shows more of the log (default: the last 40).
        let shown = std::env::var("SIM_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(40);
        let tail = self.events.len().saturating_sub(shown);
        report.push_str("last events:\n");
        for line in self.events.iter().skip(tail) {
            report.push_str("  ");
            report.push_str(line);
            report.push('\n');
        }
        Err(report)
    }
}
