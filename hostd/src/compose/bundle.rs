//! The deploy bundle (compose file, env file, files) lives in the shared model crate, so
//! control forwards exactly what hostd takes; see [`m8trx_spec::bundle`].

pub use m8trx_spec::bundle::*;
