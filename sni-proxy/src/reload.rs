//! The live routes table and the three ways to reload it: file watch, SIGHUP, admin socket.
//!
//! A reload builds a whole new table and swaps it in; a file that does not validate is
//! refused with a log line and the old table stays. Established connections never look at
//! the table again, so a reload cannot drop them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::routes::{ConfigError, RouteTable, RoutesFile};

/// The routes file and the table built from it.
#[derive(Debug)]
pub struct Routes {
    path: PathBuf,
    table: RwLock<Arc<RouteTable>>,
    /// Serialises reloads and admin edits so two never interleave.
    edit: Mutex<()>,
    /// Bumped on every swap, for those who follow the table (terminate-mode certificates).
    version: tokio::sync::watch::Sender<u64>,
}

impl Routes {
    /// Loads the file once; the proxy refuses to start on an invalid file.
    pub fn load(path: &Path) -> Result<Routes, ConfigError> {
        let table = RouteTable::load(path)?;
        Ok(Routes {
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
            edit: Mutex::new(()),
            version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The routes file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn swap(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever a new table is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Re-reads the file; on success the new table serves every new connection.
    pub async fn reload(&self, why: &str, metrics: &Metrics) -> Result<usize, ConfigError> {
        let _g = self.edit.lock().await;
        let res = RouteTable::load(&self.path);
        metrics.reload(res.is_ok());
        match res {
            Ok(t) => {
                let n = t.len();
                self.swap(t);
                info!(trigger = why, routes = n, file = %self.path.display(), "routes reloaded");
                Ok(n)
            }
            Err(e) => {
                error!(trigger = why, error = %e, "routes reload refused; the previous routes stay in force");
                Err(e)
            }
        }
    }

    /// Applies `change` to the file's content, writes the file atomically, then swaps the table.
    pub async fn edit<F>(&self, change: F, metrics: &Metrics) -> Result<usize, String>
    where
        F: FnOnce(&mut RoutesFile) -> Result<(), String>,
    {
        let _g = self.edit.lock().await;
        let mut file = RouteTable::load(&self.path)
            .map_err(|e| e.to_string())?
            .source;
        change(&mut file)?;
        let table = RouteTable::build(file, "admin edit").map_err(|e| e.to_string())?;
        let text = toml::to_string(&table.source).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("tmp-admin");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        let n = table.len();
        self.swap(table);
        metrics.reload(true);
        info!(trigger = "admin", routes = n, file = %self.path.display(), "routes edited and reloaded");
        Ok(n)
    }
}

/// A cheap fingerprint of the file: changes when it is rewritten, replaced or renamed over.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Polls the routes file every `every` and reloads when it changed.
pub async fn watch_file(routes: Arc<Routes>, metrics: Arc<Metrics>, every: Duration) {
    let mut last = fingerprint(routes.path());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = fingerprint(routes.path());
        if now != last && now.is_some() {
            last = now;
            let _ = routes.reload("file-watch", &metrics).await;
        }
    }
}

/// Reloads on every SIGHUP.
pub async fn on_sighup(routes: Arc<Routes>, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    while hup.recv().await.is_some() {
        let _ = routes.reload("SIGHUP", &metrics).await;
    }
    Ok(())
}
