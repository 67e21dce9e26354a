//! When an idle tenant is frozen, when it is put to sleep, and when it wakes on its own: the
//! `idle` section of the tenant spec. Idle means no open and no new connection through
//! sni-proxy for any of the tenant's names and the tenant's CPU below `cpu_below`; frozen
//! keeps processes and memory (the cgroup freezer), asleep stops containers and engine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The idle policy of one tenant; every field has a default (see [`Idle::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Idle {
    /// Idle this long → frozen; `0` never freezes.
    pub freeze_after: Window,
    /// Idle this long (counted from the last activity, not from the freeze) → asleep;
    /// `0` never sleeps. Longer than `freeze_after` when both are set.
    pub sleep_after: Window,
    /// CPU cores below which the tenant counts as idle (averaged over hostd's sampling
    /// interval), so a busy background job keeps it awake.
    pub cpu_below: f64,
    /// Standard 5-field cron patterns (UTC): the tenant is woken at these times and counts
    /// as active then, e.g. `0 7 * * 1-5` before a working day.
    pub wake_at: Vec<String>,
}

/// The idle window every template gets unless the spec says otherwise: 30 minutes.
pub const DEFAULT_FREEZE_AFTER: Window = Window(30 * 60);
/// Asleep after two hours without activity.
pub const DEFAULT_SLEEP_AFTER: Window = Window(2 * 3600);
/// A twentieth of a core.
pub const DEFAULT_CPU_BELOW: f64 = 0.05;
/// When a tenant with its own TLS is woken by default: weekly, for its certificate renewal.
pub const WEEKLY_RENEWAL_WAKE: &str = "0 4 * * 1";
/// The shortest non-zero window: below it a tenant would freeze between two requests.
pub const MIN_WINDOW: Window = Window(5);

impl Default for Idle {
    fn default() -> Self {
        Self {
            freeze_after: DEFAULT_FREEZE_AFTER,
            sleep_after: DEFAULT_SLEEP_AFTER,
            cpu_below: DEFAULT_CPU_BELOW,
            wake_at: Vec::new(),
        }
    }
}

impl Idle {
    /// Checks what serde cannot: window order, the CPU threshold against the tenant's CPU,
    /// and that every cron pattern parses. Errors are `(field, message)`.
    pub fn validate(&self, tenant_cpu: f64) -> Result<(), (String, String)> {
        for (field, w) in [
            ("idle.freeze_after", self.freeze_after),
            ("idle.sleep_after", self.sleep_after),
        ] {
            if w.0 != 0 && w < MIN_WINDOW {
                return Err((
                    field.into(),
                    format!("{w} is shorter than {MIN_WINDOW}; use 0 to turn it off"),
                ));
            }
        }
        if self.freeze_after.0 != 0
            && self.sleep_after.0 != 0
            && self.sleep_after <= self.freeze_after
        {
            return Err((
                "idle.sleep_after".into(),
                format!(
                    "{} must be longer than freeze_after ({}): a tenant freezes first, then sleeps",
                    self.sleep_after, self.freeze_after
                ),
            ));
        }
        if !(self.cpu_below.is_finite() && self.cpu_below > 0.0 && self.cpu_below <= tenant_cpu) {
            return Err((
                "idle.cpu_below".into(),
                format!(
                    "must be above 0 and at most the tenant's limits.cpu ({tenant_cpu}), got {}",
                    self.cpu_below
                ),
            ));
        }
        for (i, p) in self.wake_at.iter().enumerate() {
            parse_cron(p).map_err(|m| (format!("idle.wake_at[{i}]"), m))?;
        }
        Ok(())
    }

    /// Whether the tenant ever leaves the active state on its own.
    pub fn enabled(&self) -> bool {
        self.freeze_after.0 != 0 || self.sleep_after.0 != 0
    }
}

/// Parses one `wake_at` pattern: standard 5 fields (minute hour day-of-month month
/// day-of-week), UTC.
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    if pattern.split_whitespace().count() != 5 {
        return Err(format!(
            "{pattern:?} is not a 5-field cron pattern (minute hour day-of-month month day-of-week)"
        ));
    }
    croner::Cron::from_str(pattern).map_err(|e| format!("{pattern:?}: {e}"))
}

/// A length of time in whole seconds, written `90s`, `30m`, `2h`, `1d` or a number of
/// seconds; `0` turns the window off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "String")]
pub struct Window(pub u64);

impl Window {
    /// Parses `90s`, `30m`, `2h`, `1d` or plain seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30m or 2h"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?} (use s, m, h, d)"
                ))
            }
        };
        n.checked_mul(mult)
            .filter(|s| *s <= 366 * 86_400)
            .map(Window)
            .ok_or_else(|| format!("{text:?} is longer than a year"))
    }
}

impl TryFrom<serde_json::Value> for Window {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| format!("{n} is not a number of seconds"))
                .and_then(|s| Window::parse(&s.to_string())),
            serde_json::Value::String(s) => Window::parse(&s),
            other => Err(format!("{other:?} is not a duration like 30m or 2h")),
        }
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match s {
            0 => write!(f, "0"),
            s if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            s if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            s if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_print_as_written() {
        assert_eq!(Window::parse("30m"), Ok(Window(1800)));
        assert_eq!(Window::parse("2h"), Ok(Window(7200)));
        assert_eq!(Window::parse("90"), Ok(Window(90)));
        assert_eq!(Window::parse("0"), Ok(Window(0)));
        assert!(Window::parse("5w").unwrap_err().contains("unknown unit"));
        assert!(Window::parse("999999999999999999d").is_err());
        assert!(Window::parse("-1s").is_err());
        for w in ["30m", "2h", "1d", "90s", "0"] {
            assert_eq!(Window::parse(w).unwrap().to_string(), w);
        }
    }

    #[test]
    fn bad_policies_name_their_field() {
        let field = |i: Idle| i.validate(1.0).unwrap_err().0;
        let base = Idle::default();
        assert!(base.validate(1.0).is_ok());
        assert_eq!(
            field(Idle {
                sleep_after: Window(600),
                freeze_after: Window(3600),
                ..base.clone()
            }),
            "idle.sleep_after"
        );
        assert_eq!(
            field(Idle {
                freeze_after: Window(2),
                ..base.clone()
            }),
            "idle.freeze_after"
        );
        assert_eq!(
            field(Idle {
                cpu_below: 2.0,
                ..base.clone()
            }),
            "idle.cpu_below"
        );
        assert_eq!(
            field(Idle {
                wake_at: vec!["0 7 * * 1-5".into(), "every morning".into()],
                ..base.clone()
            }),
            "idle.wake_at[1]"
        );
        assert_eq!(
            field(Idle {
                wake_at: vec!["0 0 7 * * *".into()],
                ..base
            }),
            "idle.wake_at[0]"
        );
        // Freezing off, sleeping on: straight to sleep.
        let direct = Idle {
            freeze_after: Window(0),
            sleep_after: Window(600),
            ..Idle::default()
        };
        assert!(direct.validate(1.0).is_ok());
        assert!(direct.enabled());
    }
}
