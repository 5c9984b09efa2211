//! `shadowplane forward`: a data plane that takes the same xDS resources Envoy gets from
//! `serve` and converts them once, at the edge, into its own [`table::Table`].
//!
//! * [`table`]: the compiled routing table (the data plane's only input).
//! * [`compile`]: Envoy protos → [`table::Table`], pure; NACKs fields it cannot honour.
//! * [`matcher`]: request → virtual host → route, Envoy's matching semantics, pure.
//! * [`xds_client`]: delta (or SotW) ADS client feeding [`compile`].
//! * [`local`]: `forward --config`: translate a watched folder in-process, same [`compile`].
//! * [`proxy`], [`mirror`], [`metrics`], [`admin`]: the data plane (hyper server and clients,
//!   mirroring, Envoy-style stats, admin endpoints).

pub mod admin;
pub mod compile;
pub mod local;
pub mod matcher;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod table;
pub mod xds_client;
