//! Tenant network isolation, owned by hostd (tenant engines run with `--iptables=false`):
//! hostd's own chains, one set per tenant keyed by the tenant's subnet.
//!
//! - no traffic between tenants (any 10.250.0.0/16 destination outside the own /24);
//! - IMDS (169.254.169.254) dropped;
//! - tenant → host only to the credential broker and DNS;
//! - internet egress allowed and masqueraded;
//! - quarantine: everything cut, state kept.
//!
//! Rules are applied with `iptables-restore --noflush` per tenant chain, so installing is
//! atomic per table and idempotent, and one tenant's change never touches another's rules.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Every tenant subnet lives inside this /16.
pub const TENANTS_NET: &str = "10.250.0.0/16";
/// The instance metadata service, never reachable from tenants.
pub const IMDS: &str = "169.254.169.254/32";
/// hostd's top-level filter chain for forwarded traffic.
pub const FORWARD_CHAIN: &str = "M8TRX-FORWARD";
/// hostd's top-level filter chain for traffic to the host.
pub const INPUT_CHAIN: &str = "M8TRX-INPUT";
/// hostd's top-level nat chain for egress masquerading.
pub const NAT_CHAIN: &str = "M8TRX-POSTROUTING";

/// Failures running iptables; the message carries iptables' own words.
#[derive(Debug, thiserror::Error)]
#[error("iptables: `{command}` failed: {message}")]
pub struct NetError {
    /// What was run.
    pub command: String,
    /// Its stderr, or why it could not run.
    pub message: String,
}

/// The host-side addresses tenants may reach.
#[derive(Debug, Clone)]
pub struct HostServices {
    /// The credential broker's address (169.254.170.23 in production).
    pub broker: Ipv4Addr,
    /// The broker's port.
    pub broker_port: u16,
}

impl Default for HostServices {
    fn default() -> Self {
        Self {
            broker: Ipv4Addr::new(169, 254, 170, 23),
            broker_port: 80,
        }
    }
}

/// Where the rules go: the host's own namespace, or a named network namespace (tests).
#[derive(Debug, Clone, Default)]
pub struct Firewall {
    /// `ip netns` name to run iptables in; `None` for the current namespace.
    pub netns: Option<String>,
}

/// One tenant's network identity.
#[derive(Debug, Clone, Copy)]
pub struct TenantNet {
    /// The tenant slot (names its chains).
    pub slot: u16,
    /// The tenant subnet.
    pub subnet: (Ipv4Addr, u8),
}

impl TenantNet {
    fn cidr(&self) -> String {
        format!("{}/{}", self.subnet.0, self.subnet.1)
    }

    /// The tenant's forward chain name.
    pub fn forward_chain(&self) -> String {
        format!("M8T-{}-FWD", self.slot)
    }

    /// The tenant's input chain name.
    pub fn input_chain(&self) -> String {
        format!("M8T-{}-IN", self.slot)
    }

    /// The tenant's nat chain name.
    pub fn nat_chain(&self) -> String {
        format!("M8T-{}-NAT", self.slot)
    }

    /// The `iptables-restore --noflush` input that (re)writes this tenant's chains.
    pub fn render(&self, host: &HostServices, quarantined: bool) -> String {
        let (s, fwd, inp, nat) = (
            self.cidr(),
            self.forward_chain(),
            self.input_chain(),
            self.nat_chain(),
        );
        let mut r = String::new();
        r.push_str("*filter\n");
        // Declaring a chain in --noflush mode creates or flushes exactly that chain.
        r.push_str(&format!(":{fwd} - [0:0]\n:{inp} - [0:0]\n"));
        if quarantined {
            r.push_str(&format!("-A {fwd} -j DROP\n-A {inp} -j DROP\n"));
        } else {
            r.push_str(&format!("-A {fwd} -d {IMDS} -j DROP\n"));
            // Own subnet first (a tenant's networks talk to each other), then every other tenant.
            r.push_str(&format!("-A {fwd} -d {s} -j ACCEPT\n"));
            r.push_str(&format!("-A {fwd} -d {TENANTS_NET} -j DROP\n"));
            r.push_str(&format!("-A {fwd} -j ACCEPT\n"));
            r.push_str(&format!(
                "-A {inp} -d {}/32 -p tcp --dport {} -j ACCEPT\n",
                host.broker, host.broker_port
            ));
            r.push_str(&format!(
                "-A {inp} -p udp --dport 53 -j ACCEPT\n-A {inp} -p tcp --dport 53 -j ACCEPT\n"
            ));
            r.push_str(&format!(
                "-A {inp} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
            ));
            r.push_str(&format!("-A {inp} -j DROP\n"));
        }
        r.push_str("COMMIT\n*nat\n");
        r.push_str(&format!(":{nat} - [0:0]\n"));
        if !quarantined {
            r.push_str(&format!("-A {nat} ! -d {TENANTS_NET} -j MASQUERADE\n"));
        }
        r.push_str("COMMIT\n");
        r
    }

    /// The jumps from hostd's top-level chains into this tenant's chains: (table, chain, rule).
    fn jumps(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let s = self.cidr();
        let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        vec![
            (
                "filter",
                FORWARD_CHAIN,
                v(&["-s", &s, "-j", &self.forward_chain()]),
            ),
            // Replies to the tenant's own egress (FORWARD's policy is DROP where docker runs).
            (
                "filter",
                FORWARD_CHAIN,
                v(&[
                    "-d",
                    &s,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ]),
            ),
            (
                "filter",
                INPUT_CHAIN,
                v(&["-s", &s, "-j", &self.input_chain()]),
            ),
            ("nat", NAT_CHAIN, v(&["-s", &s, "-j", &self.nat_chain()])),
        ]
    }
}

impl Firewall {
    fn cmd(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn iptables(&self, args: &[String]) -> Result<bool, NetError> {
        let mut c = self.cmd("iptables");
        c.arg("-w").args(args);
        let shown = format!("iptables {}", args.join(" "));
        let out = c.output().map_err(|e| NetError {
            command: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(out.status.success())
    }

    fn must(&self, args: &[String]) -> Result<(), NetError> {
        let mut c = self.cmd("iptables");
        c.arg("-w").args(args);
        let shown = format!("iptables {}", args.join(" "));
        let out = c.output().map_err(|e| NetError {
            command: shown.clone(),
            message: e.to_string(),
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError {
                command: shown,
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn s(a: &[&str]) -> Vec<String> {
        a.iter().map(|x| x.to_string()).collect()
    }

    /// Creates hostd's top-level chains and hooks them first into INPUT, FORWARD and
    /// POSTROUTING; idempotent.
    pub fn ensure_base(&self) -> Result<(), NetError> {
        // Host-wide chains under per-tenant locks: two tenants created at once would both
        // find a chain missing and both create it (the VM tier's parallel creates did).
        static BASE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _base = BASE.lock().unwrap_or_else(|p| p.into_inner());
        for (table, chain, hook) in [
            ("filter", FORWARD_CHAIN, "FORWARD"),
            ("filter", INPUT_CHAIN, "INPUT"),
            ("nat", NAT_CHAIN, "POSTROUTING"),
        ] {
            if !self.iptables(&Self::s(&["-t", table, "-nL", chain]))? {
                // Another process (an operator's iptables run) may have made it meanwhile.
                if let Err(e) = self.must(&Self::s(&["-t", table, "-N", chain])) {
                    if !self.iptables(&Self::s(&["-t", table, "-nL", chain]))? {
                        return Err(e);
                    }
                }
            }
            if !self.iptables(&Self::s(&["-t", table, "-C", hook, "-j", chain]))? {
                self.must(&Self::s(&["-t", table, "-I", hook, "1", "-j", chain]))?;
            }
        }
        Ok(())
    }

    /// Installs or rewrites one tenant's rules (normal or quarantined); idempotent.
    pub fn apply(
        &self,
        t: &TenantNet,
        host: &HostServices,
        quarantined: bool,
    ) -> Result<(), NetError> {
        self.ensure_base()?;
        let script = t.render(host, quarantined);
        let mut c = self.cmd("iptables-restore");
        c.args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let err = |m: String| NetError {
            command: format!("iptables-restore --noflush (tenant slot {})", t.slot),
            message: m,
        };
        let mut child = c.spawn().map_err(|e| err(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| err(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        for (table, chain, rule) in t.jumps() {
            let mut check = Self::s(&["-t", table, "-C", chain]);
            check.extend(rule.iter().cloned());
            if !self.iptables(&check)? {
                let mut add = Self::s(&["-t", table, "-A", chain]);
                add.extend(rule);
                self.must(&add)?;
            }
        }
        Ok(())
    }

    /// Whether the tenant's chains are installed (what [`Firewall::apply`] makes).
    pub fn is_applied(&self, t: &TenantNet) -> Result<bool, NetError> {
        for chain in [t.forward_chain(), t.input_chain()] {
            if !self.iptables(&Self::s(&["-t", "filter", "-S", &chain]))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes every rule and chain of one tenant; removing twice is not an error.
    pub fn remove(&self, t: &TenantNet) -> Result<(), NetError> {
        for (table, chain, rule) in t.jumps() {
            let mut del = Self::s(&["-t", table, "-D", chain]);
            del.extend(rule);
            while self.iptables(&del)? {}
        }
        for (table, chain) in [
            ("filter", t.forward_chain()),
            ("filter", t.input_chain()),
            ("nat", t.nat_chain()),
        ] {
            if self.iptables(&Self::s(&["-t", table, "-nL", &chain]))? {
                self.must(&Self::s(&["-t", table, "-F", &chain]))?;
                self.must(&Self::s(&["-t", table, "-X", &chain]))?;
            }
        }
        Ok(())
    }

    /// Every rule hostd has in a table, as `iptables -S` prints them (for status and tests).
    pub fn rules(&self, table: &str) -> Result<Vec<String>, NetError> {
        let out = self
            .cmd("iptables")
            .args(["-w", "-t", table, "-S"])
            .output()
            .map_err(|e| NetError {
                command: format!("iptables -t {table} -S"),
                message: e.to_string(),
            })?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("M8T"))
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_rules_say_what_the_policy_says() {
        let t = TenantNet {
            slot: 7,
            subnet: (Ipv4Addr::new(10, 250, 7, 0), 24),
        };
        let r = t.render(&HostServices::default(), false);
        assert!(r.contains("-A M8T-7-FWD -d 169.254.169.254/32 -j DROP"));
        assert!(r.contains(
            "-A M8T-7-FWD -d 10.250.7.0/24 -j ACCEPT\n-A M8T-7-FWD -d 10.250.0.0/16 -j DROP"
        ));
        assert!(r.contains("-A M8T-7-IN -d 169.254.170.23/32 -p tcp --dport 80 -j ACCEPT"));
        assert!(r.contains("-A M8T-7-IN -j DROP"));
        assert!(r.contains("-A M8T-7-NAT ! -d 10.250.0.0/16 -j MASQUERADE"));
        // The IMDS and cross-tenant drops come before the egress accept.
        assert!(
            r.find("169.254.169.254").unwrap()
                < r.find("-A M8T-7-FWD -d 10.250.7.0/24 -j ACCEPT").unwrap()
        );
        let q = t.render(&HostServices::default(), true);
        assert!(q.contains("-A M8T-7-FWD -j DROP") && q.contains("-A M8T-7-IN -j DROP"));
        assert!(
            !q.contains("ACCEPT") && !q.contains("MASQUERADE"),
            "quarantine cuts everything:\n{q}"
        );
    }
}
