//! The fleet migration job as the server keeps it: its counters and state, read by status
//! requests while `fleet` runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub target_version: u32,
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub remaining: usize,
    pub canary: usize,
    pub concurrency: usize,
}

impl Job {
    pub fn view(&self) -> JobView {
        let (done, failed) = (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        JobView {
            id: self.id.clone(),
            state: *self.state.lock(),
            target_version: self.target_version,
            total: self.total,
            done,
            failed,
            remaining: self.total.saturating_sub(done + failed),
            canary: self.canary,
            concurrency: self.concurrency,
        }
    }

    pub(crate) fn set_state(&self, s: JobState) {
        *self.state.lock() = s;
    }
}

/// The current (or last) job. A std mutex: held only to swap or clone the `Arc`.
#[derive(Default, Clone)]
pub struct MigrationJobs {
    pub(crate) current: Arc<Mutex<Option<Arc<Job>>>>,
}

impl MigrationJobs {
    pub fn current(&self) -> Option<JobView> {
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

impl From<JobView> for silo_api::JobView {
    fn from(v: JobView) -> Self {
        silo_api::JobView {
            id: v.id,
            state: v.state.as_str().to_owned(),
            target_version: v.target_version,
            total: v.total,
            done: v.done,
            failed: v.failed,
            remaining: v.remaining,
            canary: v.canary,
            concurrency: v.concurrency,
        }
    }
}
