//! shadowplane: library half of the binary crate (CLI, xDS server, config sources).

pub mod config_files;
pub mod xds;
