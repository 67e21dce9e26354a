//! In-memory job table of the API server: each deploy or delete runs as a job whose progress
//! lines the dashboard polls. One job per customer at a time. Jobs are lost on restart; the
//! operations themselves resume when re-submitted, because every step is idempotent.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::progress::Progress;

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Still working.
    Running,
    /// Finished; `result` holds the outcome.
    Succeeded,
    /// Stopped; `error` says why.
    Failed,
}

/// One progress line with its sequence number (poll with `?since=<seq>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobLine {
    /// 0-based position in the job's log.
    pub seq: usize,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The line.
    pub text: String,
}

/// A deploy or delete as the dashboard sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// `deploy` or `delete`.
    pub kind: String,
    /// Customer the job works on.
    pub customer: String,
    /// Current state.
    pub state: JobState,
    /// Progress lines so far.
    pub lines: Vec<JobLine>,
    /// Why it failed.
    pub error: Option<String>,
    /// Outcome of a succeeded job.
    pub result: Option<serde_json::Value>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    jobs: BTreeMap<u64, Job>,
}

/// The job table, shared by the API handlers and the running jobs.
#[derive(Clone, Default)]
pub struct JobTable(Arc<Mutex<Inner>>);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JobTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `work` as a job unless the customer already has a running one (then its id is returned as Err).
    pub fn start<F, Fut>(&self, kind: &str, customer: &str, work: F) -> Result<u64, u64>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, String>> + Send + 'static,
    {
        let id = {
            let mut inner = self.lock();
            if let Some(busy) = inner
                .jobs
                .values()
                .find(|j| j.customer == customer && j.state == JobState::Running)
            {
                return Err(busy.id);
            }
            inner.next += 1;
            let id = inner.next;
            inner.jobs.insert(
                id,
                Job {
                    id,
                    kind: kind.to_owned(),
                    customer: customer.to_owned(),
                    state: JobState::Running,
                    lines: Vec::new(),
                    error: None,
                    result: None,
                },
            );
            id
        };
        let table = self.clone();
        let progress = Progress::new(move |text| table.push_line(id, text));
        let fut = work(progress);
        let table = self.clone();
        tokio::spawn(async move {
            let outcome = fut.await;
            let mut inner = table.lock();
            if let Some(job) = inner.jobs.get_mut(&id) {
                match outcome {
                    Ok(v) => {
                        job.state = JobState::Succeeded;
                        job.result = Some(v);
                    }
                    Err(e) => {
                        job.state = JobState::Failed;
                        job.error = Some(e);
                    }
                }
            }
        });
        Ok(id)
    }

    fn push_line(&self, id: u64, text: &str) {
        let mut inner = self.lock();
        if let Some(job) = inner.jobs.get_mut(&id) {
            let seq = job.lines.len();
            job.lines.push(JobLine {
                seq,
                at: now(),
                text: text.to_owned(),
            });
        }
    }

    /// The job with lines from `since` on.
    pub fn get(&self, id: u64, since: usize) -> Option<Job> {
        let inner = self.lock();
        inner.jobs.get(&id).map(|j| {
            let mut j = j.clone();
            j.lines = j.lines.into_iter().skip(since).collect();
            j
        })
    }

    /// Every job without its lines, newest first.
    pub fn list(&self) -> Vec<Job> {
        let inner = self.lock();
        inner
            .jobs
            .values()
            .rev()
            .map(|j| Job {
                lines: Vec::new(),
                ..j.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_collects_lines_and_refuses_a_second_job_per_customer() {
        let table = JobTable::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let id = table
            .start("deploy", "acme", |p| async move {
                p.line("step one");
                let _ = rx.await;
                p.line("step two");
                Ok(serde_json::json!({"ok": true}))
            })
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            table.start("delete", "acme", |_| async { Ok(serde_json::Value::Null) }),
            Err(id)
        );
        tx.send(()).unwrap();
        for _ in 0..100 {
            if table.get(id, 0).unwrap().state != JobState::Running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let job = table.get(id, 0).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        let texts: Vec<_> = job.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["step one", "step two"]);
        assert_eq!(table.get(id, 1).unwrap().lines[0].seq, 1);
        let failed = table
            .start("delete", "acme", |_| async { Err("boom".to_owned()) })
            .unwrap();
        for _ in 0..100 {
            if table.get(failed, 0).unwrap().state != JobState::Running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(table.get(failed, 0).unwrap().error.as_deref(), Some("boom"));
        assert_eq!(table.list().len(), 2);
    }
}
