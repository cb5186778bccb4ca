//! The final report: the RESULT line and the exit status.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use easy_mqtt_core::packet::QoS;

use crate::args::{Options, Scenario};
use crate::broker::Samples;
use crate::clock::secs_between;
use crate::run::{Progress, ShardReport, StopReason};

/// `key=value` pairs of a line (other words are skipped).
pub fn key_values(text: &str) -> HashMap<&str, &str> {
    text.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect()
}

/// Broker samples around the measured phase.
#[derive(Debug, Default, Clone)]
pub struct BrokerStats {
    /// Before any client connected.
    pub before: Option<Samples>,
    /// All clients connected (conn: after --hold).
    pub ready: Option<Samples>,
    /// When the publishers were released.
    pub go: Option<Samples>,
    /// When the run was judged over (before the clients disconnect).
    pub end: Option<Samples>,
    /// Largest sum of the brokers' RSS, and of each.
    pub max_rss_kb: u64,
    pub max_rss_each_kb: Vec<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub shard: ShardReport,
    /// When the publishers were released (0 for conn).
    pub go_ns: u64,
    /// When the run was judged over.
    pub end_ns: u64,
    pub reason: Option<StopReason>,
    pub broker: BrokerStats,
    /// The first errors, word for word.
    pub errors: Vec<String>,
}

impl Report {
    pub fn lost(&self) -> u64 {
        self.shard.outcome.lost()
    }

    pub fn dup(&self) -> u64 {
        self.shard.outcome.dup
    }

    /// Length of the measured phase, in seconds: connect phase for conn;
    /// release to last acknowledgement (or last write at QoS 0) for pub;
    /// release to last delivery otherwise.
    pub fn secs(&self) -> f64 {
        let s = &self.shard;
        let end = match self.options.scenario {
            Scenario::Conn => {
                return secs_between(s.first_connect_ns, s.last_connack_ns);
            }
            Scenario::Pub if self.options.qos == QoS::AtMostOnce => s.last_send_ns,
            Scenario::Pub => s.last_ack_ns,
            _ => s.last_delivery_ns,
        };
        if end == 0 {
            secs_between(self.go_ns, self.end_ns)
        } else {
            secs_between(self.go_ns, end)
        }
    }

    /// Deliveries per second (pub: acknowledged publications per second, or
    /// written at QoS 0; conn: connections per second).
    pub fn rate(&self) -> f64 {
        let secs = self.secs();
        if secs <= 0.0 {
            return 0.0;
        }
        let count = match self.options.scenario {
            Scenario::Conn => self.shard.connected,
            Scenario::Pub if self.options.qos == QoS::AtMostOnce => self.shard.progress.published,
            Scenario::Pub => self.shard.progress.acked,
            _ => self.shard.progress.received,
        };
        count as f64 / secs
    }

    /// The samples the broker CPU of the measured phase is taken between.
    fn cpu_window(&self) -> Option<(&Samples, &Samples)> {
        let b = &self.broker;
        match self.options.scenario {
            Scenario::Conn => Some((b.before.as_ref()?, b.ready.as_ref()?)),
            _ => Some((b.go.as_ref()?, b.end.as_ref()?)),
        }
    }

    fn broker_cpu(&self) -> Option<f64> {
        let (from, to) = self.cpu_window()?;
        Some(to.total.cpu_s - from.total.cpu_s)
    }

    /// CPU seconds of each broker process in the measured phase.
    fn node_cpu(&self) -> Option<Vec<f64>> {
        let (from, to) = self.cpu_window()?;
        Some(
            from.each
                .iter()
                .zip(&to.each)
                .map(|(a, b)| b.cpu_s - a.cpu_s)
                .collect(),
        )
    }

    pub fn bytes_per_conn(&self) -> Option<f64> {
        let before = self.broker.before.as_ref()?.total;
        let after = self.broker.ready.as_ref()?.total;
        if self.shard.connected == 0 {
            return None;
        }
        Some((after.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / self.shard.connected as f64)
    }

    pub fn timed_out(&self) -> bool {
        self.reason == Some(StopReason::TimedOut)
    }

    pub fn result_line(&self) -> String {
        let o = &self.options;
        let s = &self.shard;
        let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
        let mut line = format!("RESULT scenario={}", o.scenario.name());
        let w = &mut line;
        if o.scenario == Scenario::Conn {
            let _ = write!(
                w,
                " connections={} connected={} conn_failures={} secs={:.3} conn_rate={:.0} \
                 p50_us={} p99_us={} p999_us={} max_us={}",
                s.clients,
                s.connected,
                s.conn_failures,
                self.secs(),
                self.rate(),
                us(s.connect_latency.quantile(0.5)),
                us(s.connect_latency.quantile(0.99)),
                us(s.connect_latency.quantile(0.999)),
                us(s.connect_latency.max()),
            );
            if let (Some(before), Some(after)) = (&self.broker.before, &self.broker.ready) {
                let _ = write!(
                    w,
                    " rss_before_kb={} rss_after_kb={}",
                    before.total.rss_kb, after.total.rss_kb
                );
            }
            if let Some(bytes) = self.bytes_per_conn() {
                let _ = write!(w, " bytes_per_conn={bytes:.0}");
            }
        } else {
            let messages = match o.scenario {
                Scenario::Pub => o.publishers as u64 * u64::from(o.messages),
                _ => o.expected_deliveries(),
            };
            let _ = write!(
                w,
                " qos={} subscribers={} publishers={} messages={} size={} published={} acked={} \
                 received={} lost={} dup={} unexpected={} unacked={} awaiting_rel={} secs={:.3} \
                 rate={:.0} \
                 p50_us={} p99_us={} p999_us={} max_us={} conn_failures={} timed_out={}",
                o.qos as u8,
                o.subscribers,
                o.local_publishers(),
                messages,
                o.size,
                s.progress.published,
                s.progress.acked,
                s.progress.received,
                self.lost(),
                self.dup(),
                s.outcome.unexpected,
                s.outcome.unacked,
                s.outcome.awaiting_rel,
                self.secs(),
                self.rate(),
                us(s.latency.quantile(0.5)),
                us(s.latency.quantile(0.99)),
                us(s.latency.quantile(0.999)),
                us(s.latency.max()),
                s.conn_failures,
                self.timed_out(),
            );
            if o.rate > 0.0 {
                let _ = write!(w, " target_rate={:.0}", o.rate);
            }
            if !o.clean_session {
                let _ = write!(w, " clean_session=false");
            }
            // Connection phase: first TCP connect to the last CONNACK (and
            // SUBACK, for subscribers).
            if s.connected > 0 {
                let _ = write!(
                    w,
                    " connect_secs={:.3}",
                    secs_between(s.first_connect_ns, s.last_connack_ns)
                );
            }
            if let Some(ready) = &self.broker.ready {
                let _ = write!(w, " broker_rss_ready_kb={}", ready.total.rss_kb);
            }
            if let Some(end) = &self.broker.end {
                let _ = write!(w, " broker_rss_kb={}", end.total.rss_kb);
            }
            if s.probe_ns > 0 {
                let _ = write!(w, " probe_secs={:.3}", s.probe_ns as f64 / 1e9);
            }
        }
        if self.broker.max_rss_kb > 0 {
            let _ = write!(w, " broker_rss_max_kb={}", self.broker.max_rss_kb);
        }
        if let Some(cpu) = self.broker_cpu() {
            let _ = write!(w, " broker_cpu_s={cpu:.2}");
        }
        // Several broker processes (a cluster): each, in --broker-pid order.
        if self.broker.max_rss_each_kb.len() > 1 {
            let join = |v: Vec<String>| v.join(",");
            if let Some(cpu) = self.node_cpu() {
                let _ = write!(
                    w,
                    " node_cpu_s={}",
                    join(cpu.iter().map(|c| format!("{c:.2}")).collect())
                );
            }
            let _ = write!(
                w,
                " node_rss_max_kb={}",
                join(
                    self.broker
                        .max_rss_each_kb
                        .iter()
                        .map(u64::to_string)
                        .collect()
                )
            );
        }
        if let Some(reason) = self.reason {
            let _ = write!(w, " stop={}", reason.name());
        }
        if o.scenario != Scenario::Conn {
            let _ = write!(w, " bench_cpu_s={:.2}", s.cpu_s);
        }
        let _ = write!(w, " errors={} processes={}", s.errors, o.processes);
        line
    }

    /// 0 clean; 1 connection or protocol failures; 3 a delivery guarantee
    /// broken (loss at QoS 1/2, a duplicate at QoS 2).
    pub fn exit_code(&self) -> u8 {
        if self.shard.conn_failures > 0 || self.shard.errors > 0 {
            return 1;
        }
        let qos = self.options.qos;
        let counts_loss = !matches!(self.options.scenario, Scenario::Conn | Scenario::Pub);
        if counts_loss && qos != QoS::AtMostOnce && self.lost() > 0 {
            return 3;
        }
        if qos == QoS::ExactlyOnce && self.dup() > 0 {
            return 3;
        }
        if self.options.scenario == Scenario::Pub
            && qos != QoS::AtMostOnce
            && self.shard.outcome.unacked > 0
        {
            return 3;
        }
        0
    }

    /// The errors and problems, for stderr.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.errors.iter().map(|e| format!("error: {e}")).collect();
        if self.shard.errors > self.errors.len() as u64 {
            out.push(format!("error: ... {} errors in all", self.shard.errors));
        }
        if let Some(error) = &self.broker.error {
            out.push(format!("warning: broker sampling: {error}"));
        }
        if self.timed_out() {
            out.push(format!(
                "warning: stopped by --timeout ({:?}) before every delivery arrived",
                self.options.timeout
            ));
        }
        if self.lost() > 0 {
            out.push(format!("{} deliveries lost", self.lost()));
        }
        if self.dup() > 0 {
            out.push(format!("{} duplicate deliveries", self.dup()));
        }
        if self.shard.outcome.awaiting_rel > 0 {
            out.push(format!(
                "warning: {} QoS 2 deliveries never got their PUBREL",
                self.shard.outcome.awaiting_rel
            ));
        }
        out
    }
}

/// The live progress line on stderr, once a second, when enabled.
pub struct Display {
    enabled: bool,
    start: Instant,
    last_print: Instant,
    last: Progress,
    printed: bool,
    subscribers: u64,
    publishers: u64,
    clients: u64,
}

impl Display {
    pub fn new(enabled: bool, options: &Options) -> Display {
        let now = Instant::now();
        let clients = match options.scenario {
            Scenario::Conn => options.connections,
            _ => options.subscribers + options.local_publishers(),
        };
        Display {
            enabled,
            start: now,
            last_print: now,
            last: Progress::default(),
            printed: false,
            subscribers: options.subscribers as u64,
            publishers: options.local_publishers() as u64,
            clients: clients as u64,
        }
    }

    pub fn tick(&mut self, progress: &Progress) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_print).as_secs_f64();
        if !self.enabled || elapsed < 1.0 {
            return;
        }
        let per_s = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / elapsed;
        let line = format!(
            "\r[{:6.1}s] connected {}/{}  published {} ({:.0}/s)  received {} ({:.0}/s)  done: subs {}/{} pubs {}/{}   ",
            now.duration_since(self.start).as_secs_f64(),
            progress.connected,
            self.clients,
            progress.published,
            per_s(progress.published, self.last.published),
            progress.received,
            per_s(progress.received, self.last.received),
            progress.subs_done,
            self.subscribers,
            progress.pubs_done,
            self.publishers,
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
        self.printed = true;
        self.last = *progress;
        self.last_print = now;
    }

    pub fn finish(&mut self) {
        if self.printed {
            eprintln!();
            self.printed = false;
        }
    }
}
