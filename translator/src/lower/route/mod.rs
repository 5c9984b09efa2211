//! The pieces of HTTP route translation: matches, actions (destinations, redirects, direct
//! responses, hash policies), retries, mirrors, fault injection, CORS and header operations.
//! Each module validates its part of an `HTTPRoute` and reports diagnostics through
//! [`util::Cx`]; [`crate::lower::virtual_service`] assembles the results.

pub(crate) mod action;
pub(crate) mod cors;
pub(crate) mod fault;
pub(crate) mod headers;
pub(crate) mod matcher;
pub(crate) mod mirror;
pub(crate) mod retry;
pub(crate) mod util;

#[cfg(test)]
mod tests;
