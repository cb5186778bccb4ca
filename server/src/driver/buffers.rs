//! The driver's buffers: lent from a per-thread pool while a connection
//! moves bytes, given back when it waits, so an idle connection holds none.

use std::cell::RefCell;

use bytes::BytesMut;
use easy_mqtt_core::QoS;
use futures_io::{AsyncRead, AsyncWrite};

use super::Driver;
use crate::runtime::Runtime;
use crate::sessions::{SessionKey, lock};

/// Buffers larger than this are released when they empty, so an idle
/// connection does not keep the memory of its busiest moment.
pub(super) const KEEP_BUFFER: usize = 16 * 1024;

/// Empty buffers kept per worker thread for the connections that need one
/// now: an idle connection holds no buffer (see [`Driver::release_idle_buffers`]).
const SPARE_BUFFERS: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer from this thread's spares, or a new (unallocated) one.
pub(super) fn lend_buffer() -> BytesMut {
    SPARE
        .with(|spare| {
            spare
                .try_borrow_mut()
                .ok()
                .and_then(|mut spare| spare.pop())
        })
        .unwrap_or_default()
}

/// Gives an empty buffer back to this thread's spares (a large one is freed).
pub(super) fn return_buffer(mut buffer: BytesMut) {
    if buffer.capacity() == 0 || buffer.capacity() > KEEP_BUFFER {
        return;
    }
    buffer.clear();
    SPARE.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < SPARE_BUFFERS
        {
            spare.push(buffer);
        }
    });
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    /// Waiting for the socket, a connection keeps no empty buffer: they go
    /// back to the thread's spares (a large one is freed), so an idle
    /// connection costs no buffer memory.
    pub(super) fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            return_buffer(std::mem::take(&mut self.rbuf));
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            return_buffer(std::mem::take(&mut self.wbuf));
        }
        let busy = std::mem::take(&mut self.busy);
        if let Some(work) = &mut self.work {
            if !busy && work.events.is_empty() && work.acks.is_empty() && work.outbox_wait.is_none()
            {
                self.work = None;
            } else if work.scratch.capacity() * std::mem::size_of::<(SessionKey, QoS)>()
                > KEEP_BUFFER
            {
                work.scratch = Vec::new();
            }
        }
        if self.storage.is_empty() {
            self.storage.release_if_empty();
            self.retry_timer = None;
        }
        // The state machine's queues (the CONNACK's, the CONNECT event's)
        // and the driver's work, unless messages are flowing: a publisher
        // or a subscriber would allocate them again for every burst.
        if !busy {
            lock(&self.cell.inner).conn.release_idle();
        }
    }
}
