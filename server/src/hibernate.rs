//! Where hibernating connections wait (`mqtt.server.hibernate-after`).
//!
//! A TCP connection idle for a while gives up its task and its registration
//! with `async-io`'s reactor, about 600 bytes together (see
//! `driver::hibernation`). What can wake it is then watched here, by one
//! process-wide thread with a poller of its own: its socket turning readable,
//! its state machine's next deadline (the keep-alive), and its waker, which
//! whoever gives the connection work (a routed message, a takeover, a kick)
//! calls as before. Each of them wakes the sleeper, which spawns the
//! connection's task again. EMQX hibernates idle connection processes for the
//! same reason: most connections of a fleet are idle most of the time.
//!
//! Lock order: a connection cell, then a sleeper, then the table here. The
//! thread never wakes a sleeper while it holds the table.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};

use crate::sessions::lock;

/// What the hibernator wakes.
pub(crate) trait Sleeper: Send + Sync {
    /// Resumes the connection (at most once; later calls do nothing).
    fn wake_up(self: Arc<Self>);
}

/// The process-wide watcher of hibernating connections.
pub(crate) struct Hibernator {
    poller: Poller,
    table: Mutex<Table>,
    next_key: AtomicUsize,
}

#[derive(Default)]
struct Table {
    /// Every watched sleeper by key (the poller's event key).
    sleepers: HashMap<usize, Arc<dyn Sleeper>>,
    /// Sleepers' deadlines, earliest first.
    deadlines: BTreeSet<(Instant, usize)>,
}

/// A socket watched for a sleeper, with its deadline. Owning the socket is
/// what makes registering it sound: it is deleted from the poller when this
/// is dropped, before the socket closes (see [`Hibernator::watch`]).
pub(crate) struct Watched {
    /// Taken only by `release`, which consumes this.
    socket: Option<TcpStream>,
    key: usize,
    deadline: Option<Instant>,
    /// The socket is in the poller (not when only the deadline is watched).
    registered: bool,
}

impl Watched {
    /// Stops watching: the sleeper is forgotten, the socket deleted from
    /// the poller and given back.
    pub(crate) fn release(mut self) -> Option<TcpStream> {
        self.forget();
        self.socket.take()
    }

    fn forget(&mut self) {
        let Some(hibernator) = HIBERNATOR.get().copied().flatten() else {
            return;
        };
        {
            let mut table = lock(&hibernator.table);
            table.sleepers.remove(&self.key);
            if let Some(deadline) = self.deadline {
                table.deadlines.remove(&(deadline, self.key));
            }
        }
        if let Some(socket) = &self.socket
            && self.registered
        {
            // A failed delete leaves an entry that a duplicate of this
            // socket (the resumed connection's) keeps alive: at most one
            // event for a key that is gone, which the thread ignores.
            let _ = hibernator.poller.delete(socket);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.socket.is_some() {
            self.forget();
        }
    }
}

static HIBERNATOR: OnceLock<Option<&'static Hibernator>> = OnceLock::new();

impl Hibernator {
    /// The hibernator, started on first use; `None` if its poller or its
    /// thread could not be made (reported once; connections then stay
    /// awake).
    pub(crate) fn get() -> Option<&'static Hibernator> {
        *HIBERNATOR.get_or_init(|| match Hibernator::start() {
            Ok(hibernator) => Some(hibernator),
            Err(error) => {
                tracing::error!(%error, "cannot start the hibernation thread; idle connections stay awake");
                None
            }
        })
    }

    fn start() -> std::io::Result<&'static Hibernator> {
        // Leaked on purpose: it lives as long as the process, like
        // `async-io`'s reactor, and its thread needs it `'static`.
        let hibernator: &'static Hibernator = Box::leak(Box::new(Hibernator {
            poller: Poller::new()?,
            table: Mutex::new(Table::default()),
            next_key: AtomicUsize::new(0),
        }));
        std::thread::Builder::new()
            .name("easy-mqtt-hibernate".into())
            .spawn(move || hibernator.run())?;
        Ok(hibernator)
    }

    /// A key no other sleeper has had (keys are never reused, so that a
    /// stale deadline or event cannot wake another connection).
    pub(crate) fn next_key(&self) -> usize {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Watches `socket` (readable) and `deadline` for `sleeper`. On error
    /// (the poller refused the socket) nothing is watched and the socket is
    /// given back.
    pub(crate) fn watch(
        &self,
        key: usize,
        sleeper: Arc<dyn Sleeper>,
        socket: TcpStream,
        deadline: Option<Instant>,
    ) -> Result<Watched, (TcpStream, std::io::Error)> {
        // SAFETY: `polling` requires a source to be deleted from the poller
        // before it is closed. The socket is moved into a `Watched` right
        // after, which owns it from then on and deletes it from the poller
        // whenever it lets it go: in `release` (which hands it back only
        // after the delete) and in `Drop`.
        #[allow(unsafe_code)]
        let added = unsafe { self.poller.add(&socket, Event::readable(key)) };
        if let Err(error) = added {
            return Err((socket, error));
        }
        Ok(self.insert(key, sleeper, socket, deadline, true))
    }

    /// Watches only a deadline for `sleeper` (its socket is not polled).
    pub(crate) fn wake_at(
        &self,
        key: usize,
        sleeper: Arc<dyn Sleeper>,
        socket: TcpStream,
        deadline: Instant,
    ) -> Watched {
        self.insert(key, sleeper, socket, Some(deadline), false)
    }

    fn insert(
        &self,
        key: usize,
        sleeper: Arc<dyn Sleeper>,
        socket: TcpStream,
        deadline: Option<Instant>,
        registered: bool,
    ) -> Watched {
        let earliest = {
            let mut table = lock(&self.table);
            table.sleepers.insert(key, sleeper);
            let earliest = deadline
                .is_some_and(|d| table.deadlines.first().is_none_or(|(first, _)| d < *first));
            if let Some(deadline) = deadline {
                table.deadlines.insert((deadline, key));
            }
            earliest
        };
        if earliest {
            // The thread may be asleep until a later deadline.
            let _ = self.poller.notify();
        }
        Watched {
            socket: Some(socket),
            key,
            deadline,
            registered,
        }
    }

    fn run(&self) {
        let mut events = Events::new();
        let mut due: Vec<Arc<dyn Sleeper>> = Vec::new();
        loop {
            let timeout = lock(&self.table)
                .deadlines
                .first()
                .map(|(deadline, _)| deadline.saturating_duration_since(Instant::now()));
            events.clear();
            if let Err(error) = self.poller.wait(&mut events, timeout) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(%error, "hibernation poller failed; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let now = Instant::now();
            {
                let mut table = lock(&self.table);
                for event in events.iter() {
                    if let Some(sleeper) = table.sleepers.get(&event.key) {
                        due.push(sleeper.clone());
                    }
                }
                while let Some(&(deadline, key)) = table.deadlines.first() {
                    if deadline > now {
                        break;
                    }
                    table.deadlines.pop_first();
                    if let Some(sleeper) = table.sleepers.get(&key) {
                        due.push(sleeper.clone());
                    }
                }
            }
            for sleeper in due.drain(..) {
                sleeper.wake_up();
            }
        }
    }
}
