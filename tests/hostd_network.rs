//! hostd's tenant firewall, live, in network namespaces this test makes: a "host"
//! namespace with two tenant bridges (10.250.201.0/24 and 10.250.202.0/24), a tenant
//! container namespace on each, the credential broker's address on the host (on `lo`:
//! this kernel has no dummy interfaces; production uses one), and an
//! "outside" namespace holding both IMDS (169.254.169.254) and an internet server.
//! Before the rules everything is reachable (so the probes can fail); after them: no
//! tenant-to-tenant traffic, no IMDS, host only at the broker, egress masqueraded;
//! quarantine cuts one tenant only; removal leaves no rule.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use hostd::network::{Firewall, HostServices, TenantNet};
use m8trx_e2e::require_root;

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(
        out.status.success(),
        "setup failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Topology {
    p: String,
    servers: Vec<Child>,
    root: std::path::PathBuf,
}

impl Topology {
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.p)
    }

    fn build() -> Self {
        let p = format!("m8n{}", std::process::id() % 100_000);
        let root = std::env::temp_dir().join(format!("{p}-www"));
        let mut t = Topology {
            p: p.clone(),
            servers: Vec::new(),
            root,
        };
        let (h, a, b, i) = (t.ns("h"), t.ns("a"), t.ns("b"), t.ns("i"));
        sh(&format!(
            r#"
for n in {h} {a} {b} {i}; do ip netns add $n; ip -n $n link set lo up; done
ip -n {h} link add bra type bridge; ip -n {h} addr add 10.250.201.1/24 dev bra; ip -n {h} link set bra up
ip -n {h} link add brb type bridge; ip -n {h} addr add 10.250.202.1/24 dev brb; ip -n {h} link set brb up
ip link add va netns {a} type veth peer name va-h netns {h}
ip -n {a} addr add 10.250.201.2/24 dev va; ip -n {a} link set va up; ip -n {a} route add default via 10.250.201.1
ip -n {h} link set va-h master bra up
ip link add vb netns {b} type veth peer name vb-h netns {h}
ip -n {b} addr add 10.250.202.2/24 dev vb; ip -n {b} link set vb up; ip -n {b} route add default via 10.250.202.1
ip -n {h} link set vb-h master brb up
ip link add up-h netns {h} type veth peer name up-i netns {i}
ip -n {h} addr add 192.0.2.1/24 dev up-h; ip -n {h} link set up-h up
ip -n {i} addr add 192.0.2.2/24 dev up-i; ip -n {i} link set up-i up
ip -n {i} addr add 169.254.169.254/32 dev lo; ip -n {i} addr add 198.51.100.7/32 dev lo
ip -n {i} route add 10.250.0.0/16 via 192.0.2.1
ip -n {h} route add 169.254.169.254/32 via 192.0.2.2; ip -n {h} route add 198.51.100.7/32 via 192.0.2.2
ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1
ip -n {h} addr add 169.254.170.23/32 dev lo
"#
        ));
        for (name, body) in [("b", "tenant-b"), ("i", "outside"), ("h", "host")] {
            let dir = t.root.join(name);
            std::fs::create_dir_all(dir.join("cgi-bin")).unwrap();
            std::fs::write(dir.join("index.html"), body).unwrap();
            let cgi = dir.join("cgi-bin/ip");
            std::fs::write(
                &cgi,
                "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
            )
            .unwrap();
            sh(&format!("chmod 755 {}", cgi.display()));
        }
        let mut serve = |ns: String, port: &str, dir: &str| {
            let child = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "busybox", "httpd", "-f", "-p", port, "-h",
                ])
                .arg(t.root.join(dir))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            t.servers.push(child);
        };
        serve(b.clone(), "8080", "b");
        serve(i.clone(), "80", "i");
        serve(h.clone(), "80", "h");
        serve(h.clone(), "2222", "h");
        std::thread::sleep(std::time::Duration::from_millis(300));
        t
    }

    /// Fetches a URL from inside a namespace; `None` when it cannot be reached.
    fn get(&self, from: &str, url: &str) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "curl",
                "-sf",
                "--max-time",
                "2",
                url,
            ])
            .output()
            .unwrap();
        // busybox httpd shows IPv4 clients as [::ffff:a.b.c.d]; keep the plain address.
        out.status.success().then(|| {
            let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            body.strip_prefix("[::ffff:")
                .and_then(|b| b.strip_suffix(']'))
                .map(str::to_owned)
                .unwrap_or(body)
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["h", "a", "b", "i"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn tenant_firewall_isolates_tenants_imds_and_host_and_quarantines() {
    require_root();
    let t = Topology::build();
    let b_url = "http://10.250.202.2:8080/";
    let imds = "http://169.254.169.254/";
    let internet = "http://198.51.100.7/cgi-bin/ip";
    let broker = "http://169.254.170.23/";

    // Without hostd's rules every path is open: the probes below can fail.
    assert_eq!(t.get("a", b_url).as_deref(), Some("tenant-b"));
    assert_eq!(t.get("a", imds).as_deref(), Some("outside"));
    assert_eq!(
        t.get("a", "http://169.254.170.23:2222/").as_deref(),
        Some("host")
    );

    let fw = Firewall {
        netns: Some(t.ns("h")),
    };
    let host = HostServices {
        broker: Ipv4Addr::new(169, 254, 170, 23),
        broker_port: 80,
    };
    let ta = TenantNet {
        slot: 201,
        subnet: (Ipv4Addr::new(10, 250, 201, 0), 24),
    };
    let tb = TenantNet {
        slot: 202,
        subnet: (Ipv4Addr::new(10, 250, 202, 0), 24),
    };
    fw.apply(&ta, &host, false).unwrap();
    fw.apply(&tb, &host, false).unwrap();
    fw.apply(&ta, &host, false).unwrap(); // idempotent: no duplicate rules
    let filter = fw.rules("filter").unwrap();
    assert_eq!(
        filter
            .iter()
            .filter(|r| r.contains("-s 10.250.201.0/24 -j M8T-201-FWD"))
            .count(),
        1,
        "{filter:#?}"
    );

    assert_eq!(t.get("a", b_url), None, "tenant A must not reach tenant B");
    assert_eq!(
        t.get("b", "http://10.250.201.1:80/"),
        None,
        "tenant B must not reach the host outside the broker"
    );
    assert_eq!(t.get("a", imds), None, "IMDS must be dropped");
    assert_eq!(
        t.get("a", "http://169.254.170.23:2222/"),
        None,
        "host services other than the broker are closed"
    );
    assert_eq!(
        t.get("a", broker).as_deref(),
        Some("host"),
        "the broker stays reachable"
    );
    assert_eq!(
        t.get("a", internet).as_deref(),
        Some("192.0.2.1"),
        "egress works and is masqueraded"
    );

    fw.apply(&ta, &host, true).unwrap();
    assert_eq!(t.get("a", internet), None, "quarantine cuts egress");
    assert_eq!(t.get("a", broker), None, "quarantine cuts the broker");
    assert_eq!(
        t.get("b", internet).as_deref(),
        Some("192.0.2.1"),
        "the other tenant is untouched"
    );

    fw.remove(&ta).unwrap();
    fw.remove(&tb).unwrap();
    fw.remove(&ta).unwrap(); // twice is fine
    let left: Vec<String> = ["filter", "nat"]
        .iter()
        .flat_map(|tbl| fw.rules(tbl).unwrap())
        .filter(|r| r.contains("M8T-20"))
        .collect();
    assert!(left.is_empty(), "removal left rules: {left:#?}");
}
