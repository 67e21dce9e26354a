//! `cred-broker`: host-local per-tenant AWS credentials over the container-credentials
//! protocol. The library is what hostd embeds or calls (registry, tokens, token files, admin
//! client); the binary runs the listeners.

pub mod admin_client;
pub mod broker;
pub mod cache;
pub mod json_log;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod sts;
pub mod token;
pub mod token_file;

pub use admin_client::{AdminClient, AdminError};
pub use broker::Broker;
pub use cache::CachePolicy;
pub use registry::{Registry, TenantSpec};
pub use sts::{StsSettings, StsSource};
pub use token::Token;
pub use token_file::{write_token_file, FileOwner};
