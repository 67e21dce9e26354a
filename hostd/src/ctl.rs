//! `hostd ctl`: the operator's client for the daemon's unix-socket API. Human output by
//! default, `--json` for scripts (control drives it through SSM Run Command).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Exit codes of `hostd ctl`, documented in `--help`; hostd's own refusals and failures
/// exit with their [`ErrorKind::exit_code`].
pub mod exit {
    /// The operation succeeded.
    pub const OK: i32 = 0;
    /// The operation failed; the message says why.
    pub const FAILED: i32 = 1;
    /// Bad command line or input file.
    pub const USAGE: i32 = 2;
    /// hostd could not be reached on its socket.
    pub const UNREACHABLE: i32 = 3;
}

use crate::error::ErrorKind;

/// A failed `ctl` call: the message for the operator and the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CtlError {
    /// What went wrong and what to do.
    pub message: String,
    /// Process exit code.
    pub code: i32,
}

fn fail(code: i32, message: impl Into<String>) -> CtlError {
    CtlError {
        message: message.into(),
        code,
    }
}

/// A request body: small ones in memory, image tarballs streamed from their file.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A request body from a string (spec or compose file); empty for `None`.
pub fn text_body(body: Option<String>) -> RequestBody {
    Full::new(Bytes::from(body.unwrap_or_default()))
        .map_err(|never| match never {})
        .boxed()
}

/// A request body streamed from a file, so a large image tarball is never held whole.
pub async fn file_body(path: &Path) -> Result<RequestBody, CtlError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))?;
    let frames = tokio_util::io::ReaderStream::new(f).map_ok(hyper::body::Frame::data);
    Ok(http_body_util::StreamBody::new(frames).boxed())
}

/// One API call: sends the request and hands every JSON line of the answer to `on_line`.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: RequestBody,
    on_line: &mut dyn FnMut(Value),
) -> Result<u16, CtlError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        fail(
            exit::UNREACHABLE,
            format!(
                "cannot reach hostd at {}: {e}; is `hostd serve` running (as root)?",
                socket.display()
            ),
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(exit::UNREACHABLE, format!("hostd handshake failed: {e}")))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "hostd")
        .body(body)
        .map_err(|e| fail(exit::FAILED, e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(exit::UNREACHABLE, format!("hostd request failed: {e}")))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| fail(exit::FAILED, format!("reading hostd's answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice(&line) {
                    on_line(v);
                }
            }
        }
    }
    if !pending.is_empty() {
        if let Ok(v) = serde_json::from_slice(&pending) {
            on_line(v);
        }
    }
    Ok(status)
}

/// Runs a call the way the CLI shows it: progress lines to stderr, log lines and the
/// result to stdout.
pub async fn run(
    socket: &Path,
    method: Method,
    path: &str,
    body: RequestBody,
    json: bool,
) -> Result<Value, CtlError> {
    use std::io::Write;
    let mut result = None;
    let mut err: Option<(String, Option<ErrorKind>)> = None;
    let status = call(socket, method, path, body, &mut |v| {
        if let (Some(c), Some(l)) = (
            v.get("container").and_then(Value::as_str),
            v.get("log").and_then(Value::as_str),
        ) {
            if json {
                println!("{v}");
            } else {
                print!("{c} | {l}");
                if !l.ends_with('\n') {
                    println!();
                }
            }
            let _ = std::io::stdout().flush();
        } else if let Some(p) = v.get("progress").and_then(Value::as_str) {
            if json {
                println!("{v}");
            } else {
                eprintln!("  {p}");
            }
        } else if let Some(e) = v.get("error") {
            let kind = v
                .get("kind")
                .and_then(|k| serde_json::from_value::<ErrorKind>(k.clone()).ok());
            err = Some((
                e.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string()),
                kind,
            ));
        } else if let Some(ok) = v.get("ok") {
            result = Some(ok.clone());
        } else {
            result = Some(v);
        }
    })
    .await?;
    if let Some((e, kind)) = err {
        let kind = kind.unwrap_or_else(|| match status {
            200..=299 => ErrorKind::Failed,
            s => ErrorKind::from_http_status(s),
        });
        return Err(fail(kind.exit_code(), format!("hostd: {e}")));
    }
    if !(200..300).contains(&status) {
        return Err(fail(
            ErrorKind::from_http_status(status).exit_code(),
            format!("hostd answered HTTP {status}"),
        ));
    }
    Ok(result.unwrap_or(Value::Null))
}

/// Renders tenant summaries as a table for humans.
pub fn table(tenants: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:>4} {:<8} {:<13} {:>8} {:>9} {:<11} {}\n",
        "NAME", "TEMPLATE", "SLOT", "DESIRED", "POWER", "ENGINE", "RSS MiB", "NETWORK", "REVISION"
    );
    for t in tenants {
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        if let Some(reason) = t.get("broken").and_then(Value::as_str) {
            out.push_str(&format!("{:<24} broken: {reason}\n", s("name")));
            continue;
        }
        let pid = t
            .get("engine_pid")
            .and_then(Value::as_u64)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "stopped".into());
        let rss = t
            .get("engine_rss_bytes")
            .and_then(Value::as_u64)
            .map(|b| format!("{:.1}", b as f64 / 1048576.0))
            .unwrap_or_else(|| "-".into());
        let slot = t.get("slot").and_then(Value::as_u64).unwrap_or(0);
        let network = if t.get("quarantined").and_then(Value::as_bool) == Some(true) {
            "quarantined"
        } else {
            "open"
        };
        let revision = match t.get("deployment").filter(|d| !d.is_null()) {
            None => "-".to_owned(),
            Some(d) => {
                let n = d.get("revision").and_then(Value::as_u64).unwrap_or(0);
                if d.get("error").is_some_and(|e| !e.is_null()) {
                    format!("{n} (failed)")
                } else if d.get("deployed_at").is_some_and(|e| !e.is_null()) {
                    n.to_string()
                } else {
                    format!("{n} (deploying)")
                }
            }
        };
        // A power change under way shows where it is going: `to-asleep 3s`.
        let settled = t.get("power_settled").and_then(Value::as_bool) != Some(false);
        let word = if settled {
            s("power")
        } else {
            format!("to-{}", s("power"))
        };
        let power = match t.get("power_since").and_then(Value::as_u64) {
            Some(since) => format!("{word} {}", age(since)),
            None => word,
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:>4} {:<8} {:<13} {:>8} {:>9} {:<11} {}\n",
            s("name"),
            s("template"),
            slot,
            s("desired"),
            power,
            pid,
            rss,
            network,
            revision
        ));
    }
    out
}

/// How long ago `since` (seconds since the epoch) was, as `45s`, `12m`, `3h` or `2d`.
fn age(since: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(since) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The details `hostd ctl status` prints below the table: the power state and idle policy,
/// the deployment and any step whose effect is not in place.
pub fn details(t: &Value) -> String {
    let mut out = String::new();
    let when = |k: &str, d: &Value| {
        d.get(k).and_then(Value::as_u64).map(|secs| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        })
    };
    if let Some(p) = t.get("power").and_then(Value::as_str) {
        let going = t.get("power_settled").and_then(Value::as_bool) == Some(false);
        out.push_str(&format!(
            "power: {}{p} since {}",
            if going { "going to " } else { "" },
            when("power_since", t).unwrap_or_else(|| "-".into())
        ));
        if let Some(i) = t.get("idle") {
            let f = |k: &str| {
                i.get(k)
                    .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
            };
            out.push_str(&format!(
                "; idle: freeze after {}, sleep after {}, CPU below {} cores",
                f("freeze_after").unwrap_or_default(),
                f("sleep_after").unwrap_or_default(),
                f("cpu_below").unwrap_or_default()
            ));
            if let Some(w) = i
                .get("wake_at")
                .and_then(Value::as_array)
                .filter(|w| !w.is_empty())
            {
                let w: Vec<&str> = w.iter().filter_map(Value::as_str).collect();
                out.push_str(&format!(", woken at {}", w.join(" | ")));
            }
        }
        out.push('\n');
        if let Some(e) = t.get("wake_error").and_then(Value::as_str) {
            out.push_str(&format!("last wake failed (put back to sleep): {e}\n"));
        }
    }
    if let Some(d) = t.get("deployment").filter(|d| !d.is_null()) {
        let n = d.get("revision").and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "deployment: revision {n}, accepted {}",
            when("accepted_at", d).unwrap_or_else(|| "-".into())
        ));
        if let Some(at) = when("deployed_at", d) {
            out.push_str(&format!(", deployed {at}"));
        }
        if let Some(e) = d.get("error").and_then(Value::as_str) {
            out.push_str(&format!(", last attempt failed: {e}"));
        }
        out.push('\n');
    } else {
        out.push_str("deployment: none (`hostd ctl deploy NAME -f compose.yml`)\n");
    }
    if let Some(steps) = t.get("steps_not_in_place").and_then(Value::as_array) {
        if !steps.is_empty() {
            let names: Vec<String> = steps
                .iter()
                .map(|s| s.as_str().unwrap_or("?").to_owned())
                .collect();
            out.push_str(&format!(
                "not in place: {} (the supervisor or `hostd ctl create` repairs what it can)\n",
                names.join(", ")
            ));
        }
    }
    out
}

/// Reads an input file named on the command line, with a usage error naming it.
/// A compose file with its optional env file and included files, as `deploy` sends them
/// and `check` reads them.
pub fn read_bundle(
    file: &PathBuf,
    env_file: Option<&PathBuf>,
    include: &[PathBuf],
) -> Result<crate::compose::Bundle, CtlError> {
    let base = file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut files = std::collections::BTreeMap::new();
    for inc in include {
        let name = inc.to_string_lossy();
        let rel = crate::compose::normalize_path(&name).ok_or_else(|| {
            fail(
                exit::USAGE,
                format!("--include {name}: give a path relative to the compose file's directory, without `..` (as the compose file names it)"),
            )
        })?;
        include_path(&base, &rel, &mut files)?;
    }
    Ok(crate::compose::Bundle {
        compose: read_input(file)?,
        env: match env_file {
            Some(f) => read_env_file(f)?,
            None => Default::default(),
        },
        files,
    })
}

/// A whole deploy from one JSON file (`--bundle`), as the API takes it.
pub fn read_bundle_json(path: &PathBuf) -> Result<crate::compose::Bundle, CtlError> {
    serde_json::from_str(&read_input(path)?).map_err(|e| {
        fail(
            exit::USAGE,
            format!(
                "{}: not a deploy bundle ({{\"compose\", \"env\", \"files\"}}): {e}",
                path.display()
            ),
        )
    })
}

/// Adds `rel` (a file, or every file under a directory) to `files`, read from `base/rel`.
fn include_path(
    base: &std::path::Path,
    rel: &str,
    files: &mut std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<(), CtlError> {
    let path = base.join(rel);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| {
        fail(
            exit::USAGE,
            format!("--include {rel}: cannot read {}: {e}", path.display()),
        )
    })?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| fail(exit::USAGE, format!("--include {rel}: {e}")))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            include_path(base, &child, files)?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        return Err(fail(
            exit::USAGE,
            format!(
                "--include {rel}: {} is not a regular file or directory (links are not followed)",
                path.display()
            ),
        ));
    }
    let data =
        std::fs::read(&path).map_err(|e| fail(exit::USAGE, format!("--include {rel}: {e}")))?;
    files.insert(rel.to_owned(), data);
    Ok(())
}

/// Reads an env file (`--env-file`); a bad line is a usage error naming the line.
pub fn read_env_file(
    path: &PathBuf,
) -> Result<std::collections::BTreeMap<String, String>, CtlError> {
    let text = read_input(path)?;
    crate::compose::parse_env_file(&text).map_err(|errors| {
        fail(
            exit::USAGE,
            format!("{}: {}", path.display(), errors.join("; ")),
        )
    })
}

/// Reads a file named on the command line; unreadable is a usage error.
pub fn read_input(path: &PathBuf) -> Result<String, CtlError> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))
}
