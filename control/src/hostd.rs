//! Driving hostd on a shared host without any inbound port: SSM Run Command
//! (`AWS-RunShellScript`) runs `hostd ctl … --json` on the host, control polls
//! GetCommandInvocation and turns hostd's JSON output into progress lines or an error.

use std::time::Instant;

use aws_sdk_ssm::types::CommandInvocationStatus;
use m8trx_spec::TenantSpec;
use serde::Serialize;
use serde_json::Value;

use crate::config::ControlConfig;
use crate::error::{ControlError, Result};
use crate::progress::Progress;

/// Where the spec file is written on the host (root-only tmpfs).
pub const SPEC_DIR: &str = "/run/m8trx/control";
/// SSM document that runs a shell script as root.
pub const DOCUMENT: &str = "AWS-RunShellScript";

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell lines that write the spec file and create the tenant unless hostd already has it.
pub fn create_commands(spec: &TenantSpec) -> Result<Vec<String>> {
    let json = serde_json::to_string(spec)
        .map_err(|e| ControlError::Conflict(format!("cannot serialise the tenant spec: {e}")))?;
    let file = format!("{SPEC_DIR}/{}.json", spec.name);
    let name = quote(spec.name.as_str());
    Ok(vec![
        "set -eu".to_owned(),
        format!("install -d -m 0700 {SPEC_DIR}"),
        format!("cat > {file} <<'M8TRX_SPEC_EOF'"),
        json,
        "M8TRX_SPEC_EOF".to_owned(),
        format!("if hostd ctl status {name} --json >/dev/null 2>&1; then"),
        format!(
            "  echo '{{\"message\":\"tenant {} already exists on this host; nothing to create\"}}'",
            spec.name
        ),
        "else".to_owned(),
        format!("  hostd ctl create -f {file} --json"),
        "fi".to_owned(),
        format!("rm -f {file}"),
    ])
}

/// The largest deploy bundle control forwards (its JSON, before base64): SSM RunCommand
/// carries it inside the command's parameters, which AWS bounds (64 KB in all); a larger
/// bundle is deployed on the host with `hostd ctl deploy`.
pub const MAX_FORWARDED_BUNDLE: usize = 40 << 10;

/// Shell lines that hand a deploy bundle to hostd: the bundle travels base64-encoded (no
/// quoting of the compose text can break the script) into a private temporary file that is
/// removed whatever happens.
pub fn deploy_commands(name: &str, bundle: &m8trx_spec::bundle::Bundle) -> Result<Vec<String>> {
    use base64::Engine as _;
    let json = serde_json::to_vec(bundle)
        .map_err(|e| ControlError::Conflict(format!("cannot serialise the deploy bundle: {e}")))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    let q = quote(name);
    let mut lines = vec![
        "set -eu".to_owned(),
        "umask 077".to_owned(),
        "f=$(mktemp)".to_owned(),
        "trap 'rm -f \"$f\"' EXIT".to_owned(),
        "base64 -d > \"$f\" <<'M8TRX_BUNDLE_EOF'".to_owned(),
    ];
    lines.extend(
        encoded
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
    );
    lines.push("M8TRX_BUNDLE_EOF".to_owned());
    lines.push(format!("hostd ctl deploy {q} --bundle \"$f\" --json"));
    Ok(lines)
}

/// Shell lines that destroy the tenant if hostd has it (data kept unless `wipe`).
pub fn destroy_commands(name: &str, wipe: bool) -> Vec<String> {
    let q = quote(name);
    vec![
        "set -eu".to_owned(),
        format!("if hostd ctl status {q} --json >/dev/null 2>&1; then"),
        format!(
            "  hostd ctl destroy {q}{} --json",
            if wipe { " --wipe" } else { "" }
        ),
        "else".to_owned(),
        format!(
            "  echo '{{\"message\":\"tenant {name} is not on this host; nothing to destroy\"}}'"
        ),
        "fi".to_owned(),
    ]
}

/// One line hostd printed, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostdLine {
    /// True for hostd's error messages.
    pub error: bool,
    /// The message text.
    pub text: String,
}

fn from_value(v: &Value, out: &mut Vec<HostdLine>) {
    match v {
        Value::Object(m) => {
            if let Some(e) = m.get("error") {
                let text = match e {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string()),
                    other => other.to_string(),
                };
                out.push(HostdLine { error: true, text });
            }
            for key in ["message", "progress", "step"] {
                if let Some(s) = m.get(key).and_then(Value::as_str) {
                    out.push(HostdLine {
                        error: false,
                        text: s.to_owned(),
                    });
                }
            }
            if let Some(Value::Array(msgs)) = m.get("messages") {
                for msg in msgs {
                    match msg {
                        Value::String(s) => out.push(HostdLine {
                            error: false,
                            text: s.clone(),
                        }),
                        other => from_value(other, out),
                    }
                }
            }
            let known = ["error", "message", "progress", "step", "messages"];
            if !m.keys().any(|k| known.contains(&k.as_str())) {
                out.push(HostdLine {
                    error: false,
                    text: v.to_string(),
                });
            }
        }
        Value::String(s) => out.push(HostdLine {
            error: false,
            text: s.clone(),
        }),
        other => out.push(HostdLine {
            error: false,
            text: other.to_string(),
        }),
    }
}

/// Reads hostd's `--json` output: one JSON document, or JSON lines, or plain text lines.
pub fn parse_output(stdout: &str) -> Vec<HostdLine> {
    let mut out = Vec::new();
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return out;
    }
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        from_value(&v, &mut out);
        return out;
    }
    for line in trimmed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => from_value(&v, &mut out),
            Err(_) => out.push(HostdLine {
                error: false,
                text: line.to_owned(),
            }),
        }
    }
    out
}

/// A finished invocation as SSM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// SSM status (`Success`, `Failed`, `TimedOut`, `Cancelled`, …).
    pub status: CommandInvocationStatus,
    /// SSM's detail text.
    pub status_details: String,
    /// Exit code of the script (`-1` when SSM has none).
    pub response_code: i32,
    /// Standard output (SSM keeps the first 24,000 characters).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Turns a finished invocation into hostd's messages, or an error that carries them.
pub fn interpret(inv: &Invocation) -> std::result::Result<Vec<HostdLine>, String> {
    let lines = parse_output(&inv.stdout);
    if inv.status == CommandInvocationStatus::Success && !lines.iter().any(|l| l.error) {
        return Ok(lines);
    }
    let mut parts: Vec<String> = lines
        .iter()
        .filter(|l| l.error)
        .map(|l| l.text.clone())
        .collect();
    let stderr_tail: Vec<&str> = inv
        .stderr
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if !stderr_tail.is_empty() {
        parts.push(format!("stderr: {}", stderr_tail.join(" | ")));
    }
    if parts.is_empty() {
        parts.push(format!(
            "SSM status {} ({}), exit code {}",
            inv.status.as_str(),
            inv.status_details,
            inv.response_code
        ));
    }
    if inv.status == CommandInvocationStatus::Success {
        Err(format!("hostd reported an error: {}", parts.join("; ")))
    } else {
        Err(format!(
            "{} (SSM status {}, exit code {})",
            parts.join("; "),
            inv.status.as_str(),
            inv.response_code
        ))
    }
}

fn is_terminal(s: &CommandInvocationStatus) -> bool {
    !matches!(
        s,
        CommandInvocationStatus::Pending
            | CommandInvocationStatus::InProgress
            | CommandInvocationStatus::Delayed
    )
}

/// Sends `commands` to `instance_id`, waits for the result and surfaces hostd's messages.
pub async fn run(
    ssm: &aws_sdk_ssm::Client,
    config: &ControlConfig,
    instance_id: &str,
    action: &str,
    commands: Vec<String>,
    progress: &Progress,
) -> Result<Vec<HostdLine>> {
    let timeout = config.wait_timeout.as_secs().max(30);
    let sent = ssm
        .send_command()
        .instance_ids(instance_id)
        .document_name(DOCUMENT)
        .comment(format!("m8trx control: {action}"))
        .parameters("commands", commands)
        .parameters("executionTimeout", vec![timeout.to_string()])
        .timeout_seconds(i32::try_from(timeout).unwrap_or(i32::MAX))
        .send()
        .await
        .map_err(|e| ControlError::aws(format!("SendCommand ({action}) to {instance_id}"), e))?;
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .ok_or_else(|| ControlError::Hostd {
            instance_id: instance_id.to_owned(),
            action: action.to_owned(),
            message: "SendCommand returned no command id".to_owned(),
        })?
        .to_owned();
    progress.line(format!(
        "hostd: {action} sent to {instance_id} (SSM command {command_id}); waiting for the result"
    ));
    let started = Instant::now();
    loop {
        match ssm
            .get_command_invocation()
            .command_id(&command_id)
            .instance_id(instance_id)
            .send()
            .await
        {
            Ok(out) => {
                let status = out
                    .status()
                    .cloned()
                    .unwrap_or(CommandInvocationStatus::Pending);
                if is_terminal(&status) {
                    let inv = Invocation {
                        status,
                        status_details: out.status_details().unwrap_or_default().to_owned(),
                        response_code: out.response_code(),
                        stdout: out.standard_output_content().unwrap_or_default().to_owned(),
                        stderr: out.standard_error_content().unwrap_or_default().to_owned(),
                    };
                    return match interpret(&inv) {
                        Ok(lines) => {
                            for l in &lines {
                                progress.line(format!("hostd: {}", l.text));
                            }
                            if lines.is_empty() {
                                progress.line(format!(
                                    "hostd: {action} succeeded on {instance_id} (no output)"
                                ));
                            }
                            Ok(lines)
                        }
                        Err(message) => Err(ControlError::Hostd {
                            instance_id: instance_id.to_owned(),
                            action: action.to_owned(),
                            message,
                        }),
                    };
                }
            }
            // Right after SendCommand the invocation may not be visible yet.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invocation_does_not_exist()) => {}
            Err(e) => {
                return Err(ControlError::aws(
                    format!("GetCommandInvocation {command_id} on {instance_id}"),
                    e,
                ))
            }
        }
        if started.elapsed() > config.wait_timeout {
            return Err(ControlError::Timeout {
                what: format!("hostd to {action} on {instance_id} (SSM command {command_id})"),
                seconds: config.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TenantSpec {
        use m8trx_spec::tenant::{ByteSize, Limits, Role, Template, TlsMode, VolumeSource};
        TenantSpec {
            version: m8trx_spec::tenant::SPEC_VERSION,
            name: m8trx_spec::CustomerName::parse("acme").unwrap(),
            template: Template::Agent,
            subdomains: vec!["acme.m8trx.ai".into()],
            tls: Some(TlsMode::Passthrough),
            limits: Limits {
                cpu: 0.5,
                memory: ByteSize(1024 << 20),
                pids: 4096,
                disk: ByteSize(30 << 30),
                io_read: m8trx_spec::tenant::DEFAULT_IO_READ,
                io_write: m8trx_spec::tenant::DEFAULT_IO_WRITE,
                egress: m8trx_spec::tenant::DEFAULT_EGRESS,
                ingress: m8trx_spec::tenant::DEFAULT_INGRESS,
            },
            volume: VolumeSource::Ebs("vol-0123456789abcdef0".into()),
            role: Role {
                arn: "arn:aws:iam::123456789012:role/m8trx-customer-acme".into(),
                external_id: "ext-acme-0001".into(),
            },
            ingress: None,
            idle: None,
        }
    }

    #[test]
    fn hostd_accepts_the_spec_control_sends() {
        let json = serde_json::to_string(&spec()).unwrap();
        let parsed = hostd::spec::TenantSpec::parse(&json)
            .unwrap_or_else(|e| panic!("hostd refuses control's spec: {e}\n{json}"));
        assert_eq!(parsed.name.as_str(), "acme");
        assert_eq!(parsed.limits.memory.0, 1024 << 20);
        assert_eq!(parsed.limits.disk.0, 30 << 30);
        assert_eq!(parsed.role.external_id, "ext-acme-0001");
    }

    fn inv(status: CommandInvocationStatus, code: i32, stdout: &str, stderr: &str) -> Invocation {
        Invocation {
            status,
            status_details: "details".into(),
            response_code: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn create_script_writes_the_spec_then_runs_hostd_ctl() {
        let lines = create_commands(&spec()).unwrap();
        let script = lines.join("\n");
        assert!(script.contains("cat > /run/m8trx/control/acme.json <<'M8TRX_SPEC_EOF'\n{\"version\":1,\"name\":\"acme\""));
        assert!(script.contains("hostd ctl create -f /run/m8trx/control/acme.json --json"));
        assert!(script.contains("hostd ctl status 'acme' --json"));
        // The script is valid shell.
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `script` as an executable `hostd` in `<dir>/bin` and returns that directory,
    /// for running control's exact scripts with it first on PATH.
    fn stub_hostd(dir: &std::path::Path, script: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("hostd"), script).unwrap();
        std::fs::set_permissions(bin.join("hostd"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        bin
    }

    #[test]
    fn create_script_runs_against_a_stand_in_hostd() {
        // Execute the exact script with a stub `hostd` on PATH and a private spec dir, to prove
        // the heredoc delivers the spec byte for byte and the create branch is taken.
        let dir = std::env::temp_dir().join(format!("control-hostd-{}", std::process::id()));
        let spec_dir = dir.join("spec");
        let stub = format!(
            "#!/bin/sh\ncase \"$2\" in status) exit 1;; create) cp \"$4\" {0}/seen.json; echo '{{\"message\":\"created\"}}';; esac\n",
            dir.display()
        );
        let bin = stub_hostd(&dir, &stub);
        let script = create_commands(&spec())
            .unwrap()
            .join("\n")
            .replace(SPEC_DIR, &spec_dir.display().to_string());
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = std::fs::read_to_string(dir.join("seen.json")).unwrap();
        assert_eq!(seen.trim(), serde_json::to_string(&spec()).unwrap());
        assert_eq!(
            parse_output(&String::from_utf8_lossy(&out.stdout)),
            [HostdLine {
                error: false,
                text: "created".into()
            }]
        );
        assert!(
            !spec_dir.join("acme.json").exists(),
            "spec file removed after create"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deploy_script_hands_hostd_the_bundle_byte_for_byte() {
        // The exact script with a stub `hostd` on PATH that keeps what it was given.
        let dir = std::env::temp_dir().join(format!("control-deploy-{}", std::process::id()));
        let stub = format!(
            "#!/bin/sh\n[ \"$1 $2 $3 $4\" = \"ctl deploy acme --bundle\" ] || exit 9\ncp \"$5\" {0}/seen.json; echo \"$5\" > {0}/path\necho '{{\"message\":\"deployed\"}}'\n",
            dir.display()
        );
        let bin = stub_hostd(&dir, &stub);
        let bundle = m8trx_spec::bundle::Bundle {
            compose: "services:\n  web:\n    image: x # it's \"quoted\"\nEOF\nM8TRX_BUNDLE_EOF\n"
                .into(),
            env: [("A".to_owned(), "$(rm -rf /)".to_owned())].into(),
            files: [("conf/app.ini".to_owned(), vec![0, 1, 2, 255])].into(),
        };
        let script = deploy_commands("acme", &bundle).unwrap().join("\n");
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: m8trx_spec::bundle::Bundle =
            serde_json::from_str(&std::fs::read_to_string(dir.join("seen.json")).unwrap()).unwrap();
        assert_eq!(seen, bundle);
        let tmp = std::fs::read_to_string(dir.join("path")).unwrap();
        assert!(
            !std::path::Path::new(tmp.trim()).exists(),
            "the bundle file is removed"
        );
        assert_eq!(
            parse_output(&String::from_utf8_lossy(&out.stdout)),
            [HostdLine {
                error: false,
                text: "deployed".into()
            }]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn destroy_script_is_conditional_and_wipes_on_request() {
        let s = destroy_commands("acme", true).join("\n");
        assert!(s.contains("hostd ctl destroy 'acme' --wipe --json"));
        assert!(!destroy_commands("acme", false)
            .join("\n")
            .contains("--wipe"));
    }

    #[test]
    fn parses_json_lines_documents_and_text() {
        let lines = parse_output(
            "{\"step\":\"provision\"}\n{\"message\":\"engine up\"}\nplain text\n{\"error\":{\"message\":\"disk full\"}}\n",
        );
        assert_eq!(
            lines,
            [
                HostdLine {
                    error: false,
                    text: "provision".into()
                },
                HostdLine {
                    error: false,
                    text: "engine up".into()
                },
                HostdLine {
                    error: false,
                    text: "plain text".into()
                },
                HostdLine {
                    error: true,
                    text: "disk full".into()
                },
            ]
        );
        let doc = parse_output(
            "{\n  \"name\": \"acme\",\n  \"messages\": [\"a\", {\"error\": \"b\"}]\n}",
        );
        assert_eq!(
            doc,
            [
                HostdLine {
                    error: false,
                    text: "a".into()
                },
                HostdLine {
                    error: true,
                    text: "b".into()
                },
            ]
        );
        assert!(parse_output("  \n").is_empty());
    }

    #[test]
    fn success_failure_and_hidden_errors() {
        let ok = interpret(&inv(
            CommandInvocationStatus::Success,
            0,
            "{\"message\":\"tenant acme running\"}",
            "",
        ))
        .unwrap();
        assert_eq!(ok[0].text, "tenant acme running");
        let failed = interpret(&inv(
            CommandInvocationStatus::Failed,
            3,
            "{\"error\":\"compose refused: service web: privileged: not allowed\"}",
            "warning\nexit 3",
        ))
        .unwrap_err();
        assert!(failed.contains("privileged: not allowed"), "{failed}");
        assert!(
            failed.contains("exit 3") && failed.contains("Failed"),
            "{failed}"
        );
        let bare = interpret(&inv(CommandInvocationStatus::TimedOut, -1, "", "")).unwrap_err();
        assert!(bare.contains("TimedOut"), "{bare}");
        let hidden = interpret(&inv(
            CommandInvocationStatus::Success,
            0,
            "{\"error\":\"half done\"}",
            "",
        ))
        .unwrap_err();
        assert!(hidden.contains("half done"), "{hidden}");
    }
}
