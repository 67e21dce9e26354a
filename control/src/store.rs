//! control's durable state: one SQLite file with the API's tokens (hashed) and its jobs with
//! their progress lines, so a restart — even `kill -9` — loses neither. SQLite is
//! synchronous: async callers go through [`Store::run`], which runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

/// The schema, one entry per version; a database at version N runs entries N.. on open.
const MIGRATIONS: &[&str] = &[
    // 1: tokens and jobs.
    "CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        customer TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        starts INTEGER NOT NULL DEFAULT 1,
        token TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        input TEXT,
        error TEXT,
        result TEXT
    );
    -- One running job per customer, kept by the database itself.
    CREATE UNIQUE INDEX jobs_one_running ON jobs (customer) WHERE state = 'running';
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (token, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE job_lines (
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );",
];

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation.
    #[error("control state {path}: {source}; check the file's permissions and free space")]
    Db {
        /// The state file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file or its directory could not be made.
    #[error("control state {path}: {source}; pass --state-db PATH to put it elsewhere")]
    Io {
        /// The state file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The blocking task running the operation panicked or was cancelled.
    #[error("control state: the operation did not complete: {0}")]
    Task(String),
}

/// The open state file. One connection: SQLite has one writer at a time anyway, and each
/// operation is a few rows.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating, mode 0600 in a 0700 directory) and migrates the state file.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        // Created here with 0600 so SQLite never makes it with the umask's mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let conn = Connection::open(path).map_err(|source| StoreError::Db {
            path: path.to_owned(),
            source,
        })?;
        Self::setup(path.to_owned(), conn)
    }

    /// A private in-memory store (unit tests; nothing survives).
    pub fn memory() -> Result<Arc<Self>, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Db {
            path: path.clone(),
            source,
        })?;
        Self::setup(path, conn)
    }

    fn setup(path: PathBuf, mut conn: Connection) -> Result<Arc<Self>, StoreError> {
        let db = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        // WAL: readers (`control jobs`) never block the server. FULL: a job's state change
        // is on disk before the API answers, even across a power cut.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Task(format!(
                "{} is at schema version {version}, newer than this control knows ({}); run the newer control",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(Arc::new(Self {
            path,
            conn: Mutex::new(conn),
        }))
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (its own transactions).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection, on this thread (the CLI; tests).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        f(&mut self.lock()).map_err(|source| StoreError::Db {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs `f` on the connection on the blocking pool (async callers).
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.with(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_file_and_reopens_it_without_migrating_twice() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("m8trx-store-{}", std::process::id()));
        let path = dir.join("sub/control.db");
        let s = Store::open(&path).unwrap();
        s.with(|c| {
            c.execute(
                "INSERT INTO tokens (name, hash, scopes, created_at) VALUES ('a', 'h', 'read', 1)",
                [],
            )
        })
        .unwrap();
        drop(s);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let s = Store::open(&path).unwrap();
        let n: i64 = s
            .with(|c| c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1, "reopening keeps the rows");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
