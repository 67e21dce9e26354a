//! The short and long forms the compose specification allows for one key, each read into
//! one Rust type, so the policy and the deploy never look at raw YAML.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A scalar where compose means a string: `PORT: 8080`, `user: 1000`, `expose: [80]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `x` or `[x, y]` (`dns`, `dns_search`, `tmpfs`, `env_file`-like keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(Text),
            Many(Vec<Text>),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(t) => List(vec![t.0]),
            Form::Many(v) => List(v.into_iter().map(|t| t.0).collect()),
        })
    }
}

/// `environment`, `labels`, `sysctls`, `extra_hosts`: `[K=V, …]` or `{K: V}`. A key without a
/// value (`- K`, `K:`) has `None`: compose takes it from the environment (here, the tenant's env
/// file) or leaves it unset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs(pub Vec<(String, Option<String>)>);

impl Pairs {
    /// The pairs split on `sep` in the list form (`=` for most keys; `extra_hosts` also `:`).
    fn from_list(items: Vec<Text>, seps: &[char]) -> Self {
        Pairs(
            items
                .into_iter()
                .map(|t| match t.0.split_once(seps) {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (t.0, None),
                })
                .collect(),
        )
    }

    /// The keys, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PairsForm {
    List(Vec<Text>),
    Mapping(std::collections::BTreeMap<String, Option<Text>>),
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match PairsForm::deserialize(d)? {
            PairsForm::List(items) => Pairs::from_list(items, &['=']),
            PairsForm::Mapping(m) => {
                Pairs(m.into_iter().map(|(k, v)| (k, v.map(|t| t.0))).collect())
            }
        })
    }
}

/// `extra_hosts`: `["host:ip"]`, `["host=ip"]` or `{host: ip}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hosts(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = match PairsForm::deserialize(d)? {
            PairsForm::List(items) => Pairs::from_list(items, &['=', ':']),
            PairsForm::Mapping(m) => {
                Pairs(m.into_iter().map(|(k, v)| (k, v.map(|t| t.0))).collect())
            }
        };
        pairs
            .0
            .into_iter()
            .map(|(h, ip)| match ip {
                Some(ip) if !ip.is_empty() => Ok((h, ip)),
                _ => Err(de::Error::custom(format!(
                    "extra host {h:?} has no address; write host:address"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Hosts)
    }
}

/// `command` / `entrypoint` / `healthcheck.test`: a string (split into words as a shell
/// would, for command and entrypoint) or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `command: npm start`.
    Shell(String),
    /// `command: [npm, start]`.
    Exec(Vec<String>),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Shell(String),
            Exec(Vec<Text>),
        }
        Ok(match Form::deserialize(d)? {
            Form::Shell(s) => Command::Shell(s),
            Form::Exec(v) => Command::Exec(v.into_iter().map(|t| t.0).collect()),
        })
    }
}

/// A byte count: `268435456`, `256m`, `1g`, `512kb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub i64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Text::deserialize(d)?;
        parse_size(&t.0)
            .map(Bytes)
            .ok_or_else(|| de::Error::custom(format!("{:?} is not a size like 256m or 1g", t.0)))
    }
}

/// A duration: `1m30s`, `500ms`, `10s`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Text::deserialize(d)?;
        parse_duration(&t.0).map(Dur).ok_or_else(|| {
            de::Error::custom(format!(
                "{:?} is not a duration like 10s or 1m30s (at most 24h)",
                t.0
            ))
        })
    }
}

/// A file mode as compose reads it: a number is the mode itself (`0o440`, `288`), a string
/// is octal digits (`"0440"`; YAML 1.2 reads an unquoted `0440` as that string). Any scalar
/// reads; `mode` is `None` when it is no mode at all, and the policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMode {
    /// As written, for messages.
    pub written: String,
    /// The mode, when it is one (at most `0o7777`).
    pub mode: Option<u32>,
}

impl FileMode {
    fn number(v: i128) -> Self {
        Self {
            written: v.to_string(),
            mode: u32::try_from(v).ok().filter(|m| *m <= 0o7777),
        }
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a file mode like 0440 or 0o440")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
                Ok(FileMode::number(i128::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                Ok(FileMode::number(i128::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FileMode, E> {
                Ok(FileMode {
                    written: v.to_string(),
                    mode: None,
                })
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FileMode, E> {
                Ok(FileMode {
                    written: v.to_string(),
                    mode: None,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                let t = v.trim();
                let digits = t.strip_prefix("0o").unwrap_or(t);
                let mode = u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777 && !digits.starts_with(['+', '-']));
                Ok(FileMode {
                    written: format!("{v:?}"),
                    mode,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A CPU count: `0.5`, `"1.5"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus(pub f64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Text::deserialize(d)?;
        match t.0.trim().parse::<f64>() {
            Ok(c) if c.is_finite() => Ok(Cpus(c)),
            _ => Err(de::Error::custom(format!(
                "{:?} is not a number of CPUs like 0.5",
                t.0
            ))),
        }
    }
}

/// The longest duration any compose key may name: a day. Longer ones are mistakes (and
/// `99999999999999999999h` must not overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Compose durations: "1m30s", "500ms", "1.5s", "2h", "10us", or a bare number of seconds;
/// `None` for anything else, negative or longer than [`MAX_DURATION`]. Never panics.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n)).filter(|d| *d <= MAX_DURATION);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let n: f64 = num.parse().ok()?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        if !total.is_finite() || total > MAX_DURATION.as_secs_f64() {
            return None;
        }
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The largest size any compose key may name (1 TiB); larger ones are mistakes.
pub const MAX_SIZE: i64 = 1 << 40;

/// Docker sizes: "256m", "1g", "512k", "1024b", "64MB" or a bare byte count; `None` for
/// anything else, negative or above [`MAX_SIZE`]. Never panics.
pub fn parse_size(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let s = s
        .strip_suffix('b')
        .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        'b' => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    if num.starts_with('-') || num.starts_with('+') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let bytes = n * mult as f64;
    (bytes.is_finite() && bytes <= MAX_SIZE as f64).then_some(bytes as i64)
}

/// Splits a string into words the way a POSIX shell would for `command: npm run start`.
pub fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_without_panicking() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("25h"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.2.3s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn sizes_parse_without_overflow() {
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("1e400"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("2t"), None);
        assert_eq!(parse_size("inf"), None);
    }

    #[test]
    fn modes_read_as_compose_reads_them() {
        let mode = |yaml: &str| serde_norway::from_str::<FileMode>(yaml).unwrap().mode;
        // Unquoted 0440 is a string to YAML 1.2 and octal to compose; 0o440 and 288 are the
        // number itself, as compose (YAML 1.1 and Go) reads them.
        assert_eq!(mode("0440"), Some(0o440));
        assert_eq!(mode("\"0440\""), Some(0o440));
        assert_eq!(mode("\"440\""), Some(0o440));
        assert_eq!(mode("0o440"), Some(0o440));
        assert_eq!(mode("288"), Some(0o440));
        assert_eq!(mode("256"), Some(0o400));
        assert_eq!(mode("01777"), Some(0o1777));
        for bad in [
            "0888",
            "rw",
            "-1",
            "99999999999",
            "0o17777",
            "\"+7\"",
            "\"\"",
            "1.5",
            "true",
        ] {
            assert_eq!(mode(bad), None, "{bad}");
        }
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"sh -c 'echo "a b"; sleep 1'"#),
            ["sh", "-c", r#"echo "a b"; sleep 1"#]
        );
    }
}
