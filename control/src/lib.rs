//! control: the deploy API behind the dashboard's form. Places a customer on a shared host
//! (the opt-in) or on a dedicated hardened EC2 instance (opted out, or regulated), after
//! writing its six SSM parameters; deletes everything in reverse; resumes half-done runs.
//! The CLI (`control`) and the HTTP API (`control serve`) both call [`ops::Control`].

pub mod api;
pub mod auth;
pub mod config;
pub mod dedicated;
pub mod ec2;
pub mod error;
pub mod hostd;
pub mod identity;
pub mod inventory;
pub mod job_action;
pub mod jobs;
pub mod moves;
pub mod ops;
pub mod params;
pub mod progress;
pub mod request;
pub mod sealed;
pub mod shared;
pub mod store;
pub mod tags;
pub mod tenant_record;
pub mod tokens;
pub mod userdata;
pub mod zone_copy;

pub use config::{Clients, ControlConfig};
pub use error::ControlError;
pub use ops::Control;
pub use progress::Progress;
pub use request::{DeployRequest, DeploySpec, FieldError, Hosting, Secrets, Template};
