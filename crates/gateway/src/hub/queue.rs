//! A connection's send queue, bounded by frames and bytes.
//!
//! A slow consumer is detected in two places, and both close it with 4009:
//! here, when a push would exceed either bound ([`SendQueue::push`] marks
//! the queue closing, so every later push is refused at once), and in the
//! session, when one write to the socket takes longer than
//! `session.write_timeout` (a peer that stopped reading with the queue not
//! yet full). The queue is the one place that decides what is *kept* for a
//! connection; the session only decides how long a write may block.
//!
//! Why not a `tokio::sync::mpsc` channel: a bounded channel allocates a block
//! of 32 slots up front, about 2.5 KiB with tungstenite's `Message`, for
//! every connection, idle or not. A `VecDeque` behind a mutex costs nothing
//! until a frame is queued and is released when it drains, which matters at
//! 100k mostly idle sockets. The mutex is a `std` one: it is held for a push
//! or a pop, never across an `.await`.
//!
//! The session is woken for both new frames and a close request through
//! one waker kept under the same mutex (a permit flag and the waiting
//! task's `Waker`), not a `tokio::sync::Notify`: waiting on a `Notify` puts
//! an 80-byte `Notified` future into every connection's task, while
//! [`SendQueue::wait`] is a closure over a reference. The queue has one
//! consumer, its session, so one waker slot is all a `Notify` would hold.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use fanout_protocol::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A request to close the connection, with its code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// Close code sent to the client.
    pub code: CloseCode,
    /// Close reason sent to the client.
    pub reason: String,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push overflowed the queue; the connection is now closing with 4009.
    Overflow,
    /// The connection was already closing; the frame was not queued.
    Closing,
}

/// What the session should do next.
#[derive(Debug)]
pub enum Next {
    /// Write this frame.
    Frame(Message),
    /// Close with this request (all frames queued before it were returned first).
    Close(CloseRequest),
    /// Nothing to do.
    Empty,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Message>,
    bytes: usize,
    /// Boxed: set once in a connection's life, if ever.
    close: Option<Box<CloseRequest>>,
    /// Something was pushed (or a close asked for) since the session last
    /// woke: the one permit a `Notify` would keep.
    woken: bool,
    /// The session, while it waits.
    waker: Option<Waker>,
}

impl State {
    /// Sets the permit and takes the waiting session's waker, to be woken
    /// once the lock is released.
    fn wake(&mut self) -> Option<Waker> {
        self.woken = true;
        self.waker.take()
    }
}

/// The bounded outbound queue of one connection.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    max_frames: u32,
    max_bytes: u32,
}

impl SendQueue {
    /// An empty queue with the given bounds.
    /// Bounds above `u32::MAX` are taken as `u32::MAX`.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        let cap = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            state: Mutex::new(State::default()),
            max_frames: cap(max_frames),
            max_bytes: cap(max_bytes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state torn (every
        // critical section is a few field updates), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame`. Never waits: a full queue closes the connection (4009)
    /// and drops what it held, so one slow reader cannot hold memory or
    /// delay a broadcast.
    pub fn push(&self, frame: Message) -> Result<(), PushError> {
        let len = frame.len();
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closing);
        }
        if state.frames.len() >= self.max_frames as usize
            || state.bytes + len > self.max_bytes as usize
        {
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.close = Some(Box::new(CloseRequest {
                code: CloseCode::SlowConsumer,
                reason: "send queue overflow".into(),
            }));
            let waker = state.wake();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Err(PushError::Overflow);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        let waker = state.wake();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Asks the session to close. Frames already queued are still written
    /// first. The first request wins; later ones are ignored.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(Box::new(CloseRequest {
                code,
                reason: reason.into(),
            }));
        }
        let waker = state.wake();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Takes the next thing to do. The buffer is released when the queue
    /// drains, so that an idle connection holds none: the next frame
    /// allocates a small one again (one allocation per batch of frames).
    pub fn pop(&self) -> Next {
        let mut state = self.lock();
        if let Some(frame) = state.frames.pop_front() {
            state.bytes -= frame.len();
            if state.frames.is_empty() {
                state.frames = VecDeque::new();
            }
            return Next::Frame(frame);
        }
        match &state.close {
            Some(req) => Next::Close(CloseRequest::clone(req)),
            None => Next::Empty,
        }
    }

    /// Completes when something was pushed or a close was requested since
    /// the last wake-up. The permit is kept, so a push that happens between
    /// a `pop` returning `Empty` and this call is not missed. One waiter at
    /// a time (the session): a second one would replace the first's waker.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if std::mem::take(&mut state.woken) {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Frames the buffer has room for now (0: no buffer is allocated).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.lock().frames.capacity()
    }

    /// Frames and bytes currently queued.
    pub fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.frames.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn bounded_by_frames() {
        let q = SendQueue::new(2, 1024);
        q.push(text("a")).unwrap();
        q.push(text("b")).unwrap();
        assert_eq!(q.push(text("c")), Err(PushError::Overflow));
        assert_eq!(q.push(text("d")), Err(PushError::Closing));
        match q.pop() {
            Next::Close(req) => assert_eq!(req.code, CloseCode::SlowConsumer),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[test]
    fn bounded_by_bytes() {
        let q = SendQueue::new(100, 10);
        q.push(text("12345")).unwrap();
        q.push(text("12345")).unwrap();
        assert_eq!(q.push(text("1")), Err(PushError::Overflow));
    }

    #[test]
    fn close_comes_after_queued_frames() {
        let q = SendQueue::new(10, 1024);
        q.push(text("a")).unwrap();
        q.close(CloseCode::Restart, "draining");
        q.close(CloseCode::AuthFailed, "ignored: first close wins");
        assert!(matches!(q.pop(), Next::Frame(_)));
        match q.pop() {
            Next::Close(req) => assert_eq!(req.code, CloseCode::Restart),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[test]
    fn bytes_are_released_on_pop() {
        let q = SendQueue::new(10, 10);
        for _ in 0..5 {
            q.push(text("123456")).unwrap();
            assert!(matches!(q.pop(), Next::Frame(_)));
        }
        assert_eq!(q.depth(), (0, 0));
        assert!(matches!(q.pop(), Next::Empty));
    }

    #[test]
    fn a_drained_queue_holds_no_buffer() {
        let q = SendQueue::new(100, 1 << 20);
        for _ in 0..20 {
            q.push(text("frame")).unwrap();
        }
        assert!(q.capacity() >= 20);
        while let Next::Frame(_) = q.pop() {}
        assert_eq!(q.capacity(), 0, "an idle connection keeps no queue buffer");
    }

    #[tokio::test]
    async fn wait_is_woken_by_a_later_push_and_a_close() {
        let q = std::sync::Arc::new(SendQueue::new(10, 1024));
        for wake in [0, 1] {
            let waiter = tokio::spawn({
                let q = q.clone();
                async move { q.wait().await }
            });
            tokio::task::yield_now().await;
            assert!(
                !waiter.is_finished(),
                "the waiter must be parked before the wake, or this tests nothing"
            );
            if wake == 0 {
                q.push(text("a")).unwrap();
            } else {
                q.close(CloseCode::Restart, "draining");
            }
            tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
                .await
                .expect("woken")
                .expect("no panic");
        }
    }

    #[tokio::test]
    async fn wait_sees_a_push_made_before_it() {
        let q = SendQueue::new(10, 1024);
        q.push(text("a")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), q.wait())
            .await
            .expect("a permit from the earlier push");
    }
}
