//! The tailscale sidecar every agent tenant gets: one more service in the tenant's own
//! compose project, so it runs in the tenant's engine, on the tenant's network, under the
//! tenant's hardening (no added capability: userspace networking), with its state in a named
//! volume — which lives in the engine's data root, on the tenant volume. The auth key is
//! never copied into the container's configuration: `TS_AUTHKEY` names the secret file
//! (`file:` form, which `tailscale up --auth-key` reads) hostd wrote from the tenant's
//! `tailscale-auth-key` parameter.

use serde_norway::{Mapping, Value};

use crate::secrets::SECRETS_MOUNT;

/// The service name hostd reserves for the sidecar in agent tenants' projects.
pub const SERVICE: &str = "tailscale";
/// The named volume holding tailscaled's state.
pub const STATE_VOLUME: &str = "tailscale-state";
/// Where the sidecar keeps its state.
pub const STATE_DIR: &str = "/var/lib/tailscale";

/// How this host runs sidecars.
#[derive(Debug, Clone)]
pub struct TailscaleConfig {
    /// The image (production: the official one pinned by digest).
    pub image: String,
    /// This host's id; the node is named `<host-id>-<name>`.
    pub host_id: String,
}

/// A compose file that cannot take the sidecar.
#[derive(Debug, thiserror::Error)]
#[error(
    "service `{SERVICE}` is reserved for hostd's tailscale sidecar in agent tenants; rename yours"
)]
pub struct Reserved;

/// The arguments the node comes up with: the customer's tag, and nothing that would let the
/// tailnet reach into the host (no SSH, no DNS or routes taken from the tailnet).
pub fn extra_args(tenant: &str) -> String {
    format!(
        "--advertise-tags=tag:m8trx-cust-{tenant} --ssh=false --accept-dns=false --accept-routes=false"
    )
}

/// Adds the sidecar service and its state volume to an (already policy-checked) document.
pub fn add_sidecar(doc: &mut Mapping, cfg: &TailscaleConfig, tenant: &str) -> Result<(), Reserved> {
    let s = |x: &str| Value::String(x.to_owned());
    let services = doc
        .entry(s("services"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let Value::Mapping(services) = services else {
        return Err(Reserved);
    };
    if services.contains_key(SERVICE) {
        return Err(Reserved);
    }
    let mut env = Mapping::new();
    env.insert(
        s("TS_AUTHKEY"),
        s(&format!("file:{SECRETS_MOUNT}/tailscale-auth-key")),
    );
    env.insert(s("TS_HOSTNAME"), s(&format!("{}-{tenant}", cfg.host_id)));
    env.insert(s("TS_USERSPACE"), s("true"));
    env.insert(s("TS_STATE_DIR"), s(STATE_DIR));
    env.insert(s("TS_EXTRA_ARGS"), s(&extra_args(tenant)));
    let mut svc = Mapping::new();
    svc.insert(s("image"), s(&cfg.image));
    svc.insert(s("environment"), Value::Mapping(env));
    svc.insert(
        s("volumes"),
        Value::Sequence(vec![s(&format!("{STATE_VOLUME}:{STATE_DIR}"))]),
    );
    svc.insert(s("restart"), s("unless-stopped"));
    services.insert(s(SERVICE), Value::Mapping(svc));
    let volumes = doc
        .entry(s("volumes"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Value::Mapping(v) = volumes {
        v.insert(s(STATE_VOLUME), Value::Mapping(Mapping::new()));
    } else {
        *volumes = Value::Mapping(Mapping::from_iter([(
            s(STATE_VOLUME),
            Value::Mapping(Mapping::new()),
        )]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TailscaleConfig {
        TailscaleConfig {
            image: "tailscale/tailscale@sha256:0000".into(),
            host_id: "host-7".into(),
        }
    }

    #[test]
    fn sidecar_carries_the_contract_and_passes_the_policy() {
        let mut doc =
            crate::policy::check_compose("services:\n  app:\n    image: example/app:1\n").unwrap();
        add_sidecar(&mut doc, &cfg(), "acme").unwrap();
        let ts = &doc["services"]["tailscale"];
        assert_eq!(
            ts["image"].as_str(),
            Some("tailscale/tailscale@sha256:0000")
        );
        assert_eq!(
            ts["environment"]["TS_HOSTNAME"].as_str(),
            Some("host-7-acme")
        );
        assert_eq!(
            ts["environment"]["TS_AUTHKEY"].as_str(),
            Some("file:/run/secrets/m8trx/tailscale-auth-key")
        );
        assert_eq!(
            ts["environment"]["TS_EXTRA_ARGS"].as_str(),
            Some("--advertise-tags=tag:m8trx-cust-acme --ssh=false --accept-dns=false --accept-routes=false")
        );
        assert!(doc["volumes"].get(STATE_VOLUME).is_some());
        // What hostd adds is itself within the tenant policy.
        let text = serde_norway::to_string(&doc).unwrap();
        crate::policy::check_compose(&text).unwrap();
    }

    #[test]
    fn a_user_service_named_tailscale_is_refused() {
        let mut doc =
            crate::policy::check_compose("services:\n  tailscale:\n    image: example/app:1\n")
                .unwrap();
        assert!(add_sidecar(&mut doc, &cfg(), "acme").is_err());
    }
}
