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
    let mut documents = Vec::new();
    let error = stream::<DocBuilder>(text, |doc| {
        documents.push(doc);
        true
    });
    Loaded { documents, error }
}

/// One document of a stream loaded without positions.
#[derive(Debug, Clone)]
pub(crate) struct ValueDocument {
    /// 0-based number of the document in its file (empty documents count too).
    pub number: usize,
    pub value: Value,
}

/// What reads the text for [`load_values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// [`super::fast`]: the plain block shape of most files, in a third of the instructions;
    /// gives up on anything else.
    Fast,
    /// yaml-rust2's events, as [`load`] reads them.
    Events,
}

/// Why [`load_values`] stopped before the end: the documents it handed over are to be taken
/// back and the file read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redo {
    /// The fast reader gave up: read it with [`Reader::Events`].
    WithEvents,
    /// A document has a problem (duplicate key, alias blow-up) that only [`load`] can report.
    WithPositions,
}

/// [`load`] without the position index: the same documents and values, each handed to
/// `each` as soon as it is complete (so a large file never has all its value trees at once),
/// then the syntax error that ended the stream, if any. At a fraction of the cost: no paths,
/// no positions. Stops at the first document with a problem, or where the fast reader gives
/// up (see [`Redo`]).
pub(crate) fn load_values(
    text: &str,
    reader: Reader,
    mut each: impl FnMut(ValueDocument),
) -> Result<Option<SyntaxError>, Redo> {
    let mut problem = false;
    let hand_over = |doc: Option<ValueDocument>| match doc {
        Some(doc) => {
            each(doc);
            true
        }
        None => {
            problem = true;
            false
        }
    };
    let error = match reader {
        Reader::Fast => match super::fast::stream::<ValueBuilder>(text, hand_over) {
            Ok(()) => None,
            Err(super::fast::GaveUp) => return Err(Redo::WithEvents),
        },
        Reader::Events => stream::<ValueBuilder>(text, hand_over),
    };
    if problem {
        Err(Redo::WithPositions)
    } else {
        Ok(error)
    }
}

/// What turns one document's events into a result.
pub(super) trait Builder {
    type Output;
    fn start(number: usize, start: (u32, u32)) -> Self;
    fn event(&mut self, event: Event, pos: (u32, u32));
    fn finish(self) -> Self::Output;
}

/// Run `B` over every document of `text`, handing each result to `each`, until the end, the
/// first syntax error (returned) or `each` returning `false`.
fn stream<B: Builder>(text: &str, mut each: impl FnMut(B::Output) -> bool) -> Option<SyntaxError> {
    // A byte order mark (files saved by some Windows editors) is not part of the content;
    // editors do not count it as a column either.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    let mut current: Option<B> = None;
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
                current = Some(B::start(count, position(&mark)));
                count += 1;
            }
            Event::DocumentEnd => {
                if let Some(doc) = current.take() {
                    if !each(doc.finish()) {
                        break None;
                    }
                }
            }
            other => {
                if let Some(doc) = current.as_mut() {
                    doc.event(other, position(&mark));
                }
            }
        }
    };
    error
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

impl Builder for DocBuilder {
    type Output = Document;

    fn start(number: usize, start: (u32, u32)) -> Self {
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

    fn event(&mut self, event: Event, pos: (u32, u32)) {
        self.on_event(event, pos);
    }

    fn finish(self) -> Document {
        let mut positions = self.positions;
        positions.entry(String::new()).or_insert(self.start);
        Document {
            number: self.number,
            value: self.root.unwrap_or(Value::Null),
            index: PathIndex {
                positions: positions.into(),
            },
            problems: self.problems,
        }
    }
}

impl DocBuilder {
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

    fn on_event(&mut self, event: Event, pos: (u32, u32)) {
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

/// [`DocBuilder`] without paths and positions: the same value from the same events (anchors,
/// aliases and their node budget, tags, first-wins duplicate keys), and `None` as soon as
/// the document has a problem, which only [`DocBuilder`] can report.
struct ValueBuilder {
    number: usize,
    stack: Vec<ValueFrame>,
    root: Option<Value>,
    /// Anchored values and their node counts.
    anchors: BTreeMap<usize, (Value, usize)>,
    nodes: usize,
    problem: bool,
}

struct ValueFrame {
    collection: ValueCollection,
    anchor: usize,
    tag: Option<Tag>,
    /// Node count when the collection opened (for alias expansion accounting).
    nodes_at_start: usize,
}

enum ValueCollection {
    Seq(Vec<Value>),
    /// A mapping and the key waiting for its value.
    Map(Mapping, Option<Value>),
}

impl Builder for ValueBuilder {
    type Output = Option<ValueDocument>;

    fn start(number: usize, _start: (u32, u32)) -> Self {
        ValueBuilder {
            number,
            // Deep enough for Istio resources without growing.
            stack: Vec::with_capacity(16),
            root: None,
            anchors: BTreeMap::new(),
            nodes: 0,
            problem: false,
        }
    }

    fn event(&mut self, event: Event, _pos: (u32, u32)) {
        if self.problem {
            return;
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar_value(text, style, tag.as_ref());
                self.nodes += 1;
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.complete(value);
            }
            Event::Alias(id) => {
                let value = match self.anchors.get(&id) {
                    Some((value, count)) if self.nodes.saturating_add(*count) <= NODE_LIMIT => {
                        self.nodes += count;
                        value.clone()
                    }
                    Some(_) => {
                        self.problem = true;
                        return;
                    }
                    None => Value::Null,
                };
                self.complete(value);
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(ValueCollection::Seq(Vec::new()), anchor, tag)
            }
            Event::MappingStart(anchor, tag) => {
                self.open(ValueCollection::Map(Mapping::new(), None), anchor, tag);
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }

    fn finish(self) -> Option<ValueDocument> {
        (!self.problem).then(|| ValueDocument {
            number: self.number,
            value: self.root.unwrap_or(Value::Null),
        })
    }
}

impl ValueBuilder {
    fn open(&mut self, collection: ValueCollection, anchor: usize, tag: Option<Tag>) {
        self.nodes += 1;
        self.stack.push(ValueFrame {
            collection,
            anchor,
            tag,
            nodes_at_start: self.nodes,
        });
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let mut value = match frame.collection {
            ValueCollection::Seq(items) => Value::Sequence(items),
            ValueCollection::Map(map, _) => Value::Mapping(map),
        };
        if let Some(tag) = frame.tag.as_ref().and_then(custom_tag) {
            value = Value::Tagged(Box::new(TaggedValue { tag, value }));
        }
        if frame.anchor > 0 {
            let count = self.nodes - frame.nodes_at_start + 1;
            self.anchors.insert(frame.anchor, (value.clone(), count));
        }
        self.complete(value);
    }

    fn complete(&mut self, value: Value) {
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(value);
            return;
        };
        match &mut top.collection {
            ValueCollection::Seq(items) => items.push(value),
            ValueCollection::Map(_, key @ None) => *key = Some(value),
            ValueCollection::Map(map, key) => {
                let Some(key) = key.take() else {
                    return;
                };
                match map.entry(key) {
                    serde_yaml::mapping::Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                    // A duplicate key: DocBuilder reports it.
                    serde_yaml::mapping::Entry::Occupied(_) => self.problem = true,
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
pub(crate) mod tests {
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

    /// YAML texts for the differential tests: every YAML file of the repository's test data,
    /// examples and deployment configs, and hand-written corner cases.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn corpus() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut paths = Vec::new();
        for dir in ["testdata", "examples", "envoy-configs", "deploy"] {
            walk(&root.join(dir), &mut paths);
        }
        paths.sort();
        let mut out: Vec<(String, String)> = paths
            .into_iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(&p).ok()?;
                Some((p.display().to_string(), text))
            })
            .collect();
        assert!(out.len() > 100, "expected the repository's YAML files");
        let cases = [
            "",
            "# only a comment\n",
            "---\n---\na: 1\n...\n---\n",
            "\u{feff}a: 1\n",
            "a: &x {b: 1, c: [1, 2]}\nd: *x\ne: *x\n",
            "base: &b\n  x: 1\n  y: 2\nmerged:\n  <<: *b\n  y: 3\n",
            "a: !!str 1\nb: !custom {x: 1}\nc: !!int \"7\"\nd: ! 5\n",
            "? [a, b]\n: 1\n? {c: d}\n: 2\n",
            "spec:\n  host: a\n  host: b\n",
            "a: 1\n---\nb: 1\nb: 2\n---\nc: 3\n",
            "a: [1, 2\n",
            "a: 1\n---\nb: {\n",
            "a:\n\t- b\n",
            "k: 'single ''quoted'''\nl: \"double \\\"esc\\\" \\u00e9\\n\"\nm: |\n  lit\n   more\nn: >-\n  folded\n  text\n",
            "- a\n- b: c\n  d: e\n- - x\n  - y\n",
            "1: one\ntrue: yes\nnull: nothing\n~: tilde\n0x10: hex\n",
            "a: *unknown\n",
            "x: &a 1\ny: &a 2\nz: *a\n",
        ];
        for (i, case) in cases.iter().enumerate() {
            out.push((format!("case {i}"), case.to_string()));
        }
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        out.push(("alias bomb".into(), bomb));
        out
    }

    /// Documents as (number, value), and the syntax error that ended them.
    pub(crate) type Values = (Vec<(usize, Value)>, Option<SyntaxError>);

    /// The documents `load_values` gives with `reader`, or why it stopped.
    pub(crate) fn values(text: &str, reader: Reader) -> Result<Values, Redo> {
        let mut docs = Vec::new();
        let error = load_values(text, reader, |d| docs.push((d.number, d.value)))?;
        Ok((docs, error))
    }

    #[test]
    fn values_without_positions_match_the_full_load() {
        let (mut with_problems, mut fast) = (0, 0);
        for (name, text) in corpus() {
            let full = load(&text);
            let problems = full.documents.iter().any(|d| !d.problems.is_empty());
            let full_docs: Vec<(usize, Value)> = full
                .documents
                .into_iter()
                .map(|d| (d.number, d.value))
                .collect();
            for reader in [Reader::Events, Reader::Fast] {
                match values(&text, reader) {
                    Ok((docs, error)) => {
                        assert!(!problems, "{name}: {reader:?} missed a problem");
                        assert_eq!(error, full.error, "{name}: {reader:?}: syntax error");
                        assert_eq!(docs, full_docs, "{name}: {reader:?}: documents");
                        fast += usize::from(reader == Reader::Fast);
                    }
                    Err(Redo::WithPositions) => {
                        assert!(problems, "{name}: {reader:?} gave up without a problem");
                        with_problems += usize::from(reader == Reader::Events);
                    }
                    Err(Redo::WithEvents) => {
                        assert_eq!(
                            reader,
                            Reader::Fast,
                            "{name}: only the fast reader gives up"
                        );
                    }
                }
            }
        }
        assert!(with_problems >= 3, "the corpus has documents with problems");
        assert!(fast >= 100, "the fast reader read only {fast} files");
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
