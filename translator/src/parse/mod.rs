//! YAML text → [`source::Resource`](crate::source::Resource)s, with positions for every field
//! path.
//!
//! - [`yaml`]: one pass over yaml-rust2's marked events gives each document's value and the
//!   position of every node (so numbering and positions always agree).
//! - [`schema`]: values → typed `istio::*` structs; serde errors become diagnostics with the
//!   field path, the bad value and a "did you mean" hint.
//! - this module: dispatch on `apiVersion`/`kind`, metadata checks and duplicates.

mod fast;
mod schema;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use crate::diag::{Code, Diagnostic, Location, ResourceRef};
use crate::istio::{ObjectMeta, Spec};
use crate::source::{
    DeferredFile, Origin, Parsed, PathIndex, PositionMap, Positions, Resource, SourceFile,
};

/// The `apiVersion`s accepted for the Istio kinds shadowplane translates.
pub const ACCEPTED_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Top-level fields of a Kubernetes object.
const OBJECT_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Parse every file (multi-document YAML) in order, then report resources defined twice
/// (same kind, namespace and name) across all of them: the first is kept.
/// Never panics; problems become diagnostics.
pub fn parse_files(files: &[SourceFile]) -> Parsed {
    let mut parsed = Parsed::default();
    for file in files {
        parse_into(&file.path, &file.text, &mut parsed);
    }
    drop_duplicates(&mut parsed);
    parsed
}

/// Parse one file on its own: the per-file part of [`parse_files`]. Duplicates are only
/// checked within this file; use [`parse_files`] to check across files.
pub fn parse_file(path: &str, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    parse_into(path, text, &mut parsed);
    drop_duplicates(&mut parsed);
    parsed
}

/// Parse one file without the duplicate check: the part of [`parse_files`] that depends on
/// this file alone, so a caller can keep it while the file's text does not change.
/// [`combine`] of the parts of every file, in order, is exactly [`parse_files`] of the files.
pub fn parse_file_unchecked(path: &str, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    parse_into(path, text, &mut parsed);
    parsed
}

/// The parse of a set of files from the parses of each ([`parse_file_unchecked`]), in file
/// order: their resources and diagnostics one after the other, then resources defined twice
/// (same kind, namespace and name) reported and dropped as [`parse_files`] does.
pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Parsed>) -> Parsed {
    let mut parsed = Parsed::default();
    for part in parts {
        parsed.resources.extend(part.resources.iter().cloned());
        parsed.diagnostics.extend(part.diagnostics.iter().cloned());
    }
    drop_duplicates(&mut parsed);
    parsed
}

/// Parse one file's documents into `out`, without the duplicate check.
///
/// Positions are only needed for diagnostics: the documents are loaded without them, and each
/// resource gets a deferred index of its document, built from the file's text on first use.
/// A document with a YAML problem (duplicate key, alias blow-up) needs them right away: then
/// the file is loaded with its positions.
fn parse_into(path: &str, text: &str, out: &mut Parsed) {
    let file: Arc<str> = Arc::from(path);
    let (resources_before, diagnostics_before) = (out.resources.len(), out.diagnostics.len());
    let mut deferred: Option<Arc<DeferredFile>> = None;
    let mut reread = Reread::new(text);
    let mut reader = Some(yaml::Reader::Fast);
    let error = loop {
        let Some(current) = reader else {
            let loaded = yaml::load(text);
            for doc in loaded.documents {
                parse_document(&file, doc, &mut reread, out);
            }
            break loaded.error;
        };
        let loaded = yaml::load_values(text, current, |doc| {
            let file_index = deferred.get_or_insert_with(|| Arc::new(DeferredFile::new(text)));
            let doc = yaml::Document {
                number: doc.number,
                value: doc.value,
                index: PathIndex {
                    positions: Positions::deferred(file_index, doc.number),
                },
                problems: Vec::new(),
            };
            parse_document(&file, doc, &mut reread, out);
        });
        match loaded {
            Ok(error) => break error,
            Err(redo) => {
                // Take back this file's documents and read it again.
                out.resources.truncate(resources_before);
                out.diagnostics.truncate(diagnostics_before);
                reader = match redo {
                    yaml::Redo::WithEvents => Some(yaml::Reader::Events),
                    yaml::Redo::WithPositions => None,
                };
            }
        }
    };
    if let Some(err) = error {
        out.diagnostics.push(syntax_diagnostic(path, text, &err));
    }
}

/// The position index of every document of `text` by document number, as [`parse_files`]
/// would have built them (for [`Positions`] built on first use).
pub(crate) fn index_documents(text: &str) -> BTreeMap<usize, PositionMap> {
    yaml::load(text)
        .documents
        .into_iter()
        .map(|doc| (doc.number, doc.index.positions.into_map()))
        .collect()
}

fn syntax_diagnostic(path: &str, text: &str, err: &yaml::SyntaxError) -> Diagnostic {
    Diagnostic::error(Code::YamlSyntax, format!("invalid YAML: {}", err.what))
        .at(Some(Location {
            file: path.to_string(),
            line: err.line,
            column: err.column,
        }))
        .hint(syntax_hint(text, err))
}

/// A hint for a syntax error: a tab in the indentation near the error is the usual culprit.
fn syntax_hint(text: &str, err: &yaml::SyntaxError) -> String {
    let line = err.line as usize;
    let lines: Vec<&str> = text.lines().collect();
    // The scanner often notices a problem one line late: look at the error line and the one
    // before it.
    let tab_line = [line, line.saturating_sub(1)]
        .into_iter()
        .filter(|n| *n >= 1)
        .find(|n| {
            lines.get(n - 1).is_some_and(|l| {
                l.chars()
                    .take_while(|c| c.is_whitespace())
                    .any(|c| c == '\t')
            })
        });
    if let Some(n) = tab_line {
        return format!("line {n} is indented with a tab; YAML needs spaces, not tabs");
    }
    let what = err.what.as_str();
    if what.contains("mapping values are not allowed") {
        format!(
            "check indentation near line {line}, and quote values that contain \": \" (key: \"a: b\")"
        )
    } else if what.contains("did not find expected key") || what.contains("expected '-' indicator")
    {
        format!(
            "check indentation near line {line}: the entries of one mapping or list must start in the same column"
        )
    } else if what.contains("flow") || what.contains("illegal placement of ':'") {
        format!("check for a [ or {{ before line {line} that is not closed")
    } else if what.contains("quoted scalar") {
        format!("check the quotes near line {line}: a quoted value must be closed on its own line")
    } else if what.contains("cannot start any token") || what.contains("unexpected character") {
        format!("check line {line}: quote values that start with @, ` or %")
    } else if what.contains("tab") {
        format!("line {line} uses a tab; YAML needs spaces, not tabs")
    } else {
        format!("check indentation near line {line}; YAML needs spaces, not tabs")
    }
}

/// The kinds shadowplane translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecKind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Gateway,
}

impl SpecKind {
    fn from_kind(kind: &str) -> Option<SpecKind> {
        Some(match kind {
            "VirtualService" => SpecKind::VirtualService,
            "DestinationRule" => SpecKind::DestinationRule,
            "ServiceEntry" => SpecKind::ServiceEntry,
            "WorkloadEntry" => SpecKind::WorkloadEntry,
            "Gateway" => SpecKind::Gateway,
            _ => return None,
        })
    }

    fn default_spec(self) -> Spec {
        match self {
            SpecKind::VirtualService => Spec::VirtualService(Default::default()),
            SpecKind::DestinationRule => Spec::DestinationRule(Default::default()),
            SpecKind::ServiceEntry => Spec::ServiceEntry(Default::default()),
            SpecKind::WorkloadEntry => Spec::WorkloadEntry(Default::default()),
            SpecKind::Gateway => Spec::Gateway(Default::default()),
        }
    }

    /// The typed spec (see [`schema::deserialize_or_reread`] for `reread`).
    fn typed_spec(
        self,
        value: Value,
        reread: impl FnOnce() -> Option<Value>,
    ) -> Result<Spec, schema::SchemaError> {
        use schema::deserialize_or_reread as typed;
        Ok(match self {
            SpecKind::VirtualService => Spec::VirtualService(typed(value, "spec", reread)?),
            SpecKind::DestinationRule => Spec::DestinationRule(typed(value, "spec", reread)?),
            SpecKind::ServiceEntry => Spec::ServiceEntry(typed(value, "spec", reread)?),
            SpecKind::WorkloadEntry => Spec::WorkloadEntry(typed(value, "spec", reread)?),
            SpecKind::Gateway => Spec::Gateway(typed(value, "spec", reread)?),
        })
    }
}

/// What to do with a document, from its `apiVersion` and `kind`.
enum Dispatch {
    Translate(SpecKind),
    /// Not for us: an info naming why.
    Skip(&'static str),
    /// One of our kinds under an apiVersion we do not accept.
    BadApiVersion,
}

fn dispatch(api_version: &str, kind: &str) -> Dispatch {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    if let Some(spec_kind) = SpecKind::from_kind(kind) {
        if ACCEPTED_API_VERSIONS.contains(&api_version) {
            return Dispatch::Translate(spec_kind);
        }
        if group == "gateway.networking.k8s.io" {
            return Dispatch::Skip(
                "Kubernetes Gateway API resources are not supported (use a networking.istio.io Gateway)",
            );
        }
        return Dispatch::BadApiVersion;
    }
    if group == "istio.io" || group.ends_with(".istio.io") {
        return Dispatch::Skip("this Istio kind is not supported by shadowplane");
    }
    Dispatch::Skip("not an Istio networking resource")
}

/// One document being turned into a resource: where it is and what it is, for diagnostics.
struct Ctx<'a> {
    origin: &'a Origin,
    reference: Option<ResourceRef>,
}

impl Ctx<'_> {
    fn diag(&self, d: Diagnostic, field: &str) -> Diagnostic {
        let d = match &self.reference {
            Some(r) => d.resource(r.clone()),
            None => d,
        };
        let d = d.at(self.origin.at(field));
        if field.is_empty() {
            d
        } else {
            d.field(field)
        }
    }

    fn schema(&self, err: schema::SchemaError) -> Diagnostic {
        let mut d = self.diag(Diagnostic::error(err.code, err.message), &err.path);
        if let Some(v) = err.value {
            d = d.value(v);
        }
        if let Some(h) = err.hint {
            d = d.hint(h);
        }
        d
    }
}

/// A short description of a value's shape.
fn shape(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty value",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A top-level string field: `Ok(None)` when absent, `Err` when not a string.
fn string_field<'v>(map: &'v Mapping, key: &str) -> Result<Option<&'v str>, &'v Value> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(other),
    }
}

/// The documents of a file read again, for the rare one whose schema check fails: the check
/// consumed its value (see [`schema::deserialize_or_reread`]). Read once per file, on first
/// use, with positions-grade [`yaml::load`] (which reads any file).
struct Reread<'t> {
    text: &'t str,
    values: Option<BTreeMap<usize, Value>>,
}

impl<'t> Reread<'t> {
    fn new(text: &'t str) -> Self {
        Reread { text, values: None }
    }

    /// A top-level field of document `number`, as [`parse_document`] got it.
    fn field(&mut self, number: usize, field: &str) -> Option<Value> {
        let text = self.text;
        let values = self.values.get_or_insert_with(|| {
            yaml::load(text)
                .documents
                .into_iter()
                .map(|d| (d.number, d.value))
                .collect()
        });
        let mut value = values.remove(&number)?;
        value.apply_merge().ok()?;
        match value {
            Value::Mapping(mut map) => map.remove(field),
            _ => None,
        }
    }
}

fn parse_document(file: &Arc<str>, doc: yaml::Document, reread: &mut Reread<'_>, out: &mut Parsed) {
    let doc_number = doc.number;
    let origin = Origin {
        file: file.clone(),
        document: doc.number,
        index: Arc::new(doc.index),
    };
    let mut value = doc.value;
    // `<<: *base` merge keys, as kubectl (go-yaml) applies them.
    if let Err(e) = value.apply_merge() {
        out.diagnostics.push(
            Ctx {
                origin: &origin,
                reference: None,
            }
            .diag(
                Diagnostic::error(Code::YamlSyntax, format!("invalid YAML: {e}")),
                "",
            )
            .hint("a merge key (<<) takes a mapping or a list of mappings, e.g. \"<<: *defaults\""),
        );
        return;
    }
    let mut map = match value {
        // An empty document (`---` with only comments): nothing to say.
        Value::Null if doc.problems.is_empty() => return,
        Value::Mapping(map) => map,
        other => {
            let ctx = Ctx {
                origin: &origin,
                reference: None,
            };
            out.diagnostics.push(
                ctx.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!(
                            "document {} is {}, not a Kubernetes object",
                            doc.number + 1,
                            shape(&other)
                        ),
                    ),
                    "",
                )
                .hint("each document (separated by ---) must be a mapping with apiVersion, kind, metadata and spec"),
            );
            return;
        }
    };

    // Best-effort identity for diagnostics, before anything is checked.
    let kind = string_field(&map, "kind").ok().flatten();
    let raw_meta = map.get("metadata");
    let raw_name = raw_meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let raw_namespace = raw_meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let reference = match (kind, raw_name) {
        (Some(kind), Some(name)) => Some(ResourceRef {
            kind: kind.to_string(),
            namespace: raw_namespace.to_string(),
            name: name.to_string(),
        }),
        _ => None,
    };
    let ctx = Ctx {
        origin: &origin,
        reference,
    };

    if !doc.problems.is_empty() {
        for p in doc.problems {
            let mut d = Diagnostic::error(Code::YamlSyntax, format!("invalid YAML: {}", p.message))
                .at(Some(Location {
                    file: file.to_string(),
                    line: p.position.0,
                    column: p.position.1,
                }));
            if let Some(r) = &ctx.reference {
                d = d.resource(r.clone());
            }
            if !p.path.is_empty() {
                d = d.field(p.path);
            }
            if let Some(h) = p.hint {
                d = d.hint(h);
            }
            out.diagnostics.push(d);
        }
        return;
    }

    // apiVersion and kind.
    let mut missing = false;
    let mut api_version = None;
    let mut kind = None;
    for (field, slot) in [("apiVersion", &mut api_version), ("kind", &mut kind)] {
        match string_field(&map, field) {
            Ok(Some(v)) if !v.trim().is_empty() => *slot = Some(v),
            Ok(_) => {
                missing = true;
                out.diagnostics.push(
                    ctx.diag(
                        Diagnostic::error(
                            Code::MissingField,
                            format!("missing required field \"{field}\""),
                        ),
                        field,
                    )
                    .hint(
                        "every document needs apiVersion and kind, e.g. \"apiVersion: networking.istio.io/v1\" and \"kind: VirtualService\"",
                    ),
                );
            }
            Err(other) => {
                missing = true;
                out.diagnostics.push(
                    ctx.diag(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!(
                                "invalid value for \"{field}\": expected a string, found {}",
                                shape(other)
                            ),
                        ),
                        field,
                    )
                    .hint(format!("write {field} as a plain string")),
                );
            }
        }
    }
    let (Some(api_version), Some(kind), false) = (api_version, kind, missing) else {
        return;
    };
    let (api_version, kind) = (api_version.to_string(), kind.to_string());
    let (api_version, kind) = (api_version.as_str(), kind.as_str());

    let spec_kind = match dispatch(api_version, kind) {
        Dispatch::Translate(k) => k,
        Dispatch::Skip(why) => {
            // A named resource is already in the diagnostic's resource part; say it once.
            let message = match raw_name {
                Some(_) => format!("skipped: {why}"),
                None => format!("skipped {kind} (unnamed): {why}"),
            };
            out.diagnostics
                .push(ctx.diag(Diagnostic::info(Code::SkippedKind, message), "kind"));
            return;
        }
        Dispatch::BadApiVersion => {
            out.diagnostics.push(
                ctx.diag(
                    Diagnostic::error(
                        Code::UnsupportedApiVersion,
                        format!("unsupported apiVersion \"{api_version}\" for {kind}"),
                    ),
                    "apiVersion",
                )
                .value(api_version)
                .hint(format!("use one of {}", ACCEPTED_API_VERSIONS.join(", "))),
            );
            return;
        }
    };

    // Top-level fields: a typo such as `sepc` would otherwise silently give an empty spec.
    let valid: Vec<String> = OBJECT_FIELDS.iter().map(|s| s.to_string()).collect();
    let mut bad_top = false;
    for key in map.keys() {
        match key.as_str() {
            Some(k) if OBJECT_FIELDS.contains(&k) => {}
            Some(k) => {
                bad_top = true;
                out.diagnostics.push(
                    ctx.diag(
                        Diagnostic::error(Code::UnknownField, format!("unknown field \"{k}\"")),
                        k,
                    )
                    .hint(schema::unknown_field_hint(k, &valid)),
                );
            }
            None => {
                bad_top = true;
                out.diagnostics.push(
                    ctx.diag(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!(
                                "invalid top-level key: expected a field name, found {}",
                                shape(key)
                            ),
                        ),
                        "",
                    )
                    .hint(format!("valid fields here: {}", OBJECT_FIELDS.join(", "))),
                );
            }
        }
    }
    if bad_top {
        return;
    }

    // metadata: a name is required.
    let metadata: ObjectMeta = match map.remove("metadata") {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(v) => match schema::deserialize_or_reread(v, "metadata", || {
            reread.field(doc_number, "metadata")
        }) {
            Ok(m) => m,
            Err(e) => {
                out.diagnostics.push(ctx.schema(e));
                return;
            }
        },
    };
    if metadata.name.trim().is_empty() {
        out.diagnostics.push(
            ctx.diag(
                Diagnostic::error(
                    Code::MissingField,
                    format!("missing required field \"metadata.name\" on this {kind}"),
                ),
                "metadata.name",
            )
            .hint(format!(
                "give the {kind} a name: \"metadata: {{name: my-{}}}\"",
                kind.to_lowercase()
            )),
        );
        return;
    }

    let spec = match map.remove("spec") {
        None | Some(Value::Null) => spec_kind.default_spec(),
        Some(v) => match spec_kind.typed_spec(v, || reread.field(doc_number, "spec")) {
            Ok(spec) => spec,
            Err(e) => {
                out.diagnostics.push(ctx.schema(e));
                return;
            }
        },
    };

    out.resources.push(Resource {
        api_version: api_version.to_string(),
        metadata,
        spec,
        origin: origin.clone(),
    });
}

/// Report and drop every resource whose kind/namespace/name was already seen (in input order):
/// the first definition is kept.
fn drop_duplicates(parsed: &mut Parsed) {
    let mut resources = std::mem::take(&mut parsed.resources);
    // (kind, namespace, name) → index of its first definition, borrowed from the resources
    // (ordered like ResourceRef, without copying three strings per resource).
    let mut first: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    let mut duplicate = vec![false; resources.len()];
    for (i, resource) in resources.iter().enumerate() {
        let key = (resource.kind(), resource.namespace(), resource.name());
        let f = match first.entry(key) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(i);
                continue;
            }
            std::collections::btree_map::Entry::Occupied(slot) => *slot.get(),
        };
        duplicate[i] = true;
        // Looked up only now: a position may cost an index of the file.
        let prev = &resources[f];
        let prev = prev.origin.at("metadata.name").unwrap_or_else(|| Location {
            file: prev.origin.file.to_string(),
            line: 1,
            column: 1,
        });
        let d = Diagnostic::error(
            Code::DuplicateResource,
            format!(
                "duplicate {}: already defined at {}:{}",
                resource.reference(),
                prev.file,
                prev.line
            ),
        )
        .hint("rename one of them or delete the duplicate");
        parsed.diagnostics.push(resource.diag(d, "metadata.name"));
    }
    drop(first);
    // In place: without duplicates nothing moves.
    let mut duplicate = duplicate.into_iter();
    resources.retain(|_| !duplicate.next().unwrap_or(false));
    parsed.resources = resources;
}
