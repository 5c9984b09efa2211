//! Source documents: YAML text (already read by the caller) split into Istio resources, each
//! remembering where it came from so diagnostics can point at file:line:column of any field.
//!
//! Pure: the caller reads files; this module only parses strings.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Location, ResourceRef};
use crate::istio::{ObjectMeta, Spec};

/// One input file's text, as read by the caller.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it (printed in diagnostics).
    pub path: String,
    pub text: String,
}

/// Positions of every node of one YAML document, keyed by field path
/// (`spec.http[1].mirror.subset`; the document root is the empty path).
/// For a mapping key the position is the key's, so an unknown field points at its name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathIndex {
    pub positions: BTreeMap<String, (u32, u32)>,
}

impl PathIndex {
    /// The position of `path`, or of its nearest ancestor that has one
    /// (`spec.http[1].mirror.subset` → `spec.http[1].mirror` → ... → root).
    pub fn lookup(&self, path: &str) -> Option<(u32, u32)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            // Strip the last `.field` or `[i]` segment.
            let cut = p.rfind(['.', '[']).unwrap_or(0);
            p = &p[..cut];
        }
    }
}

/// Where a resource came from: file, document number and the position index of its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub file: Arc<str>,
    /// 0-based index of the document in the file.
    pub document: usize,
    pub index: Arc<PathIndex>,
}

impl Origin {
    /// The location of a field path inside this resource's document (nearest ancestor if the
    /// exact path has no node, e.g. a missing field).
    pub fn at(&self, path: &str) -> Option<Location> {
        let (line, column) = self.index.lookup(path).unwrap_or((1, 1));
        Some(Location {
            file: self.file.to_string(),
            line,
            column,
        })
    }
}

/// One Istio resource of a supported kind, parsed and schema-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `networking.istio.io/v1alpha3`, `.../v1beta1` or `.../v1`.
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    pub origin: Origin,
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind().to_string(),
            namespace: self.namespace().to_string(),
            name: self.metadata.name.clone(),
        }
    }

    /// A diagnostic builder pre-filled with this resource, the field path and its location.
    pub fn diag(&self, d: Diagnostic, field: &str) -> Diagnostic {
        d.resource(self.reference())
            .field(field)
            .at(self.origin.at(field))
    }
}

/// The result of parsing a set of files: resources in input order (files in the order given,
/// documents in file order) plus parse and schema diagnostics.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}
