//! The node's runtime on a turmoil host: tokio's paused clock and tokio tasks.
//!
//! Under turmoil every host has its own current-thread tokio runtime whose
//! clock only moves when the simulation steps, so `now` and the timers here
//! are virtual and reproducible.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use easy_mqtt_server::runtime::Runtime;

/// [`Runtime`] backed by `tokio::time` and `tokio::task::spawn`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Timer = Pin<Box<tokio::time::Sleep>>;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn timer(&self, deadline: Instant) -> Self::Timer {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline,
        )))
    }

    fn reset(&self, timer: &mut Self::Timer, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
    }

    fn poll_timer(&self, timer: &mut Self::Timer, cx: &mut Context<'_>) -> Poll<()> {
        timer.as_mut().poll(cx)
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        // Detached: the task ends with its connection or with the host.
        drop(tokio::task::spawn(task));
    }

    fn unix_time(&self) -> std::time::Duration {
        // The simulation's clock, so that message ids repeat run to run.
        turmoil::since_epoch().unwrap_or_default()
    }
}
