//! YAML text → documents, in ONE pass over yaml-rust2's marked events: every document's value
//! (as a `serde_yaml::Value`, resolved the way serde_yaml resolves plain scalars) and the
//! position of every node by field path come from the same events, so document numbering and
//! positions can never disagree.
//!
//! Positions are 1-based (line, column). For a mapping entry the position recorded under the
//! entry's path is the KEY's, so an unknown field points at its name.

use std::collections::BTreeMap;

use serde_yaml::value::{Tag as YamlTag, TaggedValue};
use serde_yaml::{Mapping, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::source::PathIndex;

/// How many nodes a document may hold once aliases are expanded ("billion laughs" guard).
const NODE_LIMIT: usize = 1_000_000;

/// The standard YAML tag prefix (`!!str` is `tag:yaml.org,2002:str`).
const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// A problem inside one document that does not break the YAML stream (duplicate key, alias
/// blow-up): the document is reported and dropped, the following documents still load.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DocProblem {
    pub path: String,
    pub position: (u32, u32),
    pub message: String,
    pub hint: Option<String>,
}

/// One YAML document of a stream.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// 0-based number of the document in its file (empty documents count too).
    pub number: usize,
    pub value: Value,
    /// Positions by field path; the root `""` is always present.
    pub index: PathIndex,
    pub problems: Vec<DocProblem>,
}

/// The stream is not valid YAML from this point on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: u32,
    pub column: u32,
    /// The parser's description, e.g. `mapping values are not allowed in this context`.
    pub what: String,
}

/// Every complete document before the first syntax error, and that error if any.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub documents: Vec<Document>,
    pub error: Option<SyntaxError>,
}

fn position(mark: &Marker) -> (u32, u32) {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
    (clamp(mark.line()), clamp(mark.col() + 1))
}

/// Load every document of `text`. Never panics; a syntax error ends the stream.
pub(crate) fn load(text: &str) -> Loaded {
    // A byte order mark (files saved by some Windows editors) is not part of the content;
    // editors do not count it as a column either.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut current: Option<DocBuilder> = None;
    let mut count = 0usize;
    let error = loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let (line, column) = position(e.marker());
                break Some(SyntaxError {
                    line,
                    column,
                    what: e.info().to_string(),
                });
            }
        };
        match event {
            Event::Nothing | Event::StreamStart => {}
            Event::StreamEnd => break None,
            Event::DocumentStart => {
                current = Some(DocBuilder::new(count, position(&mark)));
                count += 1;
            }
            Event::DocumentEnd => {
                if let Some(doc) = current.take() {
                    documents.push(doc.finish());
                }
            }
            other => {
                if let Some(doc) = current.as_mut() {
                    doc.event(other, position(&mark));
                }
            }
        }
    };
    Loaded { documents, error }
}

/// A map key waiting for its value.
struct PendingKey {
    key: Value,
    /// Path of the entry (`spec.host`); `None` inside a complex key.
    path: Option<String>,
    position: (u32, u32),
}

enum Collection {
    Seq(Vec<Value>),
    Map {
        map: Mapping,
        key: Option<PendingKey>,
    },
}

struct Frame {
    collection: Collection,
    /// Path of this collection node; `None` inside a complex (non-scalar) key.
    path: Option<String>,
    /// The path whose position is still to be recorded: at the first child's start.
    unrecorded: Option<String>,
    position: (u32, u32),
    anchor: usize,
    tag: Option<Tag>,
    /// Node count when the collection opened (for alias expansion accounting).
    nodes_at_start: usize,
}

struct DocBuilder {
    number: usize,
    start: (u32, u32),
    stack: Vec<Frame>,
    root: Option<Value>,
    positions: BTreeMap<String, (u32, u32)>,
    /// Anchored values and their node counts.
    anchors: BTreeMap<usize, (Value, usize)>,
    nodes: usize,
    problems: Vec<DocProblem>,
    too_big: bool,
}

/// Where the next node goes: its path, whether it is a mapping key, and whether its own
/// position is to be recorded under its path (root and list items; a mapping entry records
/// its key's position instead).
struct Slot {
    path: Option<String>,
    is_key: bool,
    record: bool,
}

impl DocBuilder {
    fn new(number: usize, start: (u32, u32)) -> Self {
        DocBuilder {
            number,
            start,
            stack: Vec::new(),
            root: None,
            positions: BTreeMap::new(),
            anchors: BTreeMap::new(),
            nodes: 0,
            problems: Vec::new(),
            too_big: false,
        }
    }

    fn finish(self) -> Document {
        let mut positions = self.positions;
        positions.entry(String::new()).or_insert(self.start);
        Document {
            number: self.number,
            value: self.root.unwrap_or(Value::Null),
            index: PathIndex { positions },
            problems: self.problems,
        }
    }

    /// Decide the path of a node starting at `pos`. A scalar's position is recorded here; a
    /// collection's when its first child starts (see [`Frame::unrecorded`]): yaml-rust2 marks
    /// a block mapping's start at its first `:`, not at its first key.
    fn slot(&mut self, pos: (u32, u32)) -> Slot {
        let Some(top) = self.stack.last_mut() else {
            return Slot {
                path: Some(String::new()),
                is_key: false,
                record: true,
            };
        };
        if let Some(path) = top.unrecorded.take() {
            self.positions.entry(path).or_insert(pos);
        }
        match &top.collection {
            Collection::Seq(items) => Slot {
                path: top.path.as_ref().map(|p| format!("{p}[{}]", items.len())),
                is_key: false,
                record: true,
            },
            Collection::Map { key: None, .. } => Slot {
                path: None,
                is_key: true,
                record: false,
            },
            // A mapping value: its entry's position (the key's) is already recorded.
            Collection::Map { key: Some(k), .. } => Slot {
                path: k.path.clone(),
                is_key: false,
                record: false,
            },
        }
    }

    fn record(&mut self, slot: &Slot, pos: (u32, u32)) {
        if let (true, Some(path)) = (slot.record, &slot.path) {
            self.positions.entry(path.clone()).or_insert(pos);
        }
    }

    fn event(&mut self, event: Event, pos: (u32, u32)) {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let slot = self.slot(pos);
                self.record(&slot, pos);
                let value = scalar_value(text, style, tag.as_ref());
                self.nodes += 1;
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.complete(value, pos);
            }
            Event::Alias(id) => {
                let slot = self.slot(pos);
                self.record(&slot, pos);
                let value = match self.anchors.get(&id) {
                    Some((value, count)) if self.nodes.saturating_add(*count) <= NODE_LIMIT => {
                        self.nodes += count;
                        value.clone()
                    }
                    Some(_) => {
                        self.too_big(slot.path.as_deref().unwrap_or(""), pos);
                        Value::Null
                    }
                    None => Value::Null,
                };
                self.complete(value, pos);
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(Collection::Seq(Vec::new()), anchor, tag, pos);
            }
            Event::MappingStart(anchor, tag) => {
                let map = Collection::Map {
                    map: Mapping::new(),
                    key: None,
                };
                self.open(map, anchor, tag, pos);
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }

    fn open(&mut self, collection: Collection, anchor: usize, tag: Option<Tag>, pos: (u32, u32)) {
        let slot = self.slot(pos);
        self.nodes += 1;
        // Nodes inside a complex key get no path.
        let path = if slot.is_key { None } else { slot.path };
        self.stack.push(Frame {
            collection,
            unrecorded: if slot.record { path.clone() } else { None },
            path,
            position: pos,
            anchor,
            tag,
            nodes_at_start: self.nodes,
        });
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        if let Some(path) = frame.unrecorded {
            // An empty collection: its own start marker is all there is.
            self.positions.entry(path).or_insert(frame.position);
        }
        let mut value = match frame.collection {
            Collection::Seq(items) => Value::Sequence(items),
            Collection::Map { map, .. } => Value::Mapping(map),
        };
        if let Some(tag) = frame.tag.as_ref().and_then(custom_tag) {
            value = Value::Tagged(Box::new(TaggedValue { tag, value }));
        }
        if frame.anchor > 0 {
            let count = self.nodes - frame.nodes_at_start + 1;
            self.anchors.insert(frame.anchor, (value.clone(), count));
        }
        self.complete(value, frame.position);
    }

    fn too_big(&mut self, path: &str, pos: (u32, u32)) {
        if !self.too_big {
            self.too_big = true;
            self.problems.push(DocProblem {
                path: path.to_string(),
                position: pos,
                message: format!(
                    "document expands to more than {NODE_LIMIT} nodes through aliases"
                ),
                hint: Some("write the repeated parts out instead of nesting aliases".to_string()),
            });
        }
    }

    /// A node starting at `pos` is complete: attach it to its parent (as a key when the parent
    /// mapping has no pending key).
    fn complete(&mut self, value: Value, pos: (u32, u32)) {
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(value);
            return;
        };
        let parent_path = top.path.clone();
        match &mut top.collection {
            Collection::Seq(items) => items.push(value),
            Collection::Map { map, key } => {
                if key.is_none() {
                    let path = match (&parent_path, key_text(&value)) {
                        (Some(parent), Some(name)) if parent.is_empty() => Some(name),
                        (Some(parent), Some(name)) => Some(format!("{parent}.{name}")),
                        _ => None,
                    };
                    *key = Some(PendingKey {
                        key: value,
                        path,
                        position: pos,
                    });
                    let recorded = key
                        .as_ref()
                        .and_then(|k| k.path.clone().map(|p| (p, k.position)));
                    if let Some((p, kpos)) = recorded {
                        // First occurrence wins: a duplicate key is reported, not indexed.
                        self.positions.entry(p).or_insert(kpos);
                    }
                } else if let Some(k) = key.take() {
                    if map.contains_key(&k.key) {
                        let name = key_text(&k.key).unwrap_or_else(|| "<complex key>".to_string());
                        let first = k
                            .path
                            .as_ref()
                            .and_then(|p| self.positions.get(p))
                            .map(|(line, _)| format!(" (first at line {line})"))
                            .unwrap_or_default();
                        self.problems.push(DocProblem {
                            path: k.path.clone().unwrap_or_default(),
                            position: k.position,
                            message: format!("duplicate key \"{name}\"{first}"),
                            hint: Some(format!(
                                "a mapping may hold \"{name}\" only once: merge the two entries or delete one"
                            )),
                        });
                    } else {
                        map.insert(k.key, value);
                    }
                }
            }
        }
    }
}

/// The text of a key as it appears in field paths: the key verbatim for scalars.
fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".to_string()),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// A tag that is not a YAML core tag nor the non-specific `!`: kept as a `Value::Tagged`.
fn custom_tag(tag: &Tag) -> Option<YamlTag> {
    if tag.handle == CORE_TAG_PREFIX || (tag.handle == "!" && tag.suffix.is_empty()) {
        return None;
    }
    let text = if tag.handle == "!" {
        format!("!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    };
    Some(YamlTag::new(text))
}

fn scalar_value(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    let plain = matches!(style, TScalarStyle::Plain);
    let value = match tag {
        None if plain => resolve_plain(text),
        None => Value::String(text),
        Some(t) if t.handle == CORE_TAG_PREFIX => match t.suffix.as_str() {
            "str" => Value::String(text),
            // `!!int "8"` and friends: resolve the text whatever its quoting.
            "null" | "bool" | "int" | "float" => resolve_plain(text),
            _ => Value::String(text),
        },
        // The non-specific tag `!` forces a string.
        Some(t) if t.handle == "!" && t.suffix.is_empty() => Value::String(text),
        Some(_) if plain => resolve_plain(text),
        Some(_) => Value::String(text),
    };
    match tag.and_then(custom_tag) {
        Some(tag) => Value::Tagged(Box::new(TaggedValue { tag, value })),
        None => value,
    }
}

/// Resolve a plain scalar like serde_yaml 0.9 (YAML 1.2 core schema): null, bool, integer
/// (decimal, `0x`, `0o`, `0b`; leading zeros stay strings), float, else string.
fn resolve_plain(text: String) -> Value {
    if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    match text.as_str() {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(&text) {
        return Value::Number(n);
    }
    if !leading_zero_digits(&text) {
        if let Some(f) = parse_float(&text) {
            return Value::Number(Number::from(f));
        }
    }
    Value::String(text)
}

/// `0123`, `-007`: digits with a leading zero are strings in YAML 1.2.
fn leading_zero_digits(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

fn parse_int(s: &str) -> Option<Number> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if unsigned.starts_with(['+', '-']) || unsigned.is_empty() {
        return None;
    }
    let (radix, digits) = if let Some(d) = unsigned.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = unsigned.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = unsigned.strip_prefix("0b") {
        (2, d)
    } else {
        if leading_zero_digits(unsigned) {
            return None;
        }
        (10, unsigned)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(Number::from(magnitude));
    }
    if magnitude == 0 {
        return Some(Number::from(0u64));
    }
    // -(2^63) is the smallest i64.
    let value = 0i64.checked_sub_unsigned(magnitude)?;
    Some(Number::from(value))
}

fn parse_float(s: &str) -> Option<f64> {
    let unsigned = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => s,
    };
    match unsigned {
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    // Rust also accepts `inf`, `infinity` and `nan`: not YAML numbers.
    let f: f64 = unsigned.parse().ok()?;
    f.is_finite().then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_like_serde_yaml() {
        for text in [
            "",
            "~",
            "null",
            "true",
            "False",
            "80",
            "-3",
            "+4",
            "0x1F",
            "0o17",
            "0b101",
            "010",
            "1.5",
            "-.inf",
            "1e3",
            "v1",
            "inf",
            "nan",
            ".*Mobile.*",
            "1_000",
            "0x",
            "-0",
        ] {
            let ours = resolve_plain(text.to_string());
            let theirs: Value = serde_yaml::from_str(&format!("k: {text}\n"))
                .map(|v: Value| v["k"].clone())
                .expect("a plain scalar on its own is valid YAML");
            assert_eq!(ours, theirs, "plain scalar {text:?}");
        }
        assert!(
            matches!(resolve_plain(".nan".into()), Value::Number(n) if n.as_f64().is_some_and(f64::is_nan))
        );
    }

    #[test]
    fn quoted_and_tagged_scalars() {
        let loaded = load("a: \"80\"\nb: '1.5'\nc: !!str 80\nd: !!int \"7\"\ne: |\n  text\n");
        assert!(loaded.error.is_none());
        let v = &loaded.documents[0].value;
        assert_eq!(v["a"], Value::String("80".into()));
        assert_eq!(v["b"], Value::String("1.5".into()));
        assert_eq!(v["c"], Value::String("80".into()));
        assert_eq!(v["d"], Value::Number(7u64.into()));
        assert_eq!(v["e"], Value::String("text\n".into()));
    }

    #[test]
    fn anchors_and_aliases_expand() {
        let loaded = load("base: &b\n  x: 1\ncopy: *b\n");
        let v = &loaded.documents[0].value;
        assert_eq!(v["copy"]["x"], Value::Number(1u64.into()));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        let loaded = load(&text);
        assert!(loaded.error.is_none());
        let doc = &loaded.documents[0];
        assert_eq!(doc.problems.len(), 1, "{:?}", doc.problems);
        assert!(doc.problems[0].message.contains("more than 1000000 nodes"));
    }

    #[test]
    fn duplicate_keys_are_problems_and_first_wins() {
        let loaded = load("spec:\n  host: a\n  host: b\n");
        let doc = &loaded.documents[0];
        assert_eq!(doc.value["spec"]["host"], Value::String("a".into()));
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].path, "spec.host");
        assert_eq!(doc.problems[0].position, (3, 3));
        assert_eq!(
            doc.problems[0].message,
            "duplicate key \"host\" (first at line 2)"
        );
        assert_eq!(doc.index.positions.get("spec.host"), Some(&(2, 3)));
    }

    #[test]
    fn complex_keys_do_not_break_paths() {
        let loaded = load("? [a, b]\n: 1\nc:\n  d: 2\n");
        assert!(loaded.error.is_none(), "{:?}", loaded.error);
        let doc = &loaded.documents[0];
        assert_eq!(doc.index.positions.get("c.d"), Some(&(4, 3)));
        assert!(doc.problems.is_empty());
    }

    #[test]
    fn documents_count_empty_ones() {
        let loaded = load("# only a comment\n---\n---\na: 1\n---\n# nothing\n");
        let numbers: Vec<usize> = loaded.documents.iter().map(|d| d.number).collect();
        assert_eq!(numbers, vec![0, 1, 2]);
        assert_eq!(loaded.documents[0].value, Value::Null);
        assert_eq!(loaded.documents[1].index.positions.get("a"), Some(&(4, 1)));
        assert_eq!(loaded.documents[2].value, Value::Null);
        assert!(load("").documents.is_empty());
        assert!(load("# just comments\n\n").documents.is_empty());
    }
}
