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

use std::net::TcpStream;
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
}

/// How often, at most, the thread looks through every sleeper for the
/// deadlines that passed: a keep-alive closes up to this late, and a
/// million sleepers cost a scan a second, not one per deadline.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// The sleepers, by key: a slot's index is its sleeper's key, the poller's
/// event key. 32 bytes a sleeper; a map and an ordered set of deadlines
/// cost about 85.
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    /// Keys of the empty slots, reused first.
    free: Vec<usize>,
    /// The earliest deadline when last looked, if any: when to scan next.
    next_due: Option<Instant>,
    last_scan: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    sleeper: Option<Arc<dyn Sleeper>>,
    deadline: Option<Instant>,
}

impl Table {
    fn insert(&mut self, sleeper: Arc<dyn Sleeper>, deadline: Option<Instant>) -> usize {
        let slot = Slot {
            sleeper: Some(sleeper),
            deadline,
        };
        if let Some(deadline) = deadline {
            self.next_due = Some(self.next_due.map_or(deadline, |due| due.min(deadline)));
        }
        match self.free.pop() {
            Some(key) if key < self.slots.len() => {
                self.slots[key] = slot;
                key
            }
            _ => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.sleeper.take().is_some()
        {
            slot.deadline = None;
            self.free.push(key);
        }
    }

    /// When the thread must look through the deadlines next.
    fn scan_at(&self) -> Option<Instant> {
        let due = self.next_due?;
        Some(match self.last_scan {
            Some(last) => due.max(last + SCAN_EVERY),
            None => due,
        })
    }

    /// The sleepers whose deadline passed (their deadline cleared: each is
    /// woken once), and the next deadline noted.
    fn take_due(&mut self, now: Instant, due: &mut Vec<Arc<dyn Sleeper>>) {
        self.last_scan = Some(now);
        let mut next_due: Option<Instant> = None;
        for slot in &mut self.slots {
            let (Some(sleeper), Some(deadline)) = (&slot.sleeper, slot.deadline) else {
                continue;
            };
            if deadline <= now {
                due.push(sleeper.clone());
                slot.deadline = None;
            } else {
                next_due = Some(next_due.map_or(deadline, |next| next.min(deadline)));
            }
        }
        self.next_due = next_due;
    }
}

/// A socket watched for a sleeper, with its deadline. Owning the socket is
/// what makes registering it sound: it is deleted from the poller when this
/// is dropped, before the socket closes (see [`Hibernator::watch`]).
pub(crate) struct Watched {
    /// Taken only by `release`, which consumes this.
    socket: Option<TcpStream>,
    key: usize,
    /// The socket is in the poller (not when only the deadline is watched).
    registered: bool,
}

impl Watched {
    /// Stops watching: the sleeper is forgotten, the socket deleted from
    /// the poller and given back, with the hibernator (to watch it again).
    /// `None` only if the socket was already taken, which only this does.
    pub(crate) fn release(mut self) -> Option<(TcpStream, &'static Hibernator)> {
        let hibernator = self.forget()?;
        Some((self.socket.take()?, hibernator))
    }

    /// `None` when no hibernator runs (then nothing was watched).
    fn forget(&mut self) -> Option<&'static Hibernator> {
        let hibernator = HIBERNATOR.get().copied().flatten()?;
        if let Some(socket) = &self.socket
            && self.registered
        {
            // Deleted before the key is freed, so that no new event names
            // a key another sleeper may get. One the thread has already
            // fetched may still wake that other sleeper once: a spurious
            // wake, which only makes it run and hibernate again. A failed
            // delete leaves an entry that a duplicate of this socket (the
            // resumed connection's) keeps alive, with the same outcome.
            let _ = hibernator.poller.delete(socket);
        }
        lock(&hibernator.table).remove(self.key);
        Some(hibernator)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.socket.is_some() {
            let _ = self.forget();
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
        }));
        std::thread::Builder::new()
            .name("easy-mqtt-hibernate".into())
            .spawn(move || hibernator.run())?;
        Ok(hibernator)
    }

    /// Watches `socket` (readable) and `deadline` for `sleeper`. On error
    /// (the poller refused the socket) nothing is watched and the socket is
    /// given back.
    pub(crate) fn watch(
        &self,
        sleeper: Arc<dyn Sleeper>,
        socket: TcpStream,
        deadline: Option<Instant>,
    ) -> Result<Watched, (TcpStream, std::io::Error)> {
        let key = self.insert(sleeper, deadline);
        // SAFETY: `polling` requires a source to be deleted from the poller
        // before it is closed. The socket is moved into a `Watched` right
        // after, which owns it from then on and deletes it from the poller
        // whenever it lets it go: in `release` (which hands it back only
        // after the delete) and in `Drop`.
        #[allow(unsafe_code)]
        let added = unsafe { self.poller.add(&socket, Event::readable(key)) };
        if let Err(error) = added {
            lock(&self.table).remove(key);
            return Err((socket, error));
        }
        Ok(Watched {
            socket: Some(socket),
            key,
            registered: true,
        })
    }

    /// Watches only a deadline for `sleeper` (its socket is not polled).
    pub(crate) fn wake_at(
        &self,
        sleeper: Arc<dyn Sleeper>,
        socket: TcpStream,
        deadline: Instant,
    ) -> Watched {
        let key = self.insert(sleeper, Some(deadline));
        Watched {
            socket: Some(socket),
            key,
            registered: false,
        }
    }

    fn insert(&self, sleeper: Arc<dyn Sleeper>, deadline: Option<Instant>) -> usize {
        let (key, earlier) = {
            let mut table = lock(&self.table);
            let before = table.scan_at();
            let key = table.insert(sleeper, deadline);
            (key, table.scan_at() != before)
        };
        if earlier {
            // The thread may be asleep until a later scan.
            let _ = self.poller.notify();
        }
        key
    }

    fn run(&self) {
        let mut events = Events::new();
        let mut due: Vec<Arc<dyn Sleeper>> = Vec::new();
        loop {
            let timeout = lock(&self.table)
                .scan_at()
                .map(|at| at.saturating_duration_since(Instant::now()));
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
                    if let Some(sleeper) =
                        table.slots.get(event.key).and_then(|s| s.sleeper.as_ref())
                    {
                        due.push(sleeper.clone());
                    }
                }
                if table.scan_at().is_some_and(|at| at <= now) {
                    table.take_due(now, &mut due);
                }
            }
            for sleeper in due.drain(..) {
                sleeper.wake_up();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SCAN_EVERY, Sleeper, Table};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Sleeper for Counted {
        fn wake_up(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keys are slots, reused once freed; a passed deadline is due once;
    /// scans come at the earliest deadline, and at most once per
    /// `SCAN_EVERY`.
    #[test]
    fn deadlines_are_scanned_at_most_once_per_period() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut table = Table::default();
        let sleeper: Arc<dyn Sleeper> = Arc::new(Counted::default());
        let a = table.insert(sleeper.clone(), Some(now + ms(10)));
        let b = table.insert(sleeper.clone(), Some(now + ms(3000)));
        let c = table.insert(sleeper.clone(), None);
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(table.scan_at(), Some(now + ms(10)));

        let mut due = Vec::new();
        table.take_due(now + ms(10), &mut due);
        assert_eq!(due.len(), 1, "only the passed deadline");
        assert_eq!(table.next_due, Some(now + ms(3000)));
        due.clear();
        table.take_due(now + ms(20), &mut due);
        assert!(due.is_empty(), "each deadline is due once");

        // An earlier deadline waits for the period since the last scan.
        table.remove(a);
        let d = table.insert(sleeper.clone(), Some(now + ms(30)));
        assert_eq!(d, a, "a freed key is reused");
        assert_eq!(table.scan_at(), Some(now + ms(20) + SCAN_EVERY));

        table.remove(b);
        table.remove(b);
        assert_eq!(table.free, vec![b], "freed once");
        table.take_due(now + ms(2000), &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(table.scan_at(), None, "no deadline left");
    }
}
