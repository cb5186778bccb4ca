//! The driver's one timer: the earliest of the state machine's deadline
//! (keep-alive, CONNECT timeout, close linger) and the quiet period of
//! hibernation, re-armed only when it really moves.

use std::task::Context;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

use super::Driver;
use crate::runtime::Runtime;

/// Sets a driver's deadline, noting whether it moved. A function of the
/// fields, so that it can run while the connection's lock is held.
pub(super) fn move_deadline(
    slot: &mut Option<Instant>,
    moved: &mut bool,
    deadline: Option<Instant>,
) {
    if *slot != deadline {
        *slot = deadline;
        *moved = true;
    }
}

/// Arms a driver's deadline for the state machine's `wanted` one, unless an
/// earlier one is armed already. The keep-alive deadline moves with every
/// packet received, and re-arming an `async-io` timer wakes its reactor (an
/// eventfd write and a waker clone): so the timer only ever moves earlier.
/// One armed too early fires, `handle_timeout` finds nothing due, and the
/// timer is armed again for the deadline of then (see `step`): at most one
/// spurious wake per keep-alive period instead of a re-arm per packet.
pub(super) fn arm_deadline(slot: &mut Option<Instant>, moved: &mut bool, wanted: Option<Instant>) {
    match (*slot, wanted) {
        (Some(armed), Some(wanted)) if armed <= wanted => {}
        (Some(_), None) => {}
        (_, wanted) => move_deadline(slot, moved, wanted),
    }
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    /// Arms the timer for the state machine's deadline; true if it fired.
    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let runtime = self.node.runtime();
        let moved = std::mem::take(&mut self.deadline_moved);
        let timer = match &mut self.timer {
            // Re-arming costs the reactor a wake-up (an eventfd write with
            // async-io), so only when the deadline really moved.
            Some(timer) => {
                if moved {
                    runtime.reset(timer, deadline);
                }
                timer
            }
            None => self.timer.insert(runtime.timer(deadline)),
        };
        let fired = runtime.poll_timer(timer, cx).is_ready();
        if fired {
            // A one-shot timer that fired may never fire again; the next
            // deadline gets a fresh one.
            self.timer = None;
        }
        fired
    }

    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        move_deadline(&mut self.deadline, &mut self.deadline_moved, deadline);
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::arm_deadline;
    use std::time::{Duration, Instant};

    /// The armed deadline moves earlier, never later: a later one waits
    /// for the early timer to fire (see `step`).
    #[test]
    fn the_armed_deadline_only_moves_earlier() {
        let now = Instant::now();
        let (early, late) = (now + Duration::from_secs(1), now + Duration::from_secs(2));
        let (mut armed, mut moved) = (None, false);
        arm_deadline(&mut armed, &mut moved, Some(late));
        assert_eq!((armed, moved), (Some(late), true));

        moved = false;
        arm_deadline(&mut armed, &mut moved, Some(late + Duration::from_secs(1)));
        arm_deadline(&mut armed, &mut moved, None);
        assert_eq!((armed, moved), (Some(late), false), "kept");

        arm_deadline(&mut armed, &mut moved, Some(early));
        assert_eq!((armed, moved), (Some(early), true), "moved earlier");
    }
}
