//! The per-tenant AppArmor profile: rendered from the template, compiled and loaded with
//! `apparmor_parser`.

use std::path::Path;
use std::process::Command;

use m8trx_spec::CustomerName;

use super::{ProfileError, APPARMOR_ENABLED_FILE, APPARMOR_TEMPLATE, TENANTS_ROOT};

/// AppArmor profile name of a tenant: `m8trx-tenant-<name>`.
pub fn apparmor_profile_name(name: &CustomerName) -> String {
    format!("m8trx-tenant-{}", name.as_str())
}

/// Glob alternatives matching every single path component except `name` (AppArmor has no negation).
///
/// A component differs from `name` when, at the first position where it stops agreeing, it has
/// another character, or it is a strict prefix of `name`, or `name` is a strict prefix of it.
pub fn other_component_globs(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out = Vec::new();
    for i in 0..chars.len() {
        let prefix: String = chars[..i].iter().collect();
        out.push(format!("{prefix}[^{}/]*", chars[i]));
        if i > 0 {
            out.push(prefix);
        }
    }
    out.push(format!("{name}?*"));
    out
}

/// Renders the tenant's AppArmor profile from the template.
pub fn render_apparmor(name: &CustomerName) -> String {
    render_apparmor_with_root(name, TENANTS_ROOT)
}

/// Renders with another tenants root (tests use a temporary directory).
pub fn render_apparmor_with_root(name: &CustomerName, tenants_root: &str) -> String {
    let others = other_component_globs(name.as_str())
        .iter()
        .map(|g| format!("  deny {tenants_root}/{g}{{,/**}} rwklmx,\n"))
        .collect::<String>();
    APPARMOR_TEMPLATE
        .replace("{{PROFILE}}", &apparmor_profile_name(name))
        .replace("{{NAME}}", name.as_str())
        .replace("{{TENANTS_ROOT}}", tenants_root)
        .replace("{{DENY_OTHER_TENANTS}}\n", &others)
}

/// True when the running kernel has the AppArmor LSM enabled (so profiles can be loaded and enforced).
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string(APPARMOR_ENABLED_FILE).is_ok_and(|s| s.trim() == "Y")
}

/// Compiles a profile file with `apparmor_parser` without loading it into the kernel.
pub fn apparmor_compile_check(profile: &Path) -> Result<(), ProfileError> {
    run_parser(&[
        "--skip-kernel-load",
        "--skip-cache",
        "--quiet",
        &profile.display().to_string(),
    ])
}

/// Loads (or replaces) a profile file into the kernel; needs AppArmor enabled and root.
pub fn apparmor_load(profile: &Path) -> Result<(), ProfileError> {
    run_parser(&["--replace", "--skip-cache", &profile.display().to_string()])
}

pub(super) fn run_parser(args: &[&str]) -> Result<(), ProfileError> {
    let command = format!("apparmor_parser {}", args.join(" "));
    let out = Command::new("apparmor_parser")
        .args(args)
        .output()
        .map_err(|e| ProfileError::AppArmorParser {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProfileError::AppArmorParser {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}
