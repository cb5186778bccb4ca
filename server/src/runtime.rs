//! What the node needs from a runtime: a clock, timers and a spawner.
//!
//! The binary gives it smol and `async-io` timers ([`SmolRuntime`]); the
//! simulator gives it tokio's paused clock on turmoil hosts. Nothing in the
//! node reads the wall clock or spawns on a global executor directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// A clock, resettable timers, and a way to spawn tasks.
pub trait Runtime: Clone + Send + Sync + 'static {
    type Timer: Send + Unpin;

    fn now(&self) -> Instant;

    /// A timer that fires at `deadline`.
    fn timer(&self, deadline: Instant) -> Self::Timer;

    /// Moves the timer to a new deadline.
    fn reset(&self, timer: &mut Self::Timer, deadline: Instant);

    /// Polls the timer; ready once its deadline has passed.
    fn poll_timer(&self, timer: &mut Self::Timer, cx: &mut Context<'_>) -> Poll<()>;

    /// Runs a task to completion in the background.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

    /// [`Runtime::spawn`] without the box where the runtime allows it: a
    /// connection's task is spawned this way, and the box would be one more
    /// allocation for every connection.
    fn spawn_unboxed<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(Box::pin(task));
    }

    /// Time since the Unix epoch (message id sequences, stored timestamps).
    /// The simulator answers with its own clock, so runs repeat exactly.
    fn unix_time(&self) -> std::time::Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// smol's executor with `async-io` timers.
#[derive(Clone)]
pub struct SmolRuntime {
    executor: Arc<async_executor::Executor<'static>>,
}

impl SmolRuntime {
    pub fn new(executor: Arc<async_executor::Executor<'static>>) -> SmolRuntime {
        SmolRuntime { executor }
    }
}

impl Runtime for SmolRuntime {
    type Timer = async_io::Timer;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timer(&self, deadline: Instant) -> async_io::Timer {
        async_io::Timer::at(deadline)
    }

    fn reset(&self, timer: &mut async_io::Timer, deadline: Instant) {
        timer.set_at(deadline);
    }

    fn poll_timer(&self, timer: &mut async_io::Timer, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(timer).poll(cx).map(|_| ())
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        self.executor.spawn(task).detach();
    }

    fn spawn_unboxed<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.executor.spawn(task).detach();
    }
}

/// Sleeps until `deadline` on the given runtime.
pub async fn sleep_until<R: Runtime>(runtime: &R, deadline: Instant) {
    let mut timer = runtime.timer(deadline);
    futures_lite::future::poll_fn(|cx| runtime.poll_timer(&mut timer, cx)).await
}
