//! Tag keys control writes and reads: the customer's resources, shared-host capacity and the
//! reservation ledger. The README's "Tags" table documents the same keys.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use m8trx_spec::CustomerName;

/// Customer name on every resource of a customer (the bootstrap reads it via IMDS tags).
pub const CUSTOMER: &str = "Customer";
/// Human name in the EC2 console: `m8trx-<name>` or `m8trx-<name>-<suffix>`.
pub const NAME: &str = "Name";
/// Marks resources control created and may delete.
pub const MANAGED_BY: &str = "m8trx:managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "control";
/// What a resource is: [`COMPONENT_DEDICATED`], [`COMPONENT_TENANT_VOLUME`] (the key and
/// values terraform's DLM policy and the shared-host module use), or [`ROLE_SHARED_HOST`].
pub const COMPONENT: &str = "m8trx:role";
/// A customer's dedicated instance.
pub const COMPONENT_DEDICATED: &str = "dedicated-instance";
/// A shared tenant's data volume.
pub const COMPONENT_TENANT_VOLUME: &str = "tenant-volume";
/// Customer template (`agent` | `baseline`).
pub const TEMPLATE: &str = "m8trx:template";
/// Hostname `{label}.{platform-domain}`.
pub const HOSTNAME: &str = "m8trx:hostname";

/// Value of [`COMPONENT`] on a shared host (terraform `modules/shared-host`).
pub const ROLE_SHARED_HOST: &str = "shared-host";
/// On a shared host: the fleet it belongs to; only hosts of the configured fleet are candidates.
pub const FLEET: &str = "m8trx:fleet";
/// On a shared host: its key within the fleet.
pub const SHARED_HOST: &str = "m8trx:shared-host";
/// On a shared host: memory tenants may reserve, MiB.
pub const CAPACITY_MEMORY: &str = "m8trx:reservable-mem-mib";
/// On a shared host: CPU tenants may reserve, thousandths of a vCPU.
pub const CAPACITY_CPU: &str = "m8trx:reservable-cpu-mcpu";
/// On a shared host: how many tenants it takes at most.
pub const CAPACITY_SLOTS: &str = "m8trx:max-tenants";
/// On a shared host: prefix of one reservation per tenant, `m8trx:tenant:<name>`.
pub const TENANT_PREFIX: &str = "m8trx:tenant:";
/// On a shared host being drained (`control drain`): `true` keeps new placements away.
pub const DRAINING: &str = "m8trx:draining";

/// Builds one EC2 tag.
pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The tags every resource of `name` carries.
pub fn customer_tags(name: &CustomerName, component: &str, suffix: Option<&str>) -> Vec<Tag> {
    let display = match suffix {
        Some(s) => format!("m8trx-{name}-{s}"),
        None => format!("m8trx-{name}"),
    };
    vec![
        tag(CUSTOMER, name.as_str()),
        tag(NAME, &display),
        tag(MANAGED_BY, MANAGED_BY_VALUE),
        tag(COMPONENT, component),
    ]
}

/// A TagSpecification so the tags are created atomically with the resource.
pub fn spec(resource: ResourceType, tags: Vec<Tag>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags))
        .build()
}

/// EC2 filter `tag:<key> = value`.
pub fn filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// EC2 filter on a plain attribute, e.g. `instance-state-name`.
pub fn attr(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// The filters that select one customer's resources of one component.
pub fn customer_filters(name: &CustomerName, component: &str) -> Vec<Filter> {
    vec![
        filter(CUSTOMER, name.as_str()),
        filter(MANAGED_BY, MANAGED_BY_VALUE),
        filter(COMPONENT, component),
    ]
}

/// Looks a tag up in an SDK tag list.
pub fn get<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}
