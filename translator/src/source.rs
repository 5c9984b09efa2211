//! Source documents: YAML text (already read by the caller) split into Istio resources, each
//! remembering where it came from so diagnostics can point at file:line:column of any field.
//!
//! Pure: the caller reads files; this module only parses strings.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

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
    pub positions: Positions,
}

/// Field path → (line, column) of one document.
///
/// Positions are only read for diagnostics, yet indexing every node of every document was
/// most of the parse's time and memory. So a document that parsed without a problem gets a
/// deferred index: its file's text, indexed on the first lookup into any of its documents
/// (one more pass over the file, with the same parser and index builder, so the same
/// positions). Documents with a problem, and indexes built by hand, hold their map.
#[derive(Clone, Default)]
pub struct Positions(Repr);

#[derive(Clone)]
enum Repr {
    Built(BTreeMap<String, (u32, u32)>),
    Deferred {
        file: Arc<DeferredFile>,
        document: usize,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Built(BTreeMap::new())
    }
}

/// Field path → (line, column).
pub(crate) type PositionMap = BTreeMap<String, (u32, u32)>;

/// A file whose documents' position indexes are built on first use.
pub(crate) struct DeferredFile {
    text: Box<str>,
    /// Document number → its positions.
    indexes: OnceLock<BTreeMap<usize, PositionMap>>,
}

impl DeferredFile {
    pub(crate) fn new(text: &str) -> DeferredFile {
        DeferredFile {
            text: text.into(),
            indexes: OnceLock::new(),
        }
    }

    fn positions(&self, document: usize) -> &BTreeMap<String, (u32, u32)> {
        static NONE: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        let indexes = self
            .indexes
            .get_or_init(|| crate::parse::index_documents(&self.text));
        indexes.get(&document).unwrap_or(&NONE)
    }
}

impl Positions {
    /// A document of `file` whose index is built on first use.
    pub(crate) fn deferred(file: &Arc<DeferredFile>, document: usize) -> Positions {
        Positions(Repr::Deferred {
            file: file.clone(),
            document,
        })
    }

    /// The position recorded for exactly this path.
    pub fn get(&self, path: &str) -> Option<&(u32, u32)> {
        self.map().get(path)
    }

    /// The map itself (a copy for a deferred index).
    pub(crate) fn into_map(self) -> BTreeMap<String, (u32, u32)> {
        match self.0 {
            Repr::Built(map) => map,
            Repr::Deferred { .. } => self.map().clone(),
        }
    }

    /// Every path with its position.
    pub fn map(&self) -> &BTreeMap<String, (u32, u32)> {
        match &self.0 {
            Repr::Built(map) => map,
            Repr::Deferred { file, document } => file.positions(*document),
        }
    }
}

impl From<BTreeMap<String, (u32, u32)>> for Positions {
    fn from(map: BTreeMap<String, (u32, u32)>) -> Self {
        Positions(Repr::Built(map))
    }
}

impl PartialEq for Positions {
    fn eq(&self, other: &Self) -> bool {
        self.map() == other.map()
    }
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.map().fmt(f)
    }
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
