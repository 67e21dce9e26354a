//! Compose variable interpolation, done the way `docker compose` does it so that a file
//! means the same under hostd as on a developer's laptop: `$$` is a literal `$`,
//! `${VAR:-default}` / `${VAR-default}` fall back, `${VAR:?message}` / `${VAR?message}`
//! fail, `${VAR:+alt}` / `${VAR+alt}` substitute when set, and `$(` or an unclosed `${` is
//! an error. One deliberate difference: a variable that is not set (in the tenant's env file)
//! and has no default is refused, where compose substitutes an empty string with a warning
//! nobody reads — on a shared host a silently empty value is a misdeployment.

use std::collections::HashMap;

use serde_norway::Value;

/// A string that cannot be interpolated, with the compose path of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: {message}", path.join("."))]
pub struct InterpolationError {
    /// Where the value sits (`services.web.command[1]`).
    pub path: Vec<String>,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Interpolates every string value of the document in place (keys are left alone, as compose
/// does); returns every value that could not be interpolated (left as it was), not only the first.
pub fn interpolate(doc: &mut Value, vars: &HashMap<String, String>) -> Vec<InterpolationError> {
    let mut errors = Vec::new();
    walk(doc, &mut Vec::new(), vars, &mut errors);
    errors
}

fn walk(
    v: &mut Value,
    path: &mut Vec<String>,
    vars: &HashMap<String, String>,
    errors: &mut Vec<InterpolationError>,
) {
    match v {
        Value::String(s) => match expand(s, vars) {
            Ok(x) => *s = x,
            Err(message) => errors.push(InterpolationError {
                path: path.clone(),
                message,
            }),
        },
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                walk(item, path, vars, errors);
                path.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                path.push(
                    k.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{k:?}")),
                );
                walk(item, path, vars, errors);
                path.pop();
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, vars, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands one string; the error says which variable or construct is wrong.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching brace; defaults may nest `${A:-${B}}`.
                let mut depth = 0;
                let mut end = None;
                for (j, c) in chars.iter().enumerate().skip(i + 1) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| {
                    format!("invalid interpolation format in {s:?}: `${{` is never closed; write `$$` for a literal `$`")
                })?;
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&braced(&inner, vars)?);
                i = end + 1;
            }
            Some(&c) if is_name_start(c) => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                out.push_str(&lookup(&name, vars)?);
                i = j;
            }
            _ => {
                return Err(format!(
                    "invalid interpolation format in {s:?}: a `$` must start a variable; write `$$` for a literal `$`"
                ))
            }
        }
    }
    Ok(out)
}

fn unset(name: &str) -> String {
    format!(
        "variable `{name}` is not set and has no default; hostd deploys with no environment \
         of its own: set it in the env file (`--env-file`), write a default \
         (`${{{name}:-value}}`) or `$${name}` for the container's shell"
    )
}

fn lookup(name: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    vars.get(name).cloned().ok_or_else(|| unset(name))
}

/// The inside of `${...}`: a name, optionally followed by an operator and a word.
fn braced(inner: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let name_len = inner.find(|c: char| !is_name(c)).unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_len);
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!("invalid interpolation format: `${{{inner}}}`"));
    }
    let value = vars.get(name);
    let empty = value.is_none_or(|v| v.is_empty());
    let op = [":-", "-", ":?", "?", ":+", "+"]
        .into_iter()
        .find(|op| rest.starts_with(op));
    let Some(op) = op else {
        return if rest.is_empty() {
            lookup(name, vars)
        } else {
            Err(format!("invalid interpolation format: `${{{inner}}}`"))
        };
    };
    let word = &rest[op.len()..];
    match op {
        ":-" if empty => expand(word, vars),
        "-" if value.is_none() => expand(word, vars),
        ":-" | "-" => Ok(value.cloned().unwrap_or_default()),
        ":?" if empty => Err(required(name, word)),
        "?" if value.is_none() => Err(required(name, word)),
        ":?" | "?" => Ok(value.cloned().unwrap_or_default()),
        ":+" if !empty => expand(word, vars),
        "+" if value.is_some() => expand(word, vars),
        _ => Ok(String::new()),
    }
}

fn required(name: &str, message: &str) -> String {
    if message.is_empty() {
        format!("required variable `{name}` is missing a value")
    } else {
        format!("required variable `{name}` is missing a value: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        HashMap::from([
            ("SET".to_owned(), "v".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    #[test]
    fn expands_like_compose() {
        let v = vars();
        let e = |s: &str| expand(s, &v);
        assert_eq!(e("plain").unwrap(), "plain");
        assert_eq!(e("cost $$5 and $${HOME}").unwrap(), "cost $5 and ${HOME}");
        assert_eq!(e("a${SET}b$SET.c").unwrap(), "avbv.c");
        assert_eq!(
            e("${UNSET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}").unwrap(),
            "d|d||d"
        );
        assert_eq!(e("${UNSET:-${SET}x}").unwrap(), "vx");
        assert_eq!(
            e("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}").unwrap(),
            "alt||alt|"
        );
        assert_eq!(e("${SET:?must}").unwrap(), "v");
    }

    #[test]
    fn refuses_what_compose_refuses_and_unset_variables() {
        let v = vars();
        let e = |s: &str| expand(s, &v).unwrap_err();
        assert!(e("$(date)").contains("write `$$`"));
        assert!(e("${SET").contains("never closed"));
        assert!(e("${1x}").contains("invalid interpolation"));
        assert!(e("${SET!}").contains("invalid interpolation"));
        assert!(e("${UNSET}").contains("`UNSET` is not set"));
        assert!(e("$UNSET").contains("`${UNSET:-value}`"));
        assert!(e("${EMPTY:?give a token}").contains("give a token"));
    }

    #[test]
    fn walks_values_and_reports_the_path() {
        let mut doc: Value = serde_norway::from_str(
            "services:\n  web:\n    command: [sh, -c, 'echo $$HOME ${PORT:-8080}']\n    image: '${IMG}'\n",
        )
        .unwrap();
        let errs = interpolate(&mut doc, &HashMap::new());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, ["services", "web", "image"]);
        let mut doc: Value = serde_norway::from_str(
            "services:\n  web:\n    command: [sh, -c, 'echo $$HOME ${PORT:-8080}']\n",
        )
        .unwrap();
        assert!(interpolate(&mut doc, &HashMap::new()).is_empty());
        assert_eq!(
            doc["services"]["web"]["command"][2].as_str(),
            Some("echo $HOME 8080")
        );
    }
}
