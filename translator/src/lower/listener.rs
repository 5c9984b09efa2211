//! Listeners and route configurations: one `<bind>_<port>` listener per HTTP service port with
//! RDS `"<port>"` (virtual hosts for every service on that port, with or without a
//! VirtualService), plus one listener per Gateway server with RDS `http.<port>`.

use crate::diag::Diagnostic;
use crate::ir::{Listener, RouteConfig};
use crate::lower::destination_rule::RuleIndex;
use crate::lower::registry::Registry;
use crate::source::Resource;
use crate::Options;

/// Build listeners and route configs (both sorted by name). TODO: implemented by the
/// VirtualService helper.
pub fn build(
    _resources: &[Resource],
    _registry: &Registry,
    _rules: &RuleIndex,
    _options: &Options,
    _diags: &mut Vec<Diagnostic>,
) -> (Vec<Listener>, Vec<RouteConfig>) {
    (Vec::new(), Vec::new())
}
