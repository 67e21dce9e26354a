//! The tailscale sidecar every agent tenant gets: one more service in the tenant's own
//! compose project, so it runs in the tenant's engine, on the tenant's network, under the
//! tenant's hardening (no added capability: userspace networking), with its state in a named
//! volume — which lives in the engine's data root, on the tenant volume. The auth key is
//! never copied into the container's configuration: `TS_AUTHKEY` names the secret file
//! (`file:` form, which `tailscale up --auth-key` reads) hostd wrote from the tenant's
//! `tailscale-auth-key` parameter, which only the sidecar mounts (an external secret).

use crate::compose::model::forms::Pairs;
use crate::compose::model::{
    ComposeFile, FileRef, FileRefLong, FileSource, Service, ServiceVolume,
};

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

/// The platform parameter holding the auth key, and the secret's name in the project.
pub const AUTH_KEY: &str = "tailscale-auth-key";

/// A compose file that cannot take the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Reserved {
    /// The file has a service of the sidecar's name.
    #[error("service `{SERVICE}` is reserved for hostd's tailscale sidecar in agent tenants; rename yours")]
    Service,
    /// The file declares the sidecar's secret as something else.
    #[error("secret `{AUTH_KEY}` is the tailscale sidecar's platform parameter in agent tenants; declare it as `external: true` or rename yours")]
    Secret,
}

/// The arguments the node comes up with: the customer's tag, and nothing that would let the
/// tailnet reach into the host (no SSH, no DNS or routes taken from the tailnet).
pub fn extra_args(tenant: &str) -> String {
    format!(
        "--advertise-tags=tag:m8trx-cust-{tenant} --ssh=false --accept-dns=false --accept-routes=false"
    )
}

/// Adds the sidecar service and its state volume to an (already policy-checked) file.
pub fn add_sidecar(
    file: &mut ComposeFile,
    cfg: &TailscaleConfig,
    tenant: &str,
) -> Result<(), Reserved> {
    if file.services.contains_key(SERVICE) {
        return Err(Reserved::Service);
    }
    let secret = file
        .secrets
        .entry(AUTH_KEY.to_owned())
        .or_insert(FileSource {
            external: Some(true),
            ..Default::default()
        });
    if secret.external != Some(true)
        || crate::compose::files::platform_leaf(AUTH_KEY, secret) != AUTH_KEY
    {
        return Err(Reserved::Secret);
    }
    let env = [
        ("TS_AUTHKEY", format!("file:{SECRETS_MOUNT}/{AUTH_KEY}")),
        ("TS_HOSTNAME", format!("{}-{tenant}", cfg.host_id)),
        ("TS_USERSPACE", "true".to_owned()),
        ("TS_STATE_DIR", STATE_DIR.to_owned()),
        ("TS_EXTRA_ARGS", extra_args(tenant)),
    ];
    let svc = Service {
        image: Some(cfg.image.clone()),
        environment: Some(Pairs(
            env.into_iter()
                .map(|(k, v)| (k.to_owned(), Some(v)))
                .collect(),
        )),
        volumes: Some(vec![ServiceVolume::Short(format!(
            "{STATE_VOLUME}:{STATE_DIR}"
        ))]),
        restart: Some("unless-stopped".into()),
        secrets: Some(vec![FileRef::Long(FileRefLong {
            source: AUTH_KEY.to_owned(),
            target: Some(format!("{SECRETS_MOUNT}/{AUTH_KEY}")),
            ..Default::default()
        })]),
        ..Default::default()
    };
    file.services.insert(SERVICE.to_owned(), svc);
    file.volumes.insert(STATE_VOLUME.to_owned(), None);
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
        let limits = crate::spec::Template::Agent.default_limits();
        let bundle = crate::compose::Bundle::of("services:\n  app:\n    image: example/app:1\n");
        let mut file = crate::policy::check_compose(&bundle, &limits).unwrap();
        add_sidecar(&mut file, &cfg(), "acme").unwrap();
        let ts = &file.services["tailscale"];
        assert_eq!(ts.image.as_deref(), Some("tailscale/tailscale@sha256:0000"));
        let env: std::collections::HashMap<_, _> =
            ts.environment.as_ref().unwrap().0.iter().cloned().collect();
        assert_eq!(env["TS_HOSTNAME"].as_deref(), Some("host-7-acme"));
        assert_eq!(
            env["TS_AUTHKEY"].as_deref(),
            Some("file:/run/secrets/m8trx/tailscale-auth-key")
        );
        assert_eq!(
            env["TS_EXTRA_ARGS"].as_deref(),
            Some("--advertise-tags=tag:m8trx-cust-acme --ssh=false --accept-dns=false --accept-routes=false")
        );
        assert!(file.volumes.contains_key(STATE_VOLUME));
        // What hostd adds is itself within the tenant policy.
        let v = crate::policy::check(&file, &bundle, &limits);
        // Only the sidecar sees the auth key.
        let vars = bundle.vars();
        assert!(crate::compose::files::mounts(&file, &file.services["app"], &vars).is_empty());
        assert_eq!(
            crate::compose::files::mounts(&file, ts, &vars)[0].target,
            "/run/secrets/m8trx/tailscale-auth-key"
        );
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn a_user_service_named_tailscale_is_refused() {
        let limits = crate::spec::Template::Agent.default_limits();
        let bundle =
            crate::compose::Bundle::of("services:\n  tailscale:\n    image: example/app:1\n");
        let mut file = crate::policy::check_compose(&bundle, &limits).unwrap();
        assert!(add_sidecar(&mut file, &cfg(), "acme").is_err());
        let bundle = crate::compose::Bundle::of(
            "services:\n  app:\n    image: example/app:1\nsecrets:\n  tailscale-auth-key: {content: mine}\n",
        );
        let mut file = crate::policy::check_compose(&bundle, &limits).unwrap();
        assert!(matches!(
            add_sidecar(&mut file, &cfg(), "acme"),
            Err(Reserved::Secret)
        ));
    }
}
