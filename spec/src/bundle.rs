//! What one deploy carries: the compose file as submitted, the tenant's variables (an env
//! file, as `docker compose --env-file` reads it) and the files the compose file mounts
//! (`configs`/`secrets` with `file:`, read-only binds of `./relative` paths). The whole
//! bundle is kept on the tenant's encrypted volume (hostd's `compose::files`), so a redeploy
//! after a reboot interpolates exactly what the first deploy did, and hostd's record on the
//! host disk holds only digests: inline secrets and variables never leave the customer's volume. Shared by hostd
//! (which checks and deploys it) and control (which forwards it from the dashboard).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A deploy's inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The compose file, exactly as submitted.
    pub compose: String,
    /// Variables for interpolation, `environment` keys without a value and
    /// `COMPOSE_PROFILES`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files by their path relative to the compose file (`conf/nginx.conf`), contents in
    /// base64 on the wire.
    #[serde(default, with = "base64_files")]
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The most files one bundle may carry.
pub const MAX_FILES: usize = 200;
/// The largest file of a bundle (and the largest inline `content`).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// The most bytes all files of a bundle may carry together.
pub const MAX_BUNDLE_BYTES: usize = 8 << 20;

/// `./conf/app.ini` as `conf/app.ini`; `None` for anything that is not a plain relative
/// path inside the bundle (absolute, `..`, `~`, empty components, odd characters).
pub fn normalize_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => continue,
            ".." => return None,
            c if c.len() <= 255
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-+@=,".contains(ch)) =>
            {
                parts.push(c)
            }
            _ => return None,
        }
    }
    if path.starts_with(['/', '~']) || parts.is_empty() || parts.len() > 16 {
        return None;
    }
    Some(parts.join("/"))
}

/// Problems with the bundle's files themselves (paths and sizes), each naming the file.
pub fn check_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    if files.len() > MAX_FILES {
        out.push(format!(
            "{} files; at most {MAX_FILES} per deploy",
            files.len()
        ));
    }
    let mut total = 0usize;
    for (path, data) in files {
        if normalize_path(path).as_deref() != Some(path.as_str()) {
            out.push(format!("file {path:?}: a relative path of plain names (letters, digits, ._-+@=,), without `..` or `./`"));
        }
        if data.len() > MAX_FILE_BYTES {
            out.push(format!(
                "file {path:?}: {} bytes; at most {MAX_FILE_BYTES} per file",
                data.len()
            ));
        }
        total = total.saturating_add(data.len());
    }
    if total > MAX_BUNDLE_BYTES {
        out.push(format!(
            "the files hold {total} bytes together; at most {MAX_BUNDLE_BYTES}"
        ));
    }
    for path in files.keys() {
        // A file cannot also be a directory of the bundle (`a` and `a/b`).
        if files.keys().any(|o| o.starts_with(&format!("{path}/"))) {
            out.push(format!("file {path:?} is also a directory of the bundle"));
        }
    }
    out
}

/// The sha256 (hex) of one file's bytes, as the record keeps it.
pub fn file_digest(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The digest of a whole bundle (compose, variables, files): the name of its directory on
/// the tenant volume.
pub fn bundle_digest(b: &Bundle) -> String {
    let mut h = Sha256::new();
    h.update((b.compose.len() as u64).to_le_bytes());
    h.update(b.compose.as_bytes());
    // Each section is counted, so a variable can never hash like a file of the same name.
    h.update((b.env.len() as u64).to_le_bytes());
    for (k, v) in &b.env {
        for part in [k.as_bytes(), v.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.update((b.files.len() as u64).to_le_bytes());
    for (k, v) in &b.files {
        for part in [k.as_bytes(), v.as_slice()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    hex(&h.finalize())[..32].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files as `{path: base64}` in JSON: file contents need not be UTF-8.
mod base64_files {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: BTreeMap<&String, String> = files
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let encoded = BTreeMap::<String, String>::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map(|b| (k.clone(), b))
                    .map_err(|e| serde::de::Error::custom(format!("file {k:?}: not base64: {e}")))
            })
            .collect()
    }
}

impl Bundle {
    /// A bundle of just a compose file (no variables, no files).
    pub fn of(compose: impl Into<String>) -> Self {
        Self {
            compose: compose.into(),
            ..Default::default()
        }
    }

    /// The variables as the loader takes them.
    pub fn vars(&self) -> HashMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The most variables one env file may hold.
pub const MAX_VARS: usize = 1000;

/// Reads an env file as docker compose does: `KEY=VALUE` per line, `#` comments and blank
/// lines skipped, an optional `export ` prefix, values in single quotes taken literally and
/// in double quotes with `\n`, `\"` and `\\` escapes; unquoted values end at ` #`. Every bad
/// line is reported (`line N: …`).
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("line {n}: {line:?} is not KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            errors.push(format!(
                "line {n}: {key:?} is not a variable name (letters, digits, _)"
            ));
            continue;
        }
        let value = value.trim_start();
        let parsed = if let Some(rest) = value.strip_prefix('\'') {
            rest.find('\'').map(|end| rest[..end].to_owned())
        } else if let Some(rest) = value.strip_prefix('"') {
            unescape_double(rest)
        } else {
            Some(match value.find(" #") {
                Some(c) => value[..c].trim_end().to_owned(),
                None => value.trim_end().to_owned(),
            })
        };
        match parsed {
            Some(v) => {
                vars.insert(key.to_owned(), v);
            }
            None => errors.push(format!(
                "line {n}: the quote of {key}'s value is never closed"
            )),
        }
    }
    if vars.len() > MAX_VARS {
        errors.push(format!("{} variables; at most {MAX_VARS}", vars.len()));
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

fn unescape_double(rest: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_compose() {
        let v = parse_env_file(
            "# comment\n\nA=1\nexport B = two words # note\nC='lit $X # not a comment'\nD=\"line\\nnext \\\"q\\\"\"\nE=\n",
        )
        .unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two words");
        assert_eq!(v["C"], "lit $X # not a comment");
        assert_eq!(v["D"], "line\nnext \"q\"");
        assert_eq!(v["E"], "");
    }

    #[test]
    fn bundle_paths_are_plain_and_relative() {
        assert_eq!(
            normalize_path("./conf//app.ini").as_deref(),
            Some("conf/app.ini")
        );
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../b",
            "~/x",
            "",
            ".",
            "a b",
            "a/\u{0}",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad:?}");
        }
        let files = BTreeMap::from([
            ("a".to_owned(), vec![1]),
            ("a/b".to_owned(), vec![2]),
            ("./c".to_owned(), vec![3]),
            ("big".to_owned(), vec![0; MAX_FILE_BYTES + 1]),
        ]);
        let p = check_files(&files);
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn files_travel_as_base64_and_change_the_digest() {
        let mut b = Bundle {
            compose: "services: {}".into(),
            files: BTreeMap::from([("bin".to_owned(), vec![0, 255, 10])]),
            ..Default::default()
        };
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("\"bin\":\"AP8K\""), "{json}");
        assert_eq!(serde_json::from_str::<Bundle>(&json).unwrap(), b);
        let before = bundle_digest(&b);
        b.files.insert("bin".into(), vec![0, 255, 11]);
        assert_ne!(before, bundle_digest(&b));
        assert!(serde_json::from_str::<Bundle>(r#"{"compose":"","files":{"x":"%%"}}"#).is_err());
    }

    #[test]
    fn a_variable_never_hashes_like_a_file_of_the_same_name() {
        let as_var = Bundle {
            compose: "services: {}".into(),
            env: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        let as_file = Bundle {
            compose: "services: {}".into(),
            files: BTreeMap::from([("k".to_owned(), b"v".to_vec())]),
            ..Default::default()
        };
        assert_ne!(bundle_digest(&as_var), bundle_digest(&as_file));
    }

    #[test]
    fn every_bad_line_is_named() {
        let e = parse_env_file("ok=1\nnot a pair\n1X=2\nQ='open\n").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("line 2:")
                && e[1].starts_with("line 3:")
                && e[2].starts_with("line 4:")
        );
    }
}
