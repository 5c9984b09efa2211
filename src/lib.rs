//! shadowplane: library half of the binary crate (CLI, xDS server, config sources).

pub mod admin;
pub mod app;
pub mod backend;
pub mod config_files;
pub mod config_source;
pub mod demo;
pub mod forwarder;
pub mod metrics;
pub mod xds;
