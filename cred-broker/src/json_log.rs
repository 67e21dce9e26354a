//! JSON log lines written straight into tracing's line buffer, for `--log-format json`.
//!
//! The broker writes one audit line per credentials request. With tracing-subscriber's own
//! JSON formatter that line was 1.5 µs of the 2.5 µs a cached request took (perf; see
//! docs/benchmarks.md): it serializes through serde into an adaptor that re-checks UTF-8 on
//! every piece, and formats the whole timestamp per line. This formatter writes the same
//! object — `timestamp`, `level`, the event's fields flattened, `target` — with the fields
//! escaped in place and the timestamp's seconds formatted once per second. Filtering, the
//! writer and everything else stay tracing's. The broker opens no spans, so there are no
//! span fields (tracing's formatter would add them).

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format; `fmt().event_format(JsonLines)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        timestamp(&mut w, SystemTime::now())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.w.write_char(',')?;
                string(self.w, field.name())?;
                self.w.write_char(':')?;
                value(self.w)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes null for them too.
        self.field(field, |w| match value.is_finite() {
            true => write!(w, "{value}"),
            false => w.write_str("null"),
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string: quoted and escaped.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string (RFC 8259 section 7).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if esc.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(esc)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

thread_local! {
    /// The last second formatted on this thread, as `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 UTC with microseconds, as tracing's default timer writes it.
fn timestamp(w: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != d.as_secs() {
            let full = crate::sts::rfc3339(now);
            cached.1.clear();
            cached.1.push_str(full.trim_end_matches('Z'));
            cached.0 = d.as_secs();
        }
        write!(w, "{}.{:06}Z", cached.1, d.subsec_micros())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// A writer collecting what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn emit() {
        let ip: std::net::IpAddr = "10.250.3.7".parse().unwrap();
        let err = io::Error::other("a \"quoted\"\nerror");
        tracing::info!(
            target: "audit",
            tenant = "acme",
            source = %ip,
            status = 200u16,
            delta = -3i64,
            ok = true,
            ratio = 0.5f64,
            odd = "tab\there \\ ctl\u{1} é",
            error = &err as &(dyn std::error::Error + 'static),
            "credentials request {}", 7
        );
    }

    fn lines(json: bool) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let b = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false);
        if json {
            tracing::subscriber::with_default(b.json().flatten_event(true).finish(), emit);
        } else {
            tracing::subscriber::with_default(b.event_format(JsonLines).finish(), emit);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_are_what_tracing_json_writes() {
        let (mut ours, mut theirs) = (lines(false), lines(true));
        assert_eq!(ours.len(), 1);
        let (o, t) = (&mut ours[0], &mut theirs[0]);
        let ts = o["timestamp"].as_str().unwrap().to_owned();
        assert_eq!(ts.len(), "2026-12-07T19:39:00.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        o.as_object_mut().unwrap().remove("timestamp");
        t.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(o, t);
        assert_eq!(o["message"], "credentials request 7");
        assert_eq!(o["odd"], "tab\there \\ ctl\u{1} é");
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        let mut s = String::new();
        let at =
            |secs: u64, micros: u32| UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000);
        timestamp(&mut Writer::new(&mut s), at(1_796_000_000, 5)).unwrap();
        s.push(' ');
        timestamp(&mut Writer::new(&mut s), at(1_796_000_001, 999_999)).unwrap();
        assert_eq!(s, "2026-11-30T00:53:20.000005Z 2026-11-30T00:53:21.999999Z");
    }
}
