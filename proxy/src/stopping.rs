//! The proxy's stop as a connection waits for it: the process's flag, and per worker thread
//! the wakers of the connections waiting on it, woken by the worker once the stop comes.
//!
//! By hand rather than a `tokio::sync::watch` future per connection: each poll of a waiting
//! watch (tokio's `Notify`) locks a mutex all workers share, and a connection polls it on every
//! request it waits for. Here a poll is a look at this thread's own list and one load of a flag
//! that is written once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

/// This worker's waiting connections: a slot each, reused once it is let go.
#[derive(Default)]
struct Waiters {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static WAITERS: RefCell<Waiters> = RefCell::default();
}

/// One connection's wait for the stop (`flag`), registered with its worker while it lives.
pub(super) struct StopWait<'a> {
    flag: &'a AtomicBool,
    slot: Option<usize>,
}

impl<'a> StopWait<'a> {
    pub(super) fn new(flag: &'a AtomicBool) -> StopWait<'a> {
        StopWait { flag, slot: None }
    }

    /// Ready once the stop came. The waker is registered before the flag is read, so a stop
    /// that comes in between is not missed: the worker wakes every registered one after the
    /// flag was set.
    pub(super) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = WAITERS.try_with(|w| {
            let mut w = w.borrow_mut();
            match self.slot {
                Some(i) => match &mut w.wakers[i] {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    other => *other = Some(cx.waker().clone()),
                },
                None => {
                    let waker = Some(cx.waker().clone());
                    let i = match w.free.pop() {
                        Some(i) => {
                            w.wakers[i] = waker;
                            i
                        }
                        None => {
                            w.wakers.push(waker);
                            w.wakers.len() - 1
                        }
                    };
                    self.slot = Some(i);
                }
            }
        });
        if self.flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let _ = WAITERS.try_with(|w| {
                let mut w = w.borrow_mut();
                w.wakers[i] = None;
                w.free.push(i);
            });
        }
    }
}

/// Wakes every connection of this worker that waits for the stop (its flag is set by now).
pub(super) fn wake_all() {
    let wakers: Vec<Waker> = WAITERS
        .try_with(|w| w.borrow().wakers.iter().flatten().cloned().collect())
        .unwrap_or_default();
    // Woken outside the borrow: a wake may poll nothing now, but keeps the list free anyway.
    for waker in wakers {
        waker.wake();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    #[test]
    fn waiting_connections_are_woken_by_the_stop_and_slots_are_reused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            static FLAG: AtomicBool = AtomicBool::new(false);
            let waiting: Vec<_> = (0..3)
                .map(|_| {
                    tokio::spawn(async {
                        let mut wait = StopWait::new(&FLAG);
                        poll_fn(|cx| wait.poll_stopped(cx)).await;
                    })
                })
                .collect();
            // A connection that ended let its slot go.
            tokio::spawn(async {
                let mut wait = StopWait::new(&FLAG);
                let _ = poll_fn(|cx| Poll::Ready(wait.poll_stopped(cx))).await;
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (slots, free) = WAITERS.with(|w| {
                let w = w.borrow();
                (w.wakers.len(), w.free.len())
            });
            assert_eq!((slots, free), (4, 1), "three waiting, one slot free");
            FLAG.store(true, Ordering::Release);
            wake_all();
            for w in waiting {
                tokio::time::timeout(Duration::from_secs(1), w)
                    .await
                    .expect("woken by the stop")
                    .unwrap();
            }
            assert_eq!(WAITERS.with(|w| w.borrow().free.len()), 4);
        });
    }
}
