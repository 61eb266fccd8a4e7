//! Wakes that have returned from the foreign side before the foreign side goes on.
//!
//! uniffi resumes a foreign `await` by calling the foreign continuation callback from whichever
//! thread wakes the future: often a tokio thread, for example a blocking-pool thread finishing a
//! directory store's file operation. Python's callback (`call_soon_threadsafe`) releases the GIL
//! halfway, to write to the event loop's socket, and must take it again to return. Meanwhile the
//! interpreter's main thread has its result: it can finish the program and start finalizing
//! before the callback thread gets the GIL back. CPython (before 3.14) then ends that thread with
//! `pthread_exit`, whose forced unwind runs up the tokio thread's stack into tokio's and std's
//! `catch_unwind`; catching a forced unwind is fatal ("FATAL: exception not rethrown", SIGABRT),
//! so the process aborted at exit now and then.
//!
//! [`Settled`] wraps every exported future: the future inside sees a waker that counts the wakes
//! in flight, and each poll (and the drop) of the wrapper first waits until none is. The foreign
//! side polls again, or frees the future, only after its callback signalled it, so by the time
//! it has the result every callback into it has returned, and no runtime thread is left inside
//! the foreign language when the program ends.
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

thread_local! {
    /// How many wakes this thread is inside. A foreign callback may poll the future on the
    /// waking thread itself (a coroutine resumed inline); waiting there would wait for itself.
    static WAKING: Cell<u32> = const { Cell::new(0) };
}

struct Relay {
    state: Mutex<RelayState>,
    idle: Condvar,
}

struct RelayState {
    /// The waker of the latest poll (uniffi's, which calls the foreign continuation).
    target: Waker,
    in_flight: usize,
}

impl Relay {
    fn lock(&self) -> MutexGuard<'_, RelayState> {
        // The state is a waker and a counter, consistent after any panic: poisoning adds nothing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no wake is inside the foreign side, unless this thread is one of them.
    fn settle(&self) {
        if WAKING.with(Cell::get) > 0 {
            return;
        }
        let mut state = self.lock();
        while state.in_flight > 0 {
            state = self
                .idle
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Ends one wake, also when the foreign side unwinds through it.
struct InFlight<'a>(&'a Relay);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        WAKING.with(|w| w.set(w.get().saturating_sub(1)));
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let target = {
            let mut state = self.lock();
            state.in_flight += 1;
            state.target.clone()
        };
        WAKING.with(|w| w.set(w.get() + 1));
        let _done = InFlight(self);
        target.wake();
    }
}

/// An exported future whose foreign wakes have all returned whenever it is polled or dropped.
pub(crate) struct Settled<F> {
    inner: Pin<Box<F>>,
    relay: Arc<Relay>,
    waker: Option<Waker>,
}

/// Wraps `future` (see the module documentation).
pub(crate) fn settled<F: Future>(future: F) -> Settled<F> {
    Settled {
        inner: Box::pin(future),
        relay: Arc::new(Relay {
            state: Mutex::new(RelayState {
                target: Waker::noop().clone(),
                in_flight: 0,
            }),
            idle: Condvar::new(),
        }),
        waker: None,
    }
}

impl<F: Future> Future for Settled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.relay.settle();
        {
            let mut state = this.relay.lock();
            if !state.target.will_wake(cx.waker()) {
                state.target = cx.waker().clone();
            }
        }
        let relay = &this.relay;
        let waker = this
            .waker
            .get_or_insert_with(|| Waker::from(Arc::clone(relay)));
        this.inner.as_mut().poll(&mut Context::from_waker(waker))
    }
}

impl<F> Drop for Settled<F> {
    fn drop(&mut self) {
        self.relay.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A waker standing in for a foreign continuation: it signals, then stays "inside the
    /// foreign side" until released.
    struct SlowForeign {
        signalled: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
        returned: AtomicBool,
    }

    impl Wake for SlowForeign {
        fn wake(self: Arc<Self>) {
            if let Some(signal) = self.signalled.lock().unwrap().take() {
                signal.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
                self.returned.store(true, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_poll_waits_until_the_wake_has_returned_from_the_foreign_side() {
        let (signal, signalled) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let foreign = Arc::new(SlowForeign {
            signalled: Mutex::new(Some(signal)),
            release: Mutex::new(released),
            returned: AtomicBool::new(false),
        });
        let (waker_tx, waker_rx) = mpsc::channel::<Waker>();
        let mut polled = false;
        let mut future = settled(std::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            waker_tx.send(cx.waker().clone()).unwrap();
            Poll::Pending
        }));
        let outer = Waker::from(Arc::clone(&foreign));
        let mut cx = Context::from_waker(&outer);
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        // Another thread wakes the future, as a runtime thread does.
        let inner = waker_rx.recv().unwrap();
        let waking = std::thread::spawn(move || inner.wake());
        signalled.recv().unwrap();
        // The foreign side has its signal but its callback has not returned: the next poll must
        // wait for it, so release it only from yet another thread, after a pause that gives a
        // poll that does not wait every chance to finish first.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            release.send(()).unwrap();
        });
        assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
        assert!(
            foreign.returned.load(Ordering::SeqCst),
            "the poll returned while the wake was still inside the foreign side"
        );
        waking.join().unwrap();
        releaser.join().unwrap();
    }
}
