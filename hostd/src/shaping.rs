//! Per-tenant bandwidth, all of a tenant's networks together (issue #18).
//!
//! Each tenant has two IFB devices, each shaping with a token bucket (`tbf`) at the spec's
//! rate, so a limit holds however many networks the tenant's compose file creates:
//!
//! - `m8i-<slot>-in`, **ingress** (towards the containers): every bridge of the tenant
//!   (`m8t-<slot>-<n>`, one per compose network) gets a `clsact` qdisc whose egress hook
//!   redirects everything the bridge sends to its ports into the IFB.
//! - `m8i-<slot>-eg`, **egress** (what the containers send out of their networks): the
//!   redirect sits on the ingress hook of each bridge *port* (the host end of each container's
//!   veth), not of the bridge. With `br_netfilter` (loaded on the AMI) a frame passed up by
//!   the bridge has been through conntrack already; redirecting it there through an IFB runs
//!   it through conntrack a second time, and the replies to the host's own connections (to
//!   sni-proxy's backends, to the broker) come out INVALID and are dropped (seen here). At the
//!   port the frame has not reached the bridge yet. A first filter lets traffic to the
//!   tenant's own /24 through unshaped: traffic between its containers is not counted.
//!
//! Filters are `u32` catch-alls (`match u32 0 0`; `u32` is in every kernel that has `clsact`,
//! `matchall`, `police` and `gact` are not in this development machine's). Ports come and
//! go with containers: each deploy and reconcile applies everything, and supervision (every
//! `--supervise-interval`) shapes a port that appeared since (a container restarted by its
//! engine). Image pulls are the engine's, in the host's namespace, and are not shaped here.
//! Every operation is idempotent.

use std::process::Command;

use crate::network::Firewall;

/// A `tc` or `ip` command that failed; carries the tool's own words.
#[derive(Debug, thiserror::Error)]
#[error("bandwidth: `{command}` failed: {message}")]
pub struct ShapingError {
    /// What was run.
    pub command: String,
    /// Its stderr, or why it could not run.
    pub message: String,
}

/// One tenant's rates, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// What its containers may send out of their networks.
    pub egress: u64,
    /// What may reach them from outside their networks.
    pub ingress: u64,
}

/// The tenant's two IFB devices: (egress, ingress).
pub fn ifbs(slot: u16) -> (String, String) {
    (format!("m8i-{slot}-eg"), format!("m8i-{slot}-in"))
}

/// The queue a token bucket may hold: 50 ms of traffic, at least 64 KiB (the kernel needs a
/// burst above one timer tick's worth, and TCP a few segments).
fn burst(rate: u64) -> u64 {
    (rate / 20).max(64 << 10)
}

fn run(fw: &Firewall, program: &str, args: &[String]) -> Result<String, ShapingError> {
    let mut c = match &fw.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    let shown = format!("{program} {}", args.join(" "));
    let out = c.args(args).output().map_err(|e| ShapingError {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ShapingError {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn v(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// The tenant's bridges now: devices named `m8t-<slot>-<n>` of type bridge.
pub fn bridges(fw: &Firewall, slot: u16) -> Result<Vec<String>, ShapingError> {
    let out = run(fw, "ip", &v(&["-o", "link", "show", "type", "bridge"]))?;
    let prefix = format!("m8t-{slot}-");
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect())
}

/// The ports of a bridge: the host ends of its containers' veths.
fn ports(fw: &Firewall, br: &str) -> Result<Vec<String>, ShapingError> {
    let out = run(fw, "ip", &v(&["-o", "link", "show", "master", br]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// Makes the tenant's IFBs and their token buckets, and redirects every one of its bridges
/// and bridge ports into them; idempotent.
pub fn apply(fw: &Firewall, slot: u16, rates: Rates) -> Result<(), ShapingError> {
    let (eg, inn) = ifbs(slot);
    for (dev, rate) in [(&eg, rates.egress), (&inn, rates.ingress)] {
        let exists = run(fw, "ip", &v(&["link", "show", dev])).is_ok();
        if !exists {
            run(fw, "ip", &v(&["link", "add", dev, "type", "ifb"]))?;
        }
        run(fw, "ip", &v(&["link", "set", "dev", dev, "up"]))?;
        let (rate, burst) = (format!("{}bit", rate * 8), burst(rate).to_string());
        run(
            fw,
            "tc",
            &v(&[
                "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "50ms",
            ]),
        )?;
    }
    for br in bridges(fw, slot)? {
        if !redirected(fw, &br, "egress", &inn)? {
            run(fw, "tc", &v(&["qdisc", "replace", "dev", &br, "clsact"]))?;
            let _ = run(fw, "tc", &v(&["filter", "del", "dev", &br, "egress"]));
            redirect(fw, &br, "egress", "1", &["u32", "0", "0"], &inn)?;
        }
    }
    shape_new_ports(fw, slot)?;
    Ok(())
}

/// Shapes the bridge ports that are not yet (containers started since the last apply);
/// returns how many. Cheap when there are none: supervision calls it.
pub fn shape_new_ports(fw: &Firewall, slot: u16) -> Result<usize, ShapingError> {
    let (eg, _) = ifbs(slot);
    let (net, len) = crate::ids::subnet(slot);
    let own = format!("{net}/{len}");
    let mut shaped = 0;
    for br in bridges(fw, slot)? {
        // Asked only when a port needs shaping: supervision runs this every few seconds.
        let mut gateway: Option<Option<String>> = None;
        for port in ports(fw, &br)? {
            if redirected(fw, &port, "ingress", &eg)? {
                continue;
            }
            if gateway.is_none() {
                gateway = Some(bridge_address(fw, &br)?);
            }
            run(fw, "tc", &v(&["qdisc", "replace", "dev", &port, "clsact"]))?;
            let _ = run(fw, "tc", &v(&["filter", "del", "dev", &port, "ingress"]));
            // The bridge's own address is the host (replies to sni-proxy's and the host's
            // connections go there): shaped, before the tenant's /24 is let through.
            if let Some(Some(gw)) = &gateway {
                let to_gw = format!("{gw}/32");
                redirect(fw, &port, "ingress", "1", &["ip", "dst", &to_gw], &eg)?;
            }
            // To the tenant's own /24: classified (`classid`), no action, so it passes as is.
            run(
                fw,
                "tc",
                &v(&[
                    "filter", "add", "dev", &port, "ingress", "pref", "2", "protocol", "ip", "u32",
                    "match", "ip", "dst", &own, "classid", "1:1",
                ]),
            )?;
            redirect(fw, &port, "ingress", "3", &["u32", "0", "0"], &eg)?;
            shaped += 1;
        }
    }
    Ok(shaped)
}

/// A `u32` filter at `pref` on `dev`'s `hook` redirecting what `matches` into `ifb`; an
/// `ip …` match applies to IPv4 only, any other to every protocol.
fn redirect(
    fw: &Firewall,
    dev: &str,
    hook: &str,
    pref: &str,
    matches: &[&str],
    ifb: &str,
) -> Result<(), ShapingError> {
    let proto = if matches.first() == Some(&"ip") {
        "ip"
    } else {
        "all"
    };
    let mut args = v(&[
        "filter", "add", "dev", dev, hook, "pref", pref, "protocol", proto, "u32", "match",
    ]);
    args.extend(v(matches));
    args.extend(v(&["action", "mirred", "egress", "redirect", "dev", ifb]));
    run(fw, "tc", &args).map(drop)
}

/// The bridge's IPv4 address (the tenant network's gateway, on the host), if it has one.
fn bridge_address(fw: &Firewall, br: &str) -> Result<Option<String>, ShapingError> {
    let out = run(fw, "ip", &v(&["-o", "-4", "addr", "show", "dev", br]))?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned))
}

/// Whether `dev`'s `hook` (ingress/egress) already redirects into `ifb`.
fn redirected(fw: &Firewall, dev: &str, hook: &str, ifb: &str) -> Result<bool, ShapingError> {
    let Ok(f) = run(fw, "tc", &v(&["filter", "show", "dev", dev, hook])) else {
        return Ok(false); // no clsact on it yet
    };
    Ok(f.contains(&format!("to device {ifb})")))
}

/// Removes the tenant's IFBs (and so their buckets) and its bridges' and ports' redirects; a
/// tenant without them is not an error.
pub fn remove(fw: &Firewall, slot: u16) -> Result<(), ShapingError> {
    for br in bridges(fw, slot)? {
        for port in ports(fw, &br).unwrap_or_default() {
            let _ = run(fw, "tc", &v(&["qdisc", "del", "dev", &port, "clsact"]));
        }
        let _ = run(fw, "tc", &v(&["qdisc", "del", "dev", &br, "clsact"]));
    }
    let (eg, inn) = ifbs(slot);
    for dev in [eg, inn] {
        if run(fw, "ip", &v(&["link", "show", &dev])).is_ok() {
            run(fw, "ip", &v(&["link", "del", &dev]))?;
        }
    }
    Ok(())
}

/// Whether the tenant's buckets have its rates and every one of its bridges and ports is
/// redirected.
pub fn is_applied(fw: &Firewall, slot: u16, rates: Rates) -> Result<bool, ShapingError> {
    let (eg, inn) = ifbs(slot);
    for (dev, rate) in [(&eg, rates.egress), (&inn, rates.ingress)] {
        let Ok(q) = run(fw, "tc", &v(&["-j", "qdisc", "show", "dev", dev])) else {
            return Ok(false);
        };
        let q: serde_json::Value = serde_json::from_str(&q).unwrap_or_default();
        let ok = q
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["kind"] == "tbf" && q["options"]["rate"].as_u64() == Some(rate));
        if !ok {
            return Ok(false);
        }
    }
    for br in bridges(fw, slot)? {
        if !redirected(fw, &br, "egress", &inn)? {
            return Ok(false);
        }
        for port in ports(fw, &br)? {
            if !redirected(fw, &port, "ingress", &eg)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// How often each of the tenant's buckets ran dry (tc's `overlimits`): (egress, ingress);
/// zeros for a tenant without buckets.
pub fn limited(fw: &Firewall, slot: u16) -> (u64, u64) {
    let (eg, inn) = ifbs(slot);
    let over = |dev: &str| -> u64 {
        run(fw, "tc", &v(&["-s", "-j", "qdisc", "show", "dev", dev]))
            .ok()
            .and_then(|q| serde_json::from_str::<serde_json::Value>(&q).ok())
            .and_then(|q| {
                q.as_array()?
                    .iter()
                    .find(|q| q["kind"] == "tbf")?
                    .get("overlimits")?
                    .as_u64()
            })
            .unwrap_or(0)
    };
    (over(&eg), over(&inn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bursts() {
        assert_eq!(ifbs(12), ("m8i-12-eg".into(), "m8i-12-in".into()));
        assert!(
            ifbs(u16::MAX).0.len() <= 15,
            "an interface name fits IFNAMSIZ"
        );
        assert_eq!(burst(1 << 20), 64 << 10);
        assert_eq!(burst(100 << 20), 5 << 20);
    }
}
