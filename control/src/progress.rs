//! Progress lines of a running operation: the CLI prints them, the API server stores them in
//! the job the dashboard polls. Secrets never go through here.

use std::fmt;
use std::sync::Arc;

/// Where an operation reports its steps; cheap to clone into sub-steps.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(&str) + Send + Sync>);

impl Progress {
    /// Reports each line to `sink`.
    pub fn new(sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// Drops every line (library callers that do not care).
    pub fn silent() -> Self {
        Self::new(|_| {})
    }

    /// Reports one step; also logged at info level.
    pub fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        tracing::info!(target: "control::progress", "{text}");
        (self.0)(text);
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Progress")
    }
}
