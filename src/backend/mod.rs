//! `shadowplane backend`: the demo service behind the seeds' walkthroughs.
//!
//! A small HTTP server that factors numbers (the calc seed: v1, v2 and the "new algorithm" v3
//! that gets the mirrored traffic) and answers httpbin-style echo routes (the httpbin seed).
//! Every response names the instance in `x-backend-version`, and every request is logged, so
//! "which version served this, and which one only saw the mirror" is visible from both sides.
//!
//! * [`factor`]: the two factoring algorithms (same answers, very different cost).
//! * [`server`]: the hyper server and its routes.

pub mod factor;
pub mod server;

pub use server::{
    serve, serve_on, serve_on_observed, Algorithm, BackendConfig, BackendError, Observation,
    Observer, VERSION_HEADER,
};
