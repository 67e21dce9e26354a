//! The API server's jobs, durable in the state file: each deploy, compose deploy or delete
//! runs as a job whose progress lines the dashboard polls. One running job per customer (a
//! unique index says so). A job's action is stored before it runs (sealed under the
//! customer's CMK when it holds secrets, and dropped once the job ends), so a control
//! killed mid-job runs it again on restart; every action is idempotent. Finished jobs are
//! kept for a retention window, then evicted.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::job_action::JobAction;
use crate::ops::Control;
use crate::progress::Progress;
use crate::sealed::{self, Sealed};
use crate::store::{now, Store, StoreError};

/// A job that started this many times without finishing is failed, not started again:
/// something in it stops control itself.
pub const MAX_STARTS: i64 = 5;

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Still working (or waiting for control to restart it).
    Running,
    /// Finished; `result` holds the outcome.
    Succeeded,
    /// Stopped; `error` says why.
    Failed,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => JobState::Running,
        }
    }
}

/// One progress line with its sequence number (poll with `?since=<seq>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobLine {
    /// 0-based position in the job's log.
    pub seq: i64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// The line.
    pub text: String,
}

/// A job as the dashboard sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// `deploy`, `compose` or `delete`.
    pub kind: String,
    /// Customer the job works on.
    pub customer: String,
    /// Current state.
    pub state: JobState,
    /// When it was submitted (seconds since the epoch).
    pub created_at: i64,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// How many times control started it (more than 1: resumed after a restart).
    pub starts: i64,
    /// Name of the API token that submitted it.
    pub token: Option<String>,
    /// Progress lines (from `since` on; none in lists).
    pub lines: Vec<JobLine>,
    /// Why it failed.
    pub error: Option<String>,
    /// Outcome of a succeeded job.
    pub result: Option<serde_json::Value>,
}

/// How a job's action is kept while it runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredInput {
    Plain(Box<JobAction>),
    Sealed(Sealed),
}

/// The submitter's idempotency key, with a hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The token that sent it (keys are per token).
    pub token: String,
    /// The `Idempotency-Key` header.
    pub key: String,
    /// SHA-256 of the request; the same key with another request is refused.
    pub request_hash: String,
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job.
    Started(i64),
    /// The same idempotency key and request came before: that job.
    Replayed(i64),
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The customer has a running job.
    #[error("the customer already has a running job {0}; wait for it to finish")]
    Busy(i64),
    /// The idempotency key was used with a different request.
    #[error("this Idempotency-Key was used for another request (job {0}); use a new key for a new request")]
    KeyReused(i64),
    /// The state file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Write {
    Line {
        job: i64,
        at: i64,
        text: String,
    },
    Finish {
        job: i64,
        outcome: Result<serde_json::Value, String>,
        done: oneshot::Sender<()>,
    },
}

/// The job table, shared by the API handlers and the running jobs.
#[derive(Clone)]
pub struct JobTable {
    store: Arc<Store>,
    writes: mpsc::UnboundedSender<Write>,
}

impl JobTable {
    /// Jobs in `store`; starts the task that writes progress lines (in order, batched).
    pub fn new(store: Arc<Store>) -> Self {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store.clone(), rx));
        Self { store, writes }
    }

    /// Records `action` as a running job and starts it.
    pub async fn submit(
        &self,
        control: Arc<Control>,
        action: JobAction,
        token: Option<String>,
        idempotency: Option<Idempotency>,
    ) -> Result<Submitted, SubmitError> {
        let (kind, customer) = (action.kind(), action.customer());
        let plain = match action.holds_secrets() {
            true => None,
            false => Some(stored(&StoredInput::Plain(Box::new(action.clone())))),
        };
        let submitted = self
            .store
            .run(move |c| insert(c, kind, &customer, token, idempotency, plain))
            .await??;
        if let Submitted::Started(id) = submitted {
            self.spawn(control, id, action, 1);
        }
        Ok(submitted)
    }

    /// Runs a job: seals its input first when it holds secrets, then the action.
    fn spawn(&self, control: Arc<Control>, id: i64, action: JobAction, start: i64) {
        let table = self.clone();
        tokio::spawn(async move {
            let progress = table.progress(id);
            let mut outcome = Ok(());
            if start == 1 && action.holds_secrets() {
                outcome = table.keep_sealed(&control, id, &action).await;
            }
            let outcome = match outcome {
                Ok(()) => action.run(&control, &progress).await,
                Err(e) => {
                    progress.line(&e);
                    Err(e)
                }
            };
            table.finish(id, outcome).await;
        });
    }

    async fn keep_sealed(
        &self,
        control: &Control,
        id: i64,
        action: &JobAction,
    ) -> Result<(), String> {
        let customer = action.customer();
        let name = m8trx_spec::CustomerName::parse(&customer).map_err(|e| e.to_string())?;
        let plain = serde_json::to_vec(action).map_err(|e| e.to_string())?;
        let s = sealed::seal(&control.clients.kms, &name, id, &plain)
            .await
            .map_err(|e| {
                format!(
                    "cannot keep the request at rest under {customer}'s key alias/m8trx-{customer} \
                     (a customer's key comes with its terraform customer-role module; deploy \
                     that first); nothing was changed: {e}"
                )
            })?;
        let text = stored(&StoredInput::Sealed(s));
        self.store
            .run(move |c| {
                c.execute(
                    "UPDATE jobs SET input = ?2 WHERE id = ?1",
                    params![id, text],
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Where job `id`'s progress lines go.
    fn progress(&self, id: i64) -> Progress {
        let writes = self.writes.clone();
        Progress::new(move |text| {
            let _ = writes.send(Write::Line {
                job: id,
                at: now(),
                text: text.to_owned(),
            });
        })
    }

    /// Records the end of job `id` after its lines, and drops its stored input.
    async fn finish(&self, job: i64, outcome: Result<serde_json::Value, String>) {
        let (done, wait) = oneshot::channel();
        if self
            .writes
            .send(Write::Finish { job, outcome, done })
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Starts again every job a previous control left running; returns how many.
    pub async fn resume(&self, control: Arc<Control>) -> Result<usize, StoreError> {
        let rows = self
            .store
            .run(|c| {
                let mut st = c.prepare(
                    "SELECT id, customer, input, starts FROM jobs WHERE state = 'running' ORDER BY id",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let count = rows.len();
        for (id, customer, input, starts) in rows {
            let progress = self.progress(id);
            let action = match self.reopen(&control, id, &customer, input, starts).await {
                Ok(a) => a,
                Err(e) => {
                    progress.line(format!("control restarted: {e}"));
                    self.finish(id, Err(e)).await;
                    continue;
                }
            };
            let start = starts + 1;
            self.store
                .run(move |c| {
                    c.execute(
                        "UPDATE jobs SET starts = ?2 WHERE id = ?1",
                        params![id, start],
                    )
                })
                .await?;
            progress.line(format!("control restarted: running this job again (start {start}); every step is idempotent"));
            tracing::info!(job = id, %customer, start, "resuming a job left running");
            self.spawn(control.clone(), id, action, start);
        }
        Ok(count)
    }

    async fn reopen(
        &self,
        control: &Control,
        id: i64,
        customer: &str,
        input: Option<String>,
        starts: i64,
    ) -> Result<JobAction, String> {
        if starts >= MAX_STARTS {
            return Err(format!(
                "started {starts} times without finishing; not started again (see control's log), submit it again once the cause is fixed"
            ));
        }
        let Some(input) = input else {
            return Err("control stopped before it stored this job's request, so nothing was changed yet; submit it again".into());
        };
        match serde_json::from_str::<StoredInput>(&input) {
            Ok(StoredInput::Plain(a)) => Ok(*a),
            Ok(StoredInput::Sealed(s)) => {
                let name = m8trx_spec::CustomerName::parse(customer).map_err(|e| e.to_string())?;
                let plain = sealed::open(&control.clients.kms, &name, id, &s)
                    .await
                    .map_err(|e| {
                        format!("cannot open the stored request (the customer's key decides): {e}")
                    })?;
                serde_json::from_slice(&plain)
                    .map_err(|e| format!("the stored request does not parse: {e}"))
            }
            Err(e) => Err(format!("the stored request does not parse: {e}")),
        }
    }

    /// Deletes finished jobs older than `retention`, now and then every minute.
    pub fn evict_every_minute(&self, retention: Duration) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let before = now() - retention.as_secs() as i64;
                match store.run(move |c| evict(c, before)).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(evicted = n, "finished jobs past their retention evicted")
                    }
                    Err(e) => tracing::error!("evicting old jobs failed: {e}"),
                }
            }
        });
    }

    /// The job with lines from `since` on.
    pub async fn get(&self, id: i64, since: i64) -> Result<Option<Job>, StoreError> {
        self.store.run(move |c| get(c, id, since)).await
    }

    /// Jobs without their lines, newest first, optionally of one customer or state.
    pub async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        self.store.run(move |c| list(c, &filter)).await
    }
}

fn stored(input: &StoredInput) -> String {
    // Serializing these types cannot fail (no maps with non-string keys).
    serde_json::to_string(input).unwrap_or_default()
}

fn insert(
    c: &mut Connection,
    kind: &str,
    customer: &str,
    token: Option<String>,
    idem: Option<Idempotency>,
    input: Option<String>,
) -> rusqlite::Result<Result<Submitted, SubmitError>> {
    let tx = c.transaction()?;
    if let Some(i) = &idem {
        let seen: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, request_hash FROM jobs WHERE token = ?1 AND idempotency_key = ?2",
                params![i.token, i.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, hash)) = seen {
            return Ok(match hash == i.request_hash {
                true => Ok(Submitted::Replayed(id)),
                false => Err(SubmitError::KeyReused(id)),
            });
        }
    }
    let busy: Option<i64> = tx
        .query_row(
            "SELECT id FROM jobs WHERE customer = ?1 AND state = 'running'",
            [customer],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = busy {
        return Ok(Err(SubmitError::Busy(id)));
    }
    tx.execute(
        "INSERT INTO jobs (kind, customer, state, created_at, token, idempotency_key, request_hash, input)
         VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
        params![
            kind,
            customer,
            now(),
            token,
            idem.as_ref().map(|i| &i.key),
            idem.as_ref().map(|i| &i.request_hash),
            input
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Ok(Submitted::Started(id)))
}

async fn write_loop(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let written = store
            .run(move |c| {
                let tx = c.transaction()?;
                let mut acks = Vec::new();
                for w in batch {
                    match w {
                        Write::Line { job, at, text } => {
                            tx.execute(
                                "INSERT INTO job_lines (job_id, seq, at, text)
                                 SELECT ?1, COALESCE(MAX(seq) + 1, 0), ?2, ?3 FROM job_lines WHERE job_id = ?1",
                                params![job, at, text],
                            )?;
                        }
                        Write::Finish { job, outcome, done } => {
                            let (state, result, error) = match outcome {
                                Ok(v) => (JobState::Succeeded, Some(v.to_string()), None),
                                Err(e) => (JobState::Failed, None, Some(e)),
                            };
                            tx.execute(
                                "UPDATE jobs SET state = ?2, finished_at = ?3, result = ?4, error = ?5, input = NULL
                                 WHERE id = ?1 AND state = 'running'",
                                params![job, state.as_str(), now(), result, error],
                            )?;
                            acks.push(done);
                        }
                    }
                }
                tx.commit()?;
                Ok(acks)
            })
            .await;
        match written {
            Ok(acks) => acks.into_iter().for_each(|a| {
                let _ = a.send(());
            }),
            Err(e) => tracing::error!(
                "writing job progress failed: {e}; a restart resumes jobs still marked running"
            ),
        }
    }
}

/// Deletes jobs finished before `before`; returns how many.
pub fn evict(c: &mut Connection, before: i64) -> rusqlite::Result<usize> {
    c.execute(
        "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
        [before],
    )
}

const COLUMNS: &str =
    "id, kind, customer, state, created_at, finished_at, starts, token, error, result";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        customer: r.get(2)?,
        state: JobState::parse(&r.get::<_, String>(3)?),
        created_at: r.get(4)?,
        finished_at: r.get(5)?,
        starts: r.get(6)?,
        token: r.get(7)?,
        lines: Vec::new(),
        error: r.get(8)?,
        result: r
            .get::<_, Option<String>>(9)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// Job `id` with its lines from `since` on.
pub fn get(c: &mut Connection, id: i64, since: i64) -> rusqlite::Result<Option<Job>> {
    let Some(mut job) = c
        .query_row(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut st = c.prepare(
        "SELECT seq, at, text FROM job_lines WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq",
    )?;
    job.lines = st
        .query_map(params![id, since], |r| {
            Ok(JobLine {
                seq: r.get(0)?,
                at: r.get(1)?,
                text: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(job))
}

/// Which jobs a list shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobFilter {
    /// Only this customer's.
    pub customer: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// Jobs without lines, newest first.
pub fn list(c: &mut Connection, f: &JobFilter) -> rusqlite::Result<Vec<Job>> {
    let mut st = c.prepare(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![
            f.customer,
            f.state.map(JobState::as_str),
            f.limit.unwrap_or(100)
        ],
        row,
    )?;
    rows.collect()
}

#[cfg(test)]
mod tests;
