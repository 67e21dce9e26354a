//! The tenant spec hostd is created from: the shared model crate's type and validation
//! (`m8trx_spec::tenant`), which control builds and hostd parses.

pub use m8trx_spec::tenant::*;
