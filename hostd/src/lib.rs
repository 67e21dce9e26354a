//! hostd library: the pieces of the host daemon, kept in a library so tests and the
//! `hostd ctl` CLI share them. Each module owns one responsibility.

pub mod api;
pub mod cgroup;
pub mod compose;
pub mod ctl;
pub mod engine;
pub mod ids;
pub mod interpolate;
pub mod lifecycle;
pub mod network;
pub mod policy;
pub mod profiles;
pub mod proxy_routes;
pub mod secrets;
pub mod spec;
pub mod state;
pub mod tailscale;
pub mod volume;
