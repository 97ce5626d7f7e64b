//! A client's request body on its way to a backend. The client's connection (downstream.rs)
//! reads and decodes it (h1.rs) into a bounded queue; the backend's side (upstream.rs) takes
//! the pieces from it as it can send them. Both run in the connection's own task, so the queue
//! costs no hand-over between tasks, and a backend that reads slowly holds at most
//! [`QUEUED`] bytes of it here.
//!
//! Each wait for the client's next bytes is bounded (a client sending a byte a minute would
//! hold an app worker for good), and what went wrong with the body is kept, so that the
//! client's fault (a malformed chunked body: 400, a stalled one: 408) is never taken for the
//! backend's. Its end starts the backend's response timeout (measured from the request's end,
//! not from its first byte).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::metrics::now_ms;

/// Decoded body bytes the client's side reads ahead of what the backend has taken.
pub(super) const QUEUED: usize = 64 * 1024;

/// What became of a request body, as the forward reads it after the backend's answer (or
/// failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// None yet (or the body arrived whole).
    None,
    /// Not valid HTTP/1.1 framing (a bad chunk), or the client's connection broke under it.
    Malformed,
    /// The client sent nothing for the body timeout.
    Stalled,
}

/// The pieces between the client's side and the backend's.
#[derive(Debug, Default)]
struct Queue {
    pieces: VecDeque<Bytes>,
    bytes: usize,
    /// The client's side has decoded the body to its end.
    complete: bool,
    /// The backend's side asked for a piece and found none (what an `Expect: 100-continue`
    /// waits for).
    wanted: bool,
    /// The backend's side let the body go (its answer came, or the request failed).
    dropped: bool,
    /// The client's side, waiting for room (or for `wanted`).
    producer: Option<Waker>,
    /// The backend's side, waiting for a piece.
    consumer: Option<Waker>,
}

/// What the backend was too slow at, as [`Progress::backend_overdue`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overdue {
    /// Taking the body: the send timeout (504, counted as `backend_write`).
    Body,
    /// Answering after the body's end: the response timeout (504, `response_head`).
    Answer,
}

/// What the body, the client's side and the forward share.
#[derive(Debug)]
pub(super) struct Progress {
    /// 0: running, 1: ended whole, 2: [`Fault::Malformed`], 3: [`Fault::Stalled`].
    state: AtomicU8,
    ended: Notify,
    /// Waiting for the client's next bytes now (else for the backend to take more).
    waiting: AtomicBool,
    /// When the body last moved ([`now_ms`]), or began.
    last_ms: AtomicU64,
    /// Uncontended: both sides run in one task.
    queue: Mutex<Queue>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            state: AtomicU8::new(0),
            ended: Notify::new(),
            waiting: AtomicBool::new(false),
            last_ms: AtomicU64::new(now_ms()),
            queue: Mutex::default(),
        }
    }
}

impl Progress {
    pub(super) fn fault(&self) -> Fault {
        match self.state.load(Ordering::Acquire) {
            2 => Fault::Malformed,
            3 => Fault::Stalled,
            _ => Fault::None,
        }
    }

    fn end(&self, state: u8) {
        // The first end stands (a stall, then the client's close, stays a stall).
        let _ = self
            .state
            .compare_exchange(0, state, Ordering::AcqRel, Ordering::Acquire);
        self.ended.notify_waiters();
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic holding the lock ends the connection's task, and the queue with it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once the backend is overdue: it took none of the body for `send` while the body
    /// waited on it (a backend that stopped reading), or it sent no answer within `response`
    /// of the body's end (`None`: it may take as long as it likes, a long poll).
    pub(super) async fn backend_overdue(
        &self,
        send: Duration,
        response: Option<Duration>,
    ) -> Overdue {
        let send_ms = u64::try_from(send.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.state.load(Ordering::Acquire) != 0 {
                match response {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
                return Overdue::Answer;
            }
            let still = now_ms().saturating_sub(self.last_ms.load(Ordering::Acquire));
            if !self.waiting.load(Ordering::Acquire) && still >= send_ms {
                return Overdue::Body;
            }
            let look = Duration::from_millis(send_ms.saturating_sub(still).max(100));
            tokio::select! {
                () = self.ended() => {}
                () = tokio::time::sleep(look) => {}
            }
        }
    }

    /// The backend took more of the body (a write that went out in part counts too: a
    /// backend reading slowly is not one that stopped).
    pub(super) fn moved(&self) {
        self.last_ms.store(now_ms(), Ordering::Release);
    }

    /// Returns once the body has ended (whole or not).
    pub(super) async fn ended(&self) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.load(Ordering::Acquire) != 0 {
                return;
            }
            notified.await;
        }
    }

    // The client's side (downstream.rs).

    /// A decoded piece, from the client.
    pub(super) fn push(&self, data: Bytes) {
        let mut q = self.queue();
        if q.dropped || data.is_empty() {
            return;
        }
        q.bytes += data.len();
        q.pieces.push_back(data);
        if let Some(w) = q.consumer.take() {
            w.wake();
        }
    }

    /// The client's side decoded the body to its end.
    pub(super) fn complete(&self) {
        let mut q = self.queue();
        q.complete = true;
        if let Some(w) = q.consumer.take() {
            w.wake();
        }
    }

    /// The client's body is malformed, or its connection broke under it.
    pub(super) fn malformed(&self) {
        self.end(2);
        if let Some(w) = self.queue().consumer.take() {
            w.wake();
        }
    }

    /// Ready while the client's side may read more of the body: the queue has room and the
    /// backend's side still wants the body.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = self.queue();
        if q.bytes < QUEUED || q.dropped {
            return Poll::Ready(());
        }
        q.producer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the client's side may read more of the body now (as [`Progress::poll_room`],
    /// without waiting).
    pub(super) fn has_room(&self) -> bool {
        let q = self.queue();
        q.bytes < QUEUED || q.dropped
    }

    /// Ready once the backend's side has asked for the body (never once it let it go).
    pub(super) fn poll_wanted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = self.queue();
        if (q.wanted || !q.pieces.is_empty()) && !q.dropped {
            return Poll::Ready(());
        }
        q.producer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the backend's side let the body go.
    pub(super) fn dropped(&self) -> bool {
        self.queue().dropped
    }
}

/// The client's body, as berth's client sends it upstream.
#[derive(Debug)]
pub(super) struct RequestBody {
    /// How long one wait for the client's next bytes may last.
    idle: Duration,
    /// Armed while the backend's side waits for the client (not while the backend is slow to
    /// take what was read: that is not the client's fault).
    timer: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
}

impl RequestBody {
    /// A body the client's side fills through `progress`.
    pub(super) fn new(progress: Arc<Progress>, idle: Duration) -> RequestBody {
        RequestBody {
            idle,
            timer: None,
            progress,
        }
    }

    pub(super) fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Whether a piece (or the end) can be taken now.
    pub(super) fn ready(&self) -> bool {
        let q = self.progress.queue();
        !q.pieces.is_empty() || q.complete
    }

    /// Pieces taken and not sent (the backend's connection was closed under them) go back to
    /// the front, in order, for the next try.
    pub(super) fn put_back(&mut self, pieces: Vec<Bytes>) {
        let mut q = self.progress.queue();
        for p in pieces.into_iter().rev() {
            q.bytes += p.len();
            q.pieces.push_front(p);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut q = self.progress.queue();
        q.dropped = true;
        q.pieces.clear();
        q.bytes = 0;
        if let Some(w) = q.producer.take() {
            w.wake();
        }
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the client's request body is malformed, or its connection broke")]
    Client,
    #[error("the client sent no request body data for {0} s")]
    Stalled(u64),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let progress = this.progress.clone();
        match progress.fault() {
            Fault::None => {}
            Fault::Malformed => return Poll::Ready(Some(Err(BodyError::Client))),
            Fault::Stalled => {
                return Poll::Ready(Some(Err(BodyError::Stalled(this.idle.as_secs()))))
            }
        }
        let mut q = progress.queue();
        if let Some(data) = q.pieces.pop_front() {
            q.bytes -= data.len();
            if let Some(w) = q.producer.take() {
                w.wake();
            }
            let end = q.complete && q.pieces.is_empty();
            drop(q);
            this.timer = None;
            progress.waiting.store(false, Ordering::Release);
            progress.last_ms.store(now_ms(), Ordering::Release);
            if end {
                progress.end(1);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if q.complete {
            drop(q);
            progress.end(1);
            return Poll::Ready(None);
        }
        q.consumer = Some(cx.waker().clone());
        if !q.wanted {
            q.wanted = true;
            if let Some(w) = q.producer.take() {
                w.wake();
            }
        }
        drop(q);
        progress.waiting.store(true, Ordering::Release);
        let idle = this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_ready() {
            this.timer = None;
            progress.end(3);
            return Poll::Ready(Some(Err(BodyError::Stalled(idle.as_secs()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let q = self.progress.queue();
        q.complete && q.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn poll(body: &mut RequestBody) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    #[tokio::test]
    async fn pieces_pass_in_order_bounded_and_the_end_is_told() {
        let progress = Arc::new(Progress::default());
        let mut body = RequestBody::new(progress.clone(), Duration::from_secs(60));
        let mut cx = Context::from_waker(Waker::noop());
        // Nothing yet: the body is wanted (an Expect: 100-continue waits for this).
        assert!(progress.poll_wanted(&mut cx).is_pending());
        assert!(poll(&mut body).is_pending());
        assert!(progress.poll_wanted(&mut cx).is_ready());
        progress.push(Bytes::from(vec![b'a'; QUEUED]));
        assert!(
            progress.poll_room(&mut cx).is_pending(),
            "the queue is full"
        );
        progress.push(Bytes::from_static(b"b"));
        progress.complete();
        let Poll::Ready(Some(Ok(f))) = poll(&mut body) else {
            panic!("no piece")
        };
        assert_eq!(f.into_data().unwrap().len(), QUEUED);
        assert!(progress.poll_room(&mut cx).is_ready());
        assert!(!body.is_end_stream());
        put_back_and_read(&mut body);
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert_eq!(progress.fault(), Fault::None);
        progress.ended().await;
    }

    fn put_back_and_read(body: &mut RequestBody) {
        let Poll::Ready(Some(Ok(f))) = poll(body) else {
            panic!("no piece")
        };
        let b = f.into_data().unwrap();
        body.put_back(vec![b.clone()]);
        let Poll::Ready(Some(Ok(again))) = poll(body) else {
            panic!("not put back")
        };
        assert_eq!(again.into_data().unwrap(), b);
    }

    #[tokio::test]
    async fn a_malformed_body_is_the_clients_fault_and_a_dropped_one_frees_the_client_side() {
        let progress = Arc::new(Progress::default());
        let mut body = RequestBody::new(progress.clone(), Duration::from_secs(60));
        progress.malformed();
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(BodyError::Client)))
        ));
        assert_eq!(progress.fault(), Fault::Malformed);
        progress.push(Bytes::from(vec![0; QUEUED * 2]));
        drop(body);
        assert!(progress.dropped());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(progress.poll_room(&mut cx).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_stalls_its_body_at_the_timeout() {
        let progress = Arc::new(Progress::default());
        let mut body = RequestBody::new(progress.clone(), Duration::from_secs(60));
        assert!(poll(&mut body).is_pending());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(BodyError::Stalled(60))))
        ));
        assert_eq!(progress.fault(), Fault::Stalled);
    }
}
