//! What one deploy carries: the compose file as submitted and the tenant's variables (an env
//! file, as `docker compose --env-file` reads it). Both are recorded with the revision, so a
//! redeploy after a reboot interpolates exactly what the first deploy did.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

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
}

impl Bundle {
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
