//! A client's request body on its way to a backend: each wait for the client's next bytes
//! is bounded (a client sending a byte a minute would hold an app worker for good), and what
//! went wrong with it is kept, so that the client's fault (a malformed chunked body: 400, a
//! stalled one: 408) is never taken for the backend's. Its end starts the backend's response
//! timeout (measured from the request's end, not from its first byte).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::metrics::now_ms;

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

/// What the body and the forward share.
#[derive(Debug)]
pub(super) struct Progress {
    /// 0: running, 1: ended whole, 2: [`Fault::Malformed`], 3: [`Fault::Stalled`].
    state: AtomicU8,
    ended: Notify,
    /// Waiting for the client's next bytes now (else for the backend to take more).
    waiting: AtomicBool,
    /// When the body last moved ([`now_ms`]), or began.
    last_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            state: AtomicU8::new(0),
            ended: Notify::new(),
            waiting: AtomicBool::new(false),
            last_ms: AtomicU64::new(now_ms()),
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
        self.state.store(state, Ordering::Release);
        self.ended.notify_waiters();
    }

    /// Returns once the backend has had `limit` to answer: counted from the body's end, or,
    /// while the body waits on the backend (not on the client), from when it last moved (a
    /// backend that stopped reading and answers nothing).
    pub(super) async fn backend_overdue(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.state.load(Ordering::Acquire) != 0 {
                tokio::time::sleep(limit).await;
                return;
            }
            let still = now_ms().saturating_sub(self.last_ms.load(Ordering::Acquire));
            if !self.waiting.load(Ordering::Acquire) && still >= limit_ms {
                return;
            }
            let look = Duration::from_millis(limit_ms.saturating_sub(still).max(100));
            tokio::select! {
                () = self.ended() => {}
                () = tokio::time::sleep(look) => {}
            }
        }
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
}

/// The client's body, as hyper's client sends it upstream.
#[derive(Debug)]
pub(super) struct RequestBody {
    inner: Incoming,
    /// How long one wait for the client's next bytes may last.
    idle: Duration,
    /// Armed while the backend's side waits for the client (not while the backend is slow to
    /// take what was read: that is not the client's fault).
    timer: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
}

impl RequestBody {
    pub(super) fn new(inner: Incoming, idle: Duration) -> RequestBody {
        RequestBody {
            inner,
            idle,
            timer: None,
            progress: Arc::default(),
        }
    }

    pub(super) fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

/// Why a request body stopped, as hyper's client is told.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the client's request body: {0}")]
    Client(#[source] hyper::Error),
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                this.progress.waiting.store(false, Ordering::Release);
                this.progress.last_ms.store(now_ms(), Ordering::Release);
                match &frame {
                    None => this.progress.end(1),
                    Some(Err(_)) => this.progress.end(2),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.progress.end(1),
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Client)))
            }
            Poll::Pending => {
                this.progress.waiting.store(true, Ordering::Release);
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    this.progress.end(3);
                    return Poll::Ready(Some(Err(BodyError::Stalled(idle.as_secs()))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
