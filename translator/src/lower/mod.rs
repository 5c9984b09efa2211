//! Istio resources → [`ir::Model`]: every Istio semantic (names, defaults, precedence,
//! percentages, catch-all short-circuit) and every cross-resource check lives here.

use crate::diag::Diagnostic;
use crate::ir::Model;
use crate::source::Resource;
use crate::Options;

/// Lower all resources. Bad resources are reported and skipped; the rest still translates.
pub fn lower(_resources: &[Resource], _options: &Options, _diags: &mut Vec<Diagnostic>) -> Model {
    Model::default()
}
