//! The statement watchdog: one thread that interrupts requests still running at their
//! deadline.
//!
//! The progress handler (see [`crate::sandbox`]) stops a statement between virtual machine
//! steps, every thousand of them; a single step can run for seconds (a `LIKE` of a
//! fifty-character pattern over a megabyte string), and then the handler is not called: 200
//! such rows ran 41 s against a 5 s budget. The watchdog calls `sqlite3_interrupt` on the
//! connection at the deadline, from outside; SQLite checks that flag between rows, so such a
//! statement stops within one step of its deadline.
//!
//! Every request is watched, the inline reads with their millisecond budget too (a quick-
//! looking read of a few heavy rows never reaches the progress handler and would hold an
//! async thread for seconds). So registering must be cheap: a lock and a map insert, never a
//! wake-up; the thread looks every [`TICK`] while requests come, and parks after a second
//! without any (a registration then wakes it). A statement is stopped within a tick and one
//! step of its deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::sandbox::SandboxState;

/// How often the watchdog looks at the requests it holds.
pub const TICK: Duration = Duration::from_millis(2);

struct Watchdog {
    due: Mutex<Due>,
    wake: Condvar,
    /// The thread sleeps until woken (it had nothing to watch for [`PARK_AFTER`]).
    parked: AtomicBool,
}

/// Idle this long, the watchdog stops ticking until a request is registered.
const PARK_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Due {
    next_id: u64,
    by_deadline: BTreeMap<(Instant, u64), Arc<SandboxState>>,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            due: Mutex::new(Due::default()),
            wake: Condvar::new(),
            parked: AtomicBool::new(false),
        }));
        let spawned = std::thread::Builder::new()
            .name("silo-watchdog".to_owned())
            .spawn(move || dog.run());
        if let Err(e) = spawned {
            // Without the thread the progress handler still enforces budgets, less tightly.
            tracing::error!(error = %e, "could not start the statement watchdog");
        }
        dog
    })
}

impl Watchdog {
    fn run(&self) {
        let mut due = self.due.lock();
        let mut idle_since = Instant::now();
        loop {
            let now = Instant::now();
            match due.by_deadline.first_key_value() {
                Some((&(at, id), _)) if at <= now => {
                    if let Some(sandbox) = due.by_deadline.remove(&(at, id)) {
                        // Under the lock: the request cannot deregister and start another
                        // statement on the connection meanwhile.
                        sandbox.interrupt_for_budget();
                    }
                    continue;
                }
                Some(_) => idle_since = now,
                None if now.duration_since(idle_since) >= PARK_AFTER => {
                    // Nothing to watch for a while: sleep until a registration wakes us.
                    self.parked.store(true, Ordering::Release);
                    self.wake.wait(&mut due);
                    self.parked.store(false, Ordering::Release);
                    idle_since = Instant::now();
                    continue;
                }
                None => {}
            }
            // Not woken per registration (that would cost a context switch per request on
            // a busy server): look again every tick.
            self.wake.wait_for(&mut due, TICK);
        }
    }
}

/// Keeps a request watched until dropped (at the end of the request).
pub struct Watched {
    key: (Instant, u64),
}

impl Drop for Watched {
    fn drop(&mut self) {
        watchdog().due.lock().by_deadline.remove(&self.key);
    }
}

/// Watches a request on the connection of `sandbox` that must end by `deadline`.
pub fn watch(sandbox: &Arc<SandboxState>, deadline: Instant) -> Watched {
    let dog = watchdog();
    let mut due = dog.due.lock();
    due.next_id += 1;
    let key = (deadline, due.next_id);
    due.by_deadline.insert(key, sandbox.clone());
    drop(due);
    if dog.parked.load(Ordering::Acquire) {
        dog.wake.notify_one();
    }
    Watched { key }
}
