//! Privilege drop: after the listeners are bound, keep only CAP_NET_BIND_SERVICE and,
//! when asked, become an unprivileged user. Runs before any other thread exists, because
//! Linux capabilities are per thread.

use anyhow::{bail, Context};
use caps::{CapSet, Capability, CapsHashSet};

/// Drops to `user` (if given) and to CAP_NET_BIND_SERVICE alone (if the process has it).
pub fn drop_privileges(user: Option<&str>) -> anyhow::Result<()> {
    let keep: CapsHashSet = caps::read(None, CapSet::Permitted)
        .context("reading this process's capabilities")?
        .into_iter()
        .filter(|c| *c == Capability::CAP_NET_BIND_SERVICE)
        .collect();
    // The bounding set needs CAP_SETPCAP, so it goes first, while we may still have it.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::all() {
            if c != Capability::CAP_NET_BIND_SERVICE {
                caps::drop(None, CapSet::Bounding, c)
                    .with_context(|| format!("dropping {c} from the bounding set"))?;
            }
        }
    }
    if let Some(name) = user {
        let u = nix::unistd::User::from_name(name)
            .with_context(|| format!("looking up user {name}"))?
            .with_context(|| format!("user {name} does not exist; create it or drop --user"))?;
        if u.uid.is_root() {
            bail!("--user {name} is root; name an unprivileged user");
        }
        nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
        nix::unistd::setgroups(&[u.gid]).context("setgroups")?;
        nix::unistd::setgid(u.gid).context("setgid")?;
        nix::unistd::setuid(u.uid).context("setuid")?;
        nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS, 0)")?;
    }
    caps::set(None, CapSet::Effective, &keep).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting permitted capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    // Ambient capabilities may be unsupported on old kernels; nothing to clear there.
    let _ = caps::clear(None, CapSet::Ambient);
    Ok(())
}
