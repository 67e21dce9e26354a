//! The Docker-format seccomp profile every tenant container runs under: parsed with its
//! comments kept, compiled with libseccomp (as runc would) so a broken profile never reaches
//! a container.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};

use super::{ProfileError, SECCOMP_TENANT_JSON};

/// A Docker-format seccomp profile (the subset moby documents for `--security-opt seccomp=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    /// `SCMP_ACT_ERRNO` for tenants: everything not listed fails.
    pub default_action: String,
    /// errno of the default action (1 = EPERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Native architectures the profile supports and the sub-ABIs each lets in.
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    /// Rule groups, applied in order; each carries a one-line `comment` saying why.
    pub syscalls: Vec<SyscallGroup>,
}

/// One `archMap` entry: a native architecture and the extra ABIs allowed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMap {
    /// libseccomp name, e.g. `SCMP_ARCH_X86_64`.
    pub architecture: String,
    /// Extra ABIs (e.g. `SCMP_ARCH_X86`); empty for tenants: no 32-bit compat entry points.
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

/// One `syscalls` entry: names sharing an action, optional argument filters and conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallGroup {
    /// Why the group is allowed or denied (Docker's format carries it as `comment`).
    #[serde(default)]
    pub comment: String,
    /// Syscall names as libseccomp spells them.
    pub names: Vec<String>,
    /// `SCMP_ACT_ALLOW` or `SCMP_ACT_ERRNO` (others are refused for tenants).
    pub action: String,
    /// errno for an `SCMP_ACT_ERRNO` group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument comparisons, all of which must hold for the action to apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SyscallArg>,
    /// The group applies only when these match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<GroupFilter>,
    /// The group does not apply when these match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<GroupFilter>,
}

/// A comparison on one syscall argument (`value` is the mask for `SCMP_CMP_MASKED_EQ`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallArg {
    /// Argument index, 0..=5.
    pub index: u32,
    /// Datum, or the mask for `SCMP_CMP_MASKED_EQ`.
    pub value: u64,
    /// Datum for `SCMP_CMP_MASKED_EQ`, unused otherwise.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_NE`, `SCMP_CMP_MASKED_EQ`, …
    pub op: String,
}

/// Conditions of a group; tenants only use Go-style architecture names (`amd64`, `arm64`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupFilter {
    /// Go architecture names (`amd64`, `arm64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// Capability conditions: refused, tenant containers drop every capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Minimum kernel version: refused, the profile must not depend on the host kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl SeccompProfile {
    /// Parses the shipped tenant profile.
    pub fn tenant() -> Result<Self, ProfileError> {
        Self::parse(SECCOMP_TENANT_JSON)
    }

    /// Parses Docker-format JSON, refusing unknown fields so that a typo cannot silently weaken it.
    pub fn parse(json: &str) -> Result<Self, ProfileError> {
        Ok(serde_json::from_str(json)?)
    }

    /// The compact JSON that goes into `security_opt` as `seccomp=<json>` (the API wants content, not a path).
    pub fn to_compact_json(&self) -> Result<String, ProfileError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Names of every group whose action is unconditional allow (no argument filter).
    pub fn allowed_unconditionally(&self) -> BTreeSet<String> {
        self.names_where(|g| g.action == "SCMP_ACT_ALLOW" && g.args.is_empty())
    }

    /// Names of every explicit deny group returning `errno`.
    pub fn denied_with(&self, errno: u32) -> BTreeSet<String> {
        self.names_where(|g| g.action == "SCMP_ACT_ERRNO" && g.errno_ret.unwrap_or(0) == errno)
    }

    pub(super) fn names_where(&self, pred: impl Fn(&SyscallGroup) -> bool) -> BTreeSet<String> {
        self.syscalls
            .iter()
            .filter(|g| pred(g))
            .flat_map(|g| g.names.iter().cloned())
            .collect()
    }
}

/// A profile compiled by libseccomp for one architecture, with the names libseccomp skipped.
pub struct CompiledSeccomp {
    /// The libseccomp filter; `load()` applies it to the calling thread.
    pub filter: ScmpFilterContext,
    /// Names that do not exist on this architecture (skipped, as runc does).
    pub skipped: Vec<String>,
    /// Number of rules added to the filter.
    pub rules: usize,
}

impl CompiledSeccomp {
    /// The classic-BPF program (an array of `struct sock_filter`), to install in a child before exec.
    pub fn bpf(&self) -> Result<Vec<u8>, ProfileError> {
        let io = |source| ProfileError::Io {
            path: PathBuf::from("<socketpair for the BPF export>"),
            source,
        };
        let (mut rx, tx) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        self.filter
            .export_bpf(&tx)
            .map_err(|source| ProfileError::Libseccomp {
                what: "exporting the BPF program".into(),
                source,
            })?;
        drop(tx);
        let mut buf = Vec::new();
        rx.read_to_end(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// Go architecture name Docker uses in `includes.arches` for a libseccomp architecture.
fn go_arch(arch: ScmpArch) -> &'static str {
    match arch {
        ScmpArch::X8664 => "amd64",
        ScmpArch::X86 => "386",
        ScmpArch::X32 => "x32",
        ScmpArch::Aarch64 => "arm64",
        ScmpArch::Arm => "arm",
        _ => "other",
    }
}

fn parse_arch(name: &str) -> Result<ScmpArch, ProfileError> {
    name.parse::<ScmpArch>()
        .map_err(|_| ProfileError::Invalid(format!("unknown architecture {name:?} in archMap")))
}

fn parse_op(arg: &SyscallArg) -> Result<(ScmpCompareOp, u64), ProfileError> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        "SCMP_CMP_MASKED_EQ" => return Ok((ScmpCompareOp::MaskedEqual(arg.value), arg.value_two)),
        other => {
            return Err(ProfileError::Invalid(format!(
                "unknown comparison {other:?}"
            )))
        }
    };
    Ok((op, arg.value))
}

fn parse_action(action: &str, errno: Option<u32>) -> Result<ScmpAction, ProfileError> {
    match action {
        "SCMP_ACT_ALLOW" => Ok(ScmpAction::Allow),
        "SCMP_ACT_ERRNO" => {
            let e = errno.ok_or_else(|| {
                ProfileError::Invalid(format!(
                    "{action} without an errno (errnoRet/defaultErrnoRet)"
                ))
            })?;
            let e = i32::try_from(e)
                .map_err(|_| ProfileError::Invalid(format!("errno {e} out of range")))?;
            Ok(ScmpAction::Errno(e))
        }
        other => Err(ProfileError::Invalid(format!(
            "action {other:?} is not used for tenants (only SCMP_ACT_ALLOW and SCMP_ACT_ERRNO)"
        ))),
    }
}

/// Does `filter` let the group apply on `arch`? Capability and kernel conditions are refused.
fn group_applies(group: &SyscallGroup, arch: ScmpArch) -> Result<bool, ProfileError> {
    let go = go_arch(arch);
    for f in [&group.includes, &group.excludes].into_iter().flatten() {
        if !f.caps.is_empty() || f.min_kernel.is_some() {
            return Err(ProfileError::Invalid(format!(
                "group {:?} depends on capabilities or the kernel version; tenant containers drop \
                 every capability and the profile must not depend on the kernel",
                group.names
            )));
        }
    }
    let included = group
        .includes
        .as_ref()
        .is_none_or(|f| f.arches.is_empty() || f.arches.iter().any(|a| a == go));
    let excluded = group
        .excludes
        .as_ref()
        .is_some_and(|f| f.arches.iter().any(|a| a == go));
    Ok(included && !excluded)
}

/// Compiles the profile with libseccomp for the machine's own architecture, like runc does.
pub fn compile_seccomp(profile: &SeccompProfile) -> Result<CompiledSeccomp, ProfileError> {
    compile_seccomp_for(profile, ScmpArch::native())
}

/// Compiles the profile for `arch`; proves the JSON is coherent (names, actions, comparisons).
pub fn compile_seccomp_for(
    profile: &SeccompProfile,
    arch: ScmpArch,
) -> Result<CompiledSeccomp, ProfileError> {
    let lib = |what: String| move |source| ProfileError::Libseccomp { what, source };
    let default = parse_action(&profile.default_action, profile.default_errno_ret)?;
    let mut filter = ScmpFilterContext::new(default).map_err(lib("creating the filter".into()))?;
    let entry = profile
        .arch_map
        .iter()
        .map(|m| Ok((parse_arch(&m.architecture)?, m)))
        .collect::<Result<Vec<_>, ProfileError>>()?
        .into_iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, m)| m)
        .ok_or_else(|| {
            ProfileError::Invalid(format!(
                "archMap has no entry for this host's architecture {arch:?}"
            ))
        })?;
    if arch != ScmpArch::native() {
        filter
            .add_arch(arch)
            .map_err(lib(format!("adding architecture {arch:?}")))?;
        filter
            .remove_arch(ScmpArch::native())
            .map_err(lib("removing the native architecture".into()))?;
    }
    for sub in &entry.sub_architectures {
        let sub = parse_arch(sub)?;
        filter
            .add_arch(sub)
            .map_err(lib(format!("adding sub-architecture {sub:?}")))?;
    }

    let mut skipped = Vec::new();
    let mut rules = 0;
    for group in &profile.syscalls {
        if group.comment.trim().is_empty() {
            return Err(ProfileError::Invalid(format!(
                "group {:?} has no comment saying why it is allowed or denied",
                group.names
            )));
        }
        if !group_applies(group, arch)? {
            continue;
        }
        let action = parse_action(&group.action, group.errno_ret)?;
        // Same as runc: a rule whose action equals the default is redundant and libseccomp refuses it.
        if action == default {
            continue;
        }
        let conditions = group
            .args
            .iter()
            .map(|a| {
                if a.index > 5 {
                    return Err(ProfileError::Invalid(format!(
                        "argument index {} > 5",
                        a.index
                    )));
                }
                let (op, datum) = parse_op(a)?;
                Ok(ScmpArgCompare::new(a.index, op, datum))
            })
            .collect::<Result<Vec<_>, ProfileError>>()?;
        for name in &group.names {
            let Ok(sys) = ScmpSyscall::from_name_by_arch(name, arch) else {
                skipped.push(name.clone());
                continue;
            };
            // A name the architecture lacks resolves to a negative pseudo number; skip it as runc does.
            if i32::from(sys) < 0 {
                skipped.push(name.clone());
                continue;
            }
            let added = if conditions.is_empty() {
                filter.add_rule(action, sys)
            } else {
                filter.add_rule_conditional(action, sys, &conditions)
            };
            added.map_err(lib(format!("adding {name} ({})", group.action)))?;
            rules += 1;
        }
    }
    Ok(CompiledSeccomp {
        filter,
        skipped,
        rules,
    })
}

/// The syscall number of `name` on this machine's architecture, if libseccomp knows it here.
pub fn native_syscall_number(name: &str) -> Option<i32> {
    ScmpSyscall::from_name_by_arch(name, ScmpArch::native())
        .ok()
        .map(i32::from)
        .filter(|n| *n >= 0)
}
