//! The world a control test against moto owns: its control, fleet, subnets, AMI, customers
//! and hosts, made with unique names and tags, and removed again. Shared by the test crates
//! (each uses a part of it).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, ResourceType};
use control::api::{self, ApiState};
use control::inventory;
use control::jobs::JobTable;
use control::store::Store;
use control::tags;
use control::tokens::{self, Scope};
use control::{Clients, Control, ControlConfig, DeployRequest, Progress, Secrets};
use m8trx_spec::CustomerName;

pub const REGION: &str = "us-east-2";

pub fn moto() -> String {
    std::env::var("M8TRX_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "M8TRX_MOTO_ENDPOINT is not set: these tests need the moto server of the real test \
             environment. Run `make test` (or `scripts/test-env` and source /var/lib/m8trx-test/env)."
        )
    })
}

/// SDK settings for a client of the moto server with the tests' credentials (tests that
/// build a client with an interceptor of their own).
pub async fn moto_conf() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto())
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "AKIDCONTROLTEST",
            "control-secret",
            None,
            None,
            "test",
        ))
        .load()
        .await
}

/// A short name unique to this process and call: `c<pid><n><label>`, within 32 characters.
pub fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "c{}-{}{:x}-{label}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 0xfff
    )
}

/// Everything one test owns: its control, its fleet, subnets, AMI and customers.
pub struct World {
    pub control: Control,
    pub subnets: Vec<(String, String)>, // (subnet id, AZ)
    pub hosts: Vec<String>,
    pub customers: Vec<CustomerName>,
}

pub fn recorder() -> (Progress, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (
        Progress::new(move |s| l.lock().unwrap().push(s.to_owned())),
        lines,
    )
}

impl World {
    pub async fn new() -> Self {
        let fleet = unique("fleet");
        let mut config = ControlConfig {
            region: REGION.into(),
            endpoint_url: Some(moto()),
            platform_domain: "m8trx.test".into(),
            brain_url: Some("http://brain.tailnet.test:8080".into()),
            fleet,
            poll_interval: Duration::from_millis(50),
            wait_timeout: Duration::from_secs(60),
            ..ControlConfig::default()
        };
        let clients = Clients::with_credentials(&config, "AKIDCONTROLTEST", "control-secret").await;
        let ec2 = &clients.ec2;
        let ami = ec2
            .register_image()
            .name(unique("hardened-ami"))
            .root_device_name("/dev/sda1")
            .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .send()
            .await
            .expect("RegisterImage against moto")
            .image_id()
            .unwrap()
            .to_owned();
        let octet = (std::process::id() % 200) + 20;
        let vpc = ec2
            .create_vpc()
            .cidr_block(format!("10.{octet}.0.0/16"))
            .send()
            .await
            .expect("CreateVpc")
            .vpc()
            .unwrap()
            .vpc_id()
            .unwrap()
            .to_owned();
        let mut subnets = Vec::new();
        for (i, az) in ["us-east-2a", "us-east-2b"].into_iter().enumerate() {
            let s = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(format!("10.{octet}.{i}.0/24"))
                .availability_zone(az)
                .send()
                .await
                .expect("CreateSubnet");
            subnets.push((
                s.subnet().unwrap().subnet_id().unwrap().to_owned(),
                az.to_owned(),
            ));
        }
        config.ami_id = Some(ami);
        config.dedicated_subnet_id = Some(subnets[0].0.clone());
        Self {
            control: Control { config, clients },
            subnets,
            hosts: Vec::new(),
            customers: Vec::new(),
        }
    }

    pub fn clients(&self) -> &Clients {
        &self.control.clients
    }

    /// A customer with its own CMK (alias/m8trx-<name>) and instance profile (m8trx-<name>).
    pub async fn customer(&mut self, label: &str) -> CustomerName {
        let name = CustomerName::parse(&unique(label)).unwrap();
        let c = self.clients();
        let key = c
            .kms
            .create_key()
            .description(format!("m8trx customer CMK {name}"))
            .send()
            .await
            .expect("CreateKey");
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        c.kms
            .create_alias()
            .alias_name(format!("alias/m8trx-{name}"))
            .target_key_id(&key_id)
            .send()
            .await
            .expect("CreateAlias");
        let role = format!("m8trx-{name}");
        c.iam
            .create_role()
            .role_name(&role)
            .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key("m8trx:external-id")
                    .value(format!("ext-{name}"))
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("CreateRole");
        c.iam
            .create_instance_profile()
            .instance_profile_name(&role)
            .send()
            .await
            .expect("CreateInstanceProfile");
        c.iam
            .add_role_to_instance_profile()
            .instance_profile_name(&role)
            .role_name(&role)
            .send()
            .await
            .expect("AddRoleToInstanceProfile");
        self.customers.push(name.clone());
        name
    }

    /// A running shared host of this test's fleet in subnet `i`, with capacity and ledger tags.
    pub async fn host(
        &mut self,
        subnet: usize,
        memory_mib: u64,
        slots: u64,
        taken: &[(&str, u64)],
    ) -> String {
        let c = self.clients();
        let mut t = vec![
            tags::tag(tags::COMPONENT, tags::ROLE_SHARED_HOST),
            tags::tag(tags::FLEET, &self.control.config.fleet),
            tags::tag(tags::SHARED_HOST, &format!("h{}", self.hosts.len())),
            tags::tag(tags::CAPACITY_MEMORY, &memory_mib.to_string()),
            tags::tag(tags::CAPACITY_CPU, "4000"),
            tags::tag(tags::CAPACITY_SLOTS, &slots.to_string()),
            tags::tag(tags::NAME, "m8trx-shared-host-test"),
        ];
        for (tenant, mem) in taken {
            t.push(tags::tag(
                &format!("{}{tenant}", tags::TENANT_PREFIX),
                &format!("memory-mib={mem},cpu-millis=500,state=running"),
            ));
        }
        let out = c
            .ec2
            .run_instances()
            .image_id(self.control.config.ami_id.clone().unwrap())
            .instance_type(InstanceType::M6iLarge)
            .min_count(1)
            .max_count(1)
            .subnet_id(&self.subnets[subnet].0)
            .tag_specifications(tags::spec(ResourceType::Instance, t))
            .send()
            .await
            .expect("RunInstances (shared host)");
        let id = out.instances()[0].instance_id().unwrap().to_owned();
        self.hosts.push(id.clone());
        id
    }

    /// Takes `host`'s placement lock as another placement would; returns the lock's name.
    /// A placement on that host (a deploy, a move there) waits until it is deleted.
    pub async fn hold_placement_lock(&self, host: &str) -> String {
        let lock = inventory::lock_parameter(host);
        self.clients()
            .ssm
            .put_parameter()
            .name(&lock)
            .value("held-by-the-test")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
        lock
    }

    pub fn request(&self, name: &CustomerName, hosting: &str) -> DeployRequest {
        DeployRequest {
            name: name.to_string(),
            template: Some("agent".into()),
            instance_type: Some("t3.medium".into()),
            volume_size_gb: Some(40),
            subdomain: None,
            hosting: Some(hosting.into()),
            regulated: false,
            brain_url: None,
            subnet_id: None,
            secrets: Secrets {
                brain_key: Some(format!("br_{name}_secret")),
                tailscale_auth_key: Some(format!("tskey-auth-{name}")),
                agent_fetch_pat: Some("ghp_fleetwidepat".into()),
                agent_ui_password: None,
                external_id: None,
            },
        }
    }

    /// Everything of `name` that exists: live instances and volumes with its Customer tag,
    /// its SSM parameters, and reservation tags for it on any host of this fleet.
    pub async fn leftovers(&self, name: &CustomerName) -> Vec<String> {
        let c = self.clients();
        let mut found = Vec::new();
        let inst = c
            .ec2
            .describe_instances()
            .filters(tags::filter(tags::CUSTOMER, name.as_str()))
            .filters(tags::attr(
                "instance-state-name",
                &["pending", "running", "stopping", "stopped", "shutting-down"],
            ))
            .send()
            .await
            .unwrap();
        for r in inst.reservations() {
            for i in r.instances() {
                found.push(format!("instance {}", i.instance_id().unwrap()));
            }
        }
        let vols = c
            .ec2
            .describe_volumes()
            .filters(tags::filter(tags::CUSTOMER, name.as_str()))
            .send()
            .await
            .unwrap();
        for v in vols.volumes() {
            found.push(format!(
                "volume {} ({:?})",
                v.volume_id().unwrap(),
                v.state()
            ));
        }
        for p in control::params::existing_parameters(&c.ssm, name)
            .await
            .unwrap()
        {
            found.push(format!("parameter {p}"));
        }
        let hosts = c
            .ec2
            .describe_instances()
            .filters(tags::filter(tags::FLEET, &self.control.config.fleet))
            .filters(tags::attr(
                "tag-key",
                &[&format!("{}{name}", tags::TENANT_PREFIX)],
            ))
            .send()
            .await
            .unwrap();
        for r in hosts.reservations() {
            for i in r.instances() {
                found.push(format!("reservation on {}", i.instance_id().unwrap()));
            }
        }
        found
    }

    pub async fn reservation(
        &self,
        host: &str,
        name: &CustomerName,
    ) -> Option<inventory::Reservation> {
        let h = inventory::get_host(&self.clients().ec2, host)
            .await
            .unwrap();
        h.reservation(name.as_str()).cloned()
    }

    /// Scripts SSM received for `instance` (moto records them; it cannot run them).
    pub async fn commands_sent(&self, instance: &str) -> Vec<String> {
        let out = self
            .clients()
            .ssm
            .list_commands()
            .instance_id(instance)
            .send()
            .await
            .unwrap();
        out.commands()
            .iter()
            .filter(|c| c.instance_ids().iter().any(|i| i == instance))
            .filter_map(|c| {
                c.parameters()
                    .and_then(|p| p.get("commands"))
                    .map(|l| l.join("\n"))
            })
            .collect()
    }

    pub async fn cleanup(self) {
        let c = &self.control.clients;
        for name in &self.customers {
            let _ = self.control.delete(name, false, &Progress::silent()).await;
            let role = format!("m8trx-{name}");
            let _ = c
                .iam
                .remove_role_from_instance_profile()
                .instance_profile_name(&role)
                .role_name(&role)
                .send()
                .await;
            let _ = c
                .iam
                .delete_instance_profile()
                .instance_profile_name(&role)
                .send()
                .await;
            let _ = c.iam.delete_role().role_name(&role).send().await;
            if let Ok(k) = c
                .kms
                .describe_key()
                .key_id(format!("alias/m8trx-{name}"))
                .send()
                .await
            {
                let _ = c
                    .kms
                    .delete_alias()
                    .alias_name(format!("alias/m8trx-{name}"))
                    .send()
                    .await;
                if let Some(m) = k.key_metadata() {
                    let _ = c
                        .kms
                        .schedule_key_deletion()
                        .key_id(m.key_id())
                        .pending_window_in_days(7)
                        .send()
                        .await;
                }
            }
        }
        if !self.hosts.is_empty() {
            let _ = c
                .ec2
                .terminate_instances()
                .set_instance_ids(Some(self.hosts.clone()))
                .send()
                .await;
        }
    }
}

pub async fn cmk_arn(w: &World, name: &CustomerName) -> String {
    w.clients()
        .kms
        .describe_key()
        .key_id(format!("alias/m8trx-{name}"))
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

/// The API over `control`, with a fresh in-memory state and every request carrying a token
/// with every scope (tests of what the routes do; `jobs_api.rs` tests the tokens).
pub fn authed_app(control: &Control) -> axum::Router {
    let store = Store::memory().unwrap();
    let token = tokens::create(&store, "test", &Scope::ALL.into()).unwrap();
    let jobs = JobTable::new(store.clone());
    let bearer: axum::http::HeaderValue = format!("Bearer {token}").parse().unwrap();
    api::router(ApiState {
        control: Arc::new(control.clone()),
        jobs,
        store,
    })
    .layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| {
            let bearer = bearer.clone();
            async move {
                req.headers_mut()
                    .entry(axum::http::header::AUTHORIZATION)
                    .or_insert(bearer);
                req
            }
        },
    ))
}
