//! hostd library: the pieces of the host daemon, kept in a library so tests and the
//! `hostd ctl` CLI share them. Each module owns one responsibility.

pub mod action;
pub mod api;
pub mod cgroup;
pub mod check;
pub mod compose;
pub mod containers;
pub mod ctl;
pub mod engine;
pub mod error;
pub mod executor;
pub mod host;
pub mod idle;
pub mod ids;
pub mod interpolate;
pub mod locks;
pub mod metrics;
pub mod network;
pub mod policy;
pub mod portable;
pub mod power;
pub mod profiles;
pub mod proxy_routes;
pub mod record;
pub mod secrets;
pub mod shaping;
pub mod spec;
pub mod state;
pub mod steps;
pub mod tailscale;
pub mod volume;
