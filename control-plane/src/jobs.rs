//! The fleet migration job as the server keeps it: its counters and state, read by status
//! requests while `fleet` runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Named in the API by [`JobState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    /// A canary tenant failed; the rest were not touched.
    CanaryFailed,
}

/// A running or finished job. Counters are atomics: the runner's tasks bump them while
/// status requests read them.
pub struct Job {
    pub(crate) id: String,
    pub(crate) target_version: u32,
    pub(crate) total: usize,
    pub(crate) canary: usize,
    pub(crate) concurrency: usize,
    pub(crate) done: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) state: Mutex<JobState>,
}

impl Job {
    /// The job as the API shows it.
    pub fn view(&self) -> silo_api::JobView {
        let (done, failed) = (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        silo_api::JobView {
            id: self.id.clone(),
            state: self.state().as_str().to_owned(),
            target_version: self.target_version,
            total: self.total,
            done,
            failed,
            remaining: self.total.saturating_sub(done + failed),
            canary: self.canary,
            concurrency: self.concurrency,
        }
    }

    pub fn state(&self) -> JobState {
        *self.state.lock()
    }

    pub(crate) fn set_state(&self, s: JobState) {
        *self.state.lock() = s;
    }
}

/// The current (or last) job. The lock is held only to swap or clone the `Arc`.
#[derive(Default, Clone)]
pub struct MigrationJobs {
    pub(crate) current: Arc<Mutex<Option<Arc<Job>>>>,
}

impl MigrationJobs {
    pub fn current(&self) -> Option<silo_api::JobView> {
        self.current.lock().as_ref().map(|j| j.view())
    }
}

impl JobState {
    /// The state as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::CanaryFailed => "canary_failed",
        }
    }
}
