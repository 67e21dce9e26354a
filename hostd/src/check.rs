//! `hostd ctl check`: the compose check a deploy runs before it touches an engine, offline.
//! It prints every violation with its key path and rule, or, when the file is accepted, what
//! each service becomes (the translated plan).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::compose::{self, Bundle};
use crate::policy::{self, PolicyError};

/// The outcome of a check: accepted with its plan, or refused with every violation.
pub struct Checked {
    /// Whether a deploy would accept the file.
    pub accepted: bool,
    /// The report, as JSON (`--json`) or text.
    pub report: Value,
}

/// Checks `bundle` against the policy within `limits`, as `prepared` does on a deploy.
pub fn check(bundle: &Bundle, limits: &m8trx_spec::tenant::Limits) -> Checked {
    let vars: HashMap<String, String> = bundle.vars();
    let file = match policy::check_compose(bundle, limits) {
        Ok(f) => f,
        Err(PolicyError::Syntax(e)) => {
            return Checked {
                accepted: false,
                report: json!({"accepted": false, "violations": [{"service": null, "key": "(file)", "rule": e}]}),
            }
        }
        Err(PolicyError::Refused(v)) => {
            let list: Vec<Value> = v
                .iter()
                .map(|p| json!({"service": p.service, "key": p.key, "rule": p.rule}))
                .collect();
            return Checked {
                accepted: false,
                report: json!({"accepted": false, "violations": list}),
            };
        }
    };
    match compose::preview("m8trx-<tenant>", &file, &vars, limits) {
        Ok(plan) => {
            let services: Vec<Value> = plan
                .into_iter()
                .map(|(name, body)| json!({"service": name, "container": body}))
                .collect();
            Checked {
                accepted: true,
                report: json!({"accepted": true, "services": services}),
            }
        }
        Err(e) => Checked {
            accepted: false,
            report: json!({"accepted": false, "violations": [{"service": null, "key": "(deploy)", "rule": e.to_string()}]}),
        },
    }
}

/// The report as an operator reads it: one line per violation, or one block per service.
pub fn text(c: &Checked, file: &Path) -> String {
    let mut out = String::new();
    if !c.accepted {
        out.push_str(&format!("{}: refused\n", file.display()));
        for v in c.report["violations"].as_array().into_iter().flatten() {
            let at = match v["service"].as_str() {
                Some(s) => format!("service `{s}`, key `{}`", v["key"].as_str().unwrap_or("")),
                None => format!("key `{}`", v["key"].as_str().unwrap_or("")),
            };
            out.push_str(&format!("  - {at}: {}\n", v["rule"].as_str().unwrap_or("")));
        }
        return out;
    }
    out.push_str(&format!(
        "{}: accepted; services in start order:\n",
        file.display()
    ));
    for s in c.report["services"].as_array().into_iter().flatten() {
        let c = &s["container"];
        let hc = &c["HostConfig"];
        out.push_str(&format!(
            "  {}: image {}, memory {} B, cpus {}, pids {}, network {}\n",
            s["service"].as_str().unwrap_or(""),
            c["Image"].as_str().unwrap_or(""),
            hc["Memory"],
            hc["NanoCpus"]
                .as_i64()
                .map_or("(tenant's)".to_owned(), |n| format!("{}", n as f64 / 1e9)),
            hc["PidsLimit"],
            hc["NetworkMode"].as_str().unwrap_or(""),
        ));
    }
    out
}
