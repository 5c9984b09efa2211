//! `serde_yaml::Value` → typed Istio structs, with serde's errors turned into diagnostics that
//! name the field path, the bad value and what to write instead.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

use crate::diag::Code;

/// A schema error, before it is attached to a file and resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SchemaError {
    pub code: Code,
    /// Full field path, e.g. `spec.http[0].route[0].destination.subest`.
    pub path: String,
    pub message: String,
    pub value: Option<String>,
    pub hint: Option<String>,
}

/// Deserialize `value` (found at field path `prefix`) into `T`.
pub(crate) fn deserialize<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, SchemaError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = join_path(prefix, err.path());
        classify(path, &err.inner().to_string())
    })
}

/// [`deserialize`], fast: without tracking the field path, which costs an allocation per
/// field (a seventh of the parse). Only when that fails is the value read again with
/// `reread` (it must give the same value, which the fast attempt consumed) and deserialized
/// by [`deserialize`] for the report, so errors are exactly [`deserialize`]'s. Tracking the
/// path does not change what deserializes, only what an error says.
pub(crate) fn deserialize_or_reread<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    reread: impl FnOnce() -> Option<Value>,
) -> Result<T, SchemaError> {
    match T::deserialize(value) {
        Ok(typed) => Ok(typed),
        Err(fast) => match reread() {
            Some(value) => deserialize(value, prefix),
            // Not expected (the same text read again): report without the field path.
            None => Err(classify(prefix.to_string(), &fast.to_string())),
        },
    }
}

fn join_path(prefix: &str, path: &serde_path_to_error::Path) -> String {
    let mut out = prefix.to_string();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut out, key),
            Segment::Enum { variant } => push_key(&mut out, variant),
            Segment::Unknown => break,
        }
    }
    out
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Turn serde's message for the value at `path` into a diagnostic's parts.
fn classify(path: String, message: &str) -> SchemaError {
    if let Some((name, expected)) = parse_unknown_field(message) {
        // serde_path_to_error may or may not have pushed the unknown key itself.
        let path = if path.rsplit(['.', '[']).next() == Some(name.as_str()) {
            path
        } else {
            let mut p = path;
            push_key(&mut p, &name);
            p
        };
        return SchemaError {
            code: Code::UnknownField,
            path,
            message: format!("unknown field \"{name}\""),
            value: None,
            hint: Some(unknown_field_hint(&name, &expected)),
        };
    }
    if let Some(name) = between(message, "missing field `", "`") {
        let mut field = path;
        push_key(&mut field, name);
        return SchemaError {
            code: Code::MissingField,
            path: field,
            message: format!("missing required field \"{name}\""),
            value: None,
            hint: Some(format!("add \"{name}\" here")),
        };
    }
    if let Some(name) = between(message, "duplicate field `", "`") {
        return SchemaError {
            code: Code::InvalidValue,
            path,
            message: format!("field \"{name}\" is set twice (also under another spelling)"),
            value: None,
            hint: Some(format!(
                "keep only one of the spellings of \"{name}\" (e.g. mirrorPercent or mirror_percent)"
            )),
        };
    }
    let type_error = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .or_else(|| message.strip_prefix("invalid length "));
    if let Some((unexpected, expected)) = type_error.and_then(|m| m.split_once(", expected ")) {
        let found = Found::parse(unexpected);
        let wanted = readable_expected(expected);
        let message = match &found.shown {
            Some(shown) => format!("invalid value {shown}: expected {wanted}"),
            None => format!("expected {wanted}, found {}", found.description),
        };
        return SchemaError {
            code: Code::InvalidValue,
            path,
            message,
            value: found.raw.clone(),
            hint: type_hint(&found, expected),
        };
    }
    SchemaError {
        code: Code::InvalidValue,
        path,
        message: message.to_string(),
        value: None,
        hint: None,
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    let stop = rest.find(end)?;
    Some(&rest[..stop])
}

/// `unknown field `subest`, expected one of `host`, `subset`, `port`` → (`subest`, [host, subset, port]).
/// Also `expected `host`` (one field) and `there are no fields`.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = match rest.find("`, expected ") {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => {
            let i = rest.find("`, there are no fields")?;
            (&rest[..i], "")
        }
    };
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((name.to_string(), expected))
}

/// `did you mean "subset"? valid fields here: host, subset, port`.
pub(crate) fn unknown_field_hint(name: &str, valid: &[String]) -> String {
    if valid.is_empty() {
        return "this mapping takes no fields: delete it".to_string();
    }
    let list = valid.join(", ");
    match closest(name, valid) {
        Some(best) => format!("did you mean \"{best}\"? valid fields here: {list}"),
        None => format!("valid fields here: {list}"),
    }
}

/// The candidate closest to `name`: same letters ignoring case, `_` and `-` (`mirror_percentage`
/// → `mirrorPercentage`), else the smallest edit distance within about a third of the length.
pub(crate) fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let wanted = norm(name);
    if let Some(same) = candidates.iter().find(|c| norm(c) == wanted) {
        return Some(same);
    }
    let limit = (wanted.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(&wanted, &norm(c)), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Levenshtein distance with adjacent transpositions counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// serde's `Unexpected` description made readable.
struct Found {
    /// `a list`, `a mapping`, `the number 80`, ...
    description: String,
    /// How to show the value inline (`"eighty"`, `80`, `null`), for scalars.
    shown: Option<String>,
    /// The value as the user wrote it, for scalars.
    raw: Option<String>,
    kind: FoundKind,
}

#[derive(PartialEq)]
enum FoundKind {
    String,
    Number,
    Bool,
    Null,
    Seq,
    Map,
    Other,
}

impl Found {
    fn parse(unexpected: &str) -> Found {
        let ticked = |prefix: &str| {
            unexpected
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('`'))
                .and_then(|r| r.strip_suffix('`'))
                .map(str::to_string)
        };
        let scalar = |kind: FoundKind, raw: String, shown: String, description: &str| Found {
            description: format!("{description} {shown}"),
            shown: Some(shown),
            raw: Some(raw),
            kind,
        };
        if let Some(s) = unexpected.strip_prefix("string ") {
            // serde prints strings with Rust's Debug quoting.
            let raw = s
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(s)
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
            return scalar(FoundKind::String, raw, s.to_string(), "the string");
        }
        for prefix in ["integer ", "floating point "] {
            if let Some(n) = ticked(prefix) {
                return scalar(FoundKind::Number, n.clone(), n, "the number");
            }
        }
        if let Some(b) = ticked("boolean ") {
            return scalar(FoundKind::Bool, b.clone(), b, "the boolean");
        }
        let (description, kind) = match unexpected {
            "unit value" | "Option value" => ("an empty value (null)", FoundKind::Null),
            "sequence" => ("a list", FoundKind::Seq),
            "map" => ("a mapping", FoundKind::Map),
            "enum" => ("a tagged value (!tag)", FoundKind::Other),
            other => (other, FoundKind::Other),
        };
        Found {
            description: description.to_string(),
            shown: (kind == FoundKind::Null).then(|| "null".to_string()),
            raw: None,
            kind,
        }
    }
}

/// serde's "expected ..." made readable.
fn readable_expected(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".to_string(),
        "u16" => "a whole number from 0 to 65535".to_string(),
        "u32" => "a whole number from 0 to 4294967295".to_string(),
        "u64" => "a whole number of 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        other if other.starts_with("struct ") => "a mapping".to_string(),
        other => other.to_string(),
    }
}

fn expects_number(expected: &str) -> bool {
    matches!(
        expected,
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "f32" | "f64"
    )
}

fn type_hint(found: &Found, expected: &str) -> Option<String> {
    let wants_mapping = expected == "a map" || expected.starts_with("struct ");
    match (&found.kind, found.raw.as_deref()) {
        (FoundKind::Number | FoundKind::Bool, Some(raw)) if expected == "a string" => {
            Some(format!("quote the value to make it a string: \"{raw}\""))
        }
        (FoundKind::String, Some(raw))
            if expects_number(expected) && raw.trim().parse::<f64>().is_ok() =>
        {
            Some(format!("remove the quotes: {}", raw.trim()))
        }
        (FoundKind::Number, Some(raw))
            if expects_number(expected) && expected.starts_with('u') && raw.starts_with('-') =>
        {
            Some("use a number of 0 or more".to_string())
        }
        (FoundKind::Number, Some(_)) if expects_number(expected) && !expected.starts_with('f') => {
            Some("use a whole number without a decimal point".to_string())
        }
        (FoundKind::Null, _) => Some("fill in the value or delete the field".to_string()),
        (_, _) if wants_mapping => {
            Some("this field takes a mapping: indented \"key: value\" lines under it".to_string())
        }
        (_, _) if expected == "a sequence" => Some(
            "this field takes a list: one item per line, each starting with \"- \"".to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_field_messages_are_parsed() {
        let (name, expected) =
            parse_unknown_field("unknown field `subest`, expected one of `host`, `subset`, `port`")
                .expect("serde's unknown field message");
        assert_eq!(name, "subest");
        assert_eq!(expected, names(&["host", "subset", "port"]));
        let (name, expected) =
            parse_unknown_field("unknown field `x`, expected `value`").expect("one field");
        assert_eq!((name.as_str(), expected), ("x", names(&["value"])));
        let (name, expected) =
            parse_unknown_field("unknown field `x`, there are no fields").expect("none");
        assert_eq!((name.as_str(), expected.len()), ("x", 0));
    }

    #[test]
    fn closest_names() {
        let fields = names(&["host", "subset", "port"]);
        assert_eq!(closest("subest", &fields), Some("subset"));
        assert_eq!(closest("hsot", &fields), Some("host"));
        assert_eq!(closest("weight", &fields), None);
        let route = names(&["mirror", "mirrors", "mirrorPercent", "mirrorPercentage"]);
        assert_eq!(
            closest("mirror_percentage", &route),
            Some("mirrorPercentage")
        );
        assert_eq!(closest("mirrorPercentag", &route), Some("mirrorPercentage"));
        assert_eq!(
            unknown_field_hint("subest", &fields),
            "did you mean \"subset\"? valid fields here: host, subset, port"
        );
        assert_eq!(
            unknown_field_hint("zzz", &fields),
            "valid fields here: host, subset, port"
        );
    }

    #[test]
    fn type_errors_are_readable() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Port {
            number: u32,
            name: Option<String>,
        }
        let v: Value = serde_yaml::from_str("number: eighty").expect("valid yaml");
        let e = deserialize::<Port>(v, "spec.port").expect_err("a string is not a u32");
        assert_eq!(e.code, Code::InvalidValue);
        assert_eq!(e.path, "spec.port.number");
        assert_eq!(
            e.message,
            "invalid value \"eighty\": expected a whole number from 0 to 4294967295"
        );
        assert_eq!(e.value.as_deref(), Some("eighty"));

        let v: Value = serde_yaml::from_str("number: 80\nname: 8080").expect("valid yaml");
        let e = deserialize::<Port>(v, "spec.port").expect_err("a number is not a string");
        assert_eq!(e.path, "spec.port.name");
        assert_eq!(e.message, "invalid value 8080: expected a string");
        assert_eq!(
            e.hint.as_deref(),
            Some("quote the value to make it a string: \"8080\"")
        );

        let v: Value = serde_yaml::from_str("number: -1").expect("valid yaml");
        let e = deserialize::<Port>(v, "p").expect_err("negative");
        assert_eq!(
            e.message,
            "invalid value -1: expected a whole number from 0 to 4294967295"
        );

        let v: Value = serde_yaml::from_str("name: x").expect("valid yaml");
        let e = deserialize::<Port>(v, "spec.port").expect_err("missing number");
        assert_eq!(e.code, Code::MissingField);
        assert_eq!(e.path, "spec.port.number");
        assert_eq!(e.message, "missing required field \"number\"");

        let v: Value = serde_yaml::from_str("[1, 2]").expect("valid yaml");
        let e = deserialize::<Port>(v, "spec.port").expect_err("a list is not a struct");
        assert_eq!(e.path, "spec.port");
        assert_eq!(e.message, "expected a mapping, found a list");
    }
}
