//! A fast path for the plain shape of most Kubernetes YAML: block mappings and sequences of
//! single-line scalars, as `kubectl`, Helm and people write Istio resources. It produces the
//! node events yaml-rust2 would produce for the same text (without positions: the value
//! builder does not use them, and positions are always indexed by yaml-rust2) in about a
//! third of yaml-rust2's instructions, and gives up at the first thing outside that shape so
//! that yaml-rust2 reads the whole file.
//!
//! Accepted, per file:
//! - ASCII text without tabs or carriage returns (a byte order mark is skipped, as yaml-rust2
//!   does); blank lines and `#` comments;
//! - documents separated by `---` lines at column 0 (a comment may follow), the first one
//!   possibly implicit;
//! - block mappings of `key: value` entries at one indentation, keys being single-line plain
//!   or quoted scalars followed directly by `:`;
//! - block sequences of `- ` entries at one indentation, entries possibly starting a compact
//!   mapping on the dash's line, and sequences at their key's indentation ("indentless");
//! - values that are a single-line plain scalar, a single-quoted scalar, a double-quoted
//!   scalar without escapes, nothing (null), or a nested block on the following lines.
//!
//! Everything else gives up: flow collections, anchors, aliases, tags, block scalars (`|`,
//! `>`), multi-line scalars, escapes, complex keys, directives, `...`, and anything yaml-rust2
//! would reject, so that its error is the one reported.

use yaml_rust2::parser::Event;
use yaml_rust2::scanner::TScalarStyle;

use super::yaml::Builder;

/// The text is outside the shape this parser handles: parse it with yaml-rust2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GaveUp;

type Result<T> = std::result::Result<T, GaveUp>;

/// Nesting deeper than this gives up (the parser is recursive; yaml-rust2 is not).
const MAX_DEPTH: usize = 64;

/// Run `B` over every document of `text`, handing each result to `each` until it returns
/// `false`, as yaml-rust2's event stream would (the same documents, numbered the same way).
/// Documents already handed over when it gives up are the caller's to take back.
pub(super) fn stream<B: Builder>(
    text: &str,
    mut each: impl FnMut(B::Output) -> bool,
) -> Result<()> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return Err(GaveUp);
    }
    let mut lines = Vec::with_capacity(text.bytes().filter(|&b| b == b'\n').count() + 1);
    lines.extend(text.split('\n').map(Line::new));
    let mut parser = Parser { lines, next: 0 };
    let mut number = 0;
    loop {
        let Some(first) = parser.peek() else {
            return Ok(());
        };
        if first.kind == Kind::DocumentStart {
            parser.advance();
        }
        let mut builder = B::start(number, (0, 0));
        number += 1;
        if let Some(line) = parser.peek().filter(|l| l.kind == Kind::Content) {
            let column = line.indent;
            parser.node(&mut builder, column, -1, 0)?;
            if parser.peek().is_some_and(|l| l.kind != Kind::DocumentStart) {
                return Err(GaveUp);
            }
        }
        if !each(builder.finish()) {
            return Ok(());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Empty, spaces only, or a comment.
    Blank,
    /// `---` at column 0, possibly followed by spaces and a comment.
    DocumentStart,
    Content,
}

#[derive(Debug, Clone, Copy)]
struct Line<'t> {
    text: &'t str,
    /// Leading spaces.
    indent: usize,
    kind: Kind,
}

impl<'t> Line<'t> {
    fn new(text: &'t str) -> Line<'t> {
        let indent = text.len() - text.trim_start_matches(' ').len();
        let rest = &text[indent..];
        let kind = if rest.is_empty() || rest.starts_with('#') {
            Kind::Blank
        } else if indent == 0 && is_marker(text, "---") && is_blank_rest(&text[3..]) {
            Kind::DocumentStart
        } else {
            Kind::Content
        };
        Line { text, indent, kind }
    }
}

/// `---` or `...` followed by the end of the line or a space.
fn is_marker(text: &str, marker: &str) -> bool {
    text.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// `rest` is nothing or a comment (spaces then `#`, or spaces only).
fn is_blank_rest(rest: &str) -> bool {
    let trimmed = rest.trim_start_matches(' ');
    trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())
}

struct Parser<'t> {
    lines: Vec<Line<'t>>,
    /// The next line to read.
    next: usize,
}

/// A scalar as written: its text (quotes removed) and style.
struct Scalar {
    text: String,
    style: TScalarStyle,
}

impl Scalar {
    fn emit<B: Builder>(self, b: &mut B) {
        b.event(Event::Scalar(self.text, self.style, 0, None), (0, 0));
    }

    fn null() -> Scalar {
        Scalar {
            text: String::new(),
            style: TScalarStyle::Plain,
        }
    }
}

impl<'t> Parser<'t> {
    /// The next line that is not blank, without consuming it. A `...` or directive line, or
    /// a `---` line with content after it, gives up here by looking like neither.
    fn peek(&mut self) -> Option<Line<'t>> {
        while let Some(line) = self.lines.get(self.next) {
            if line.kind != Kind::Blank {
                return Some(*line);
            }
            self.next += 1;
        }
        None
    }

    fn advance(&mut self) {
        self.next += 1;
    }

    /// The next content line if it is indented more than `parent`, else `None`.
    fn child_line(&mut self, parent: isize) -> Option<Line<'t>> {
        self.peek()
            .filter(|l| l.kind == Kind::Content && l.indent as isize > parent)
    }

    /// After a node that ended its line: the next line must not be indented more than the
    /// node's parent `parent` (that would continue a multi-line scalar, or be an error).
    fn expect_dedent(&mut self, parent: isize) -> Result<()> {
        match self.child_line(parent) {
            Some(_) => Err(GaveUp),
            None => Ok(()),
        }
    }

    /// A block node starting at `column` of the current line (the first line of the node,
    /// which may start after a `- `), inside a collection indented at `parent`.
    fn node<B: Builder>(
        &mut self,
        b: &mut B,
        column: usize,
        parent: isize,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(GaveUp);
        }
        let line = self.peek().ok_or(GaveUp)?;
        let rest = &line.text[column..];
        if is_dash(rest) {
            return self.sequence(b, column, depth);
        }
        match key_at(rest)? {
            Some(_) => self.mapping(b, column, depth),
            None => {
                let scalar = value_scalar(rest)?;
                scalar.emit(b);
                self.advance();
                self.expect_dedent(parent)
            }
        }
    }

    /// A block sequence whose dashes are at `column`; the current line holds the first dash.
    fn sequence<B: Builder>(&mut self, b: &mut B, column: usize, depth: usize) -> Result<()> {
        b.event(Event::SequenceStart(0, None), (0, 0));
        loop {
            let line = self.peek().ok_or(GaveUp)?;
            let after_dash = &line.text[column + 1..];
            let spaces = after_dash.len() - after_dash.trim_start_matches(' ').len();
            let content = column + 1 + spaces;
            let rest = &line.text[content..];
            if is_blank_rest(after_dash) {
                // `-` alone: the entry is on the following lines, or null.
                self.advance();
                match self.child_line(column as isize) {
                    Some(next) => self.node(b, next.indent, column as isize, depth + 1)?,
                    None => Scalar::null().emit(b),
                }
            } else if is_dash(rest) {
                // `- - x`: a compact nested sequence.
                return Err(GaveUp);
            } else if key_at(rest)?.is_some() {
                // `- key: value`: a compact mapping at the key's column.
                self.mapping(b, content, depth + 1)?;
            } else {
                value_scalar(rest)?.emit(b);
                self.advance();
                self.expect_dedent(column as isize)?;
            }
            match self.peek() {
                Some(next)
                    if next.kind == Kind::Content
                        && next.indent == column
                        && is_dash(&next.text[column..]) => {}
                Some(next) if next.kind == Kind::Content && next.indent > column => {
                    return Err(GaveUp)
                }
                _ => break,
            }
        }
        b.event(Event::SequenceEnd, (0, 0));
        Ok(())
    }

    /// A block mapping whose keys are at `column`; the current line holds the first key
    /// there (possibly after a `- `).
    fn mapping<B: Builder>(&mut self, b: &mut B, column: usize, depth: usize) -> Result<()> {
        b.event(Event::MappingStart(0, None), (0, 0));
        let mut first = true;
        loop {
            let line = self.peek().ok_or(GaveUp)?;
            // The first key may follow a `- ` on its line; the others start their lines.
            if !first && line.indent != column {
                return Err(GaveUp);
            }
            first = false;
            let rest = &line.text[column..];
            let (key, value_at) = key_at(rest)?.ok_or(GaveUp)?;
            key.emit(b);
            let value = &rest[value_at..];
            if is_blank_rest(value) {
                // `key:` alone: the value is on the following lines, or null.
                self.advance();
                match self.peek() {
                    Some(next) if next.kind == Kind::Content && next.indent > column => {
                        self.node(b, next.indent, column as isize, depth + 1)?;
                    }
                    Some(next)
                        if next.kind == Kind::Content
                            && next.indent == column
                            && is_dash(&next.text[column..]) =>
                    {
                        // A sequence at its key's indentation.
                        self.sequence(b, column, depth + 1)?;
                    }
                    _ => Scalar::null().emit(b),
                }
            } else {
                value_scalar(value.trim_start_matches(' '))?.emit(b);
                self.advance();
                self.expect_dedent(column as isize)?;
            }
            match self.peek() {
                Some(next) if next.kind == Kind::Content && next.indent == column => {}
                Some(next) if next.kind == Kind::Content && next.indent > column => {
                    return Err(GaveUp)
                }
                _ => break,
            }
        }
        b.event(Event::MappingEnd, (0, 0));
        Ok(())
    }
}

/// A sequence entry: `-` followed by a space or the end of the line.
fn is_dash(rest: &str) -> bool {
    is_marker(rest, "-")
}

/// If `rest` starts with a mapping key (a scalar directly followed by `:` and a space or the
/// end of the line): the key and where its value starts (after the `:`). `Ok(None)`: not a
/// key. Gives up on keys it does not handle (complex, flow, anchored, tagged).
fn key_at(rest: &str) -> Result<Option<(Scalar, usize)>> {
    let (scalar, end) = match rest.as_bytes().first() {
        Some(b'"' | b'\'') => quoted(rest)?,
        _ => {
            // A plain key runs to the first `: ` or final `:`; a ` #` before it starts a
            // comment, so the line is not a key.
            let Some(colon) = plain_key_end(rest) else {
                return Ok(None);
            };
            (plain(&rest[..colon])?, colon)
        }
    };
    let after = &rest[end..];
    match after.strip_prefix(':') {
        Some(value) if value.is_empty() || value.starts_with(' ') => Ok(Some((scalar, end + 1))),
        // A quoted scalar not followed by `: `: a value, not a key.
        _ if !after.starts_with(':') => Ok(None),
        // `"a":b` and the like.
        _ => Err(GaveUp),
    }
}

/// Where the `:` of a plain key is: the first `:` followed by a space or the end of the
/// line, unless a comment (` #`) starts before it.
fn plain_key_end(rest: &str) -> Option<usize> {
    let bytes = rest.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b':' if bytes.get(i + 1).is_none_or(|&n| n == b' ') => return Some(i),
            b'#' if i > 0 && bytes[i - 1] == b' ' => return None,
            _ => {}
        }
    }
    None
}

/// A value on the rest of a line: a quoted scalar followed by nothing or a comment, or a
/// plain scalar up to a comment.
fn value_scalar(rest: &str) -> Result<Scalar> {
    match rest.as_bytes().first() {
        Some(b'"' | b'\'') => {
            let (scalar, end) = quoted(rest)?;
            if is_blank_rest(&rest[end..]) {
                Ok(scalar)
            } else {
                Err(GaveUp)
            }
        }
        _ => {
            let bytes = rest.as_bytes();
            let end = (1..bytes.len())
                .find(|&i| bytes[i] == b'#' && bytes[i - 1] == b' ')
                .unwrap_or(bytes.len());
            let text = &rest[..end];
            // A `: ` or final `:` would make it a key (or an error): not a plain value.
            let trimmed = text.trim_end_matches(' ');
            if trimmed.contains(": ") || trimmed.ends_with(':') {
                return Err(GaveUp);
            }
            plain(trimmed)
        }
    }
}

/// A plain scalar, already cut at its end. Gives up on one starting with an indicator
/// (flow collections, anchors, aliases, tags, block scalars, directives, reserved), on
/// `- `, `? `, `: ` forms, and on document markers.
fn plain(text: &str) -> Result<Scalar> {
    let text = text.trim_end_matches(' ');
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(GaveUp);
    };
    let second = bytes.get(1).copied();
    let indicator = match first {
        b'[' | b']' | b'{' | b'}' | b',' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' | b'?' | b':' => true,
        b'-' => second.is_none_or(|c| c == b' ') || text.starts_with("---"),
        b'.' => text.starts_with("..."),
        _ => false,
    };
    if indicator {
        return Err(GaveUp);
    }
    Ok(Scalar {
        text: text.to_string(),
        style: TScalarStyle::Plain,
    })
}

/// A quoted scalar at the start of `rest`, closed on the same line: the scalar and the byte
/// just after its closing quote. Double-quoted scalars with escapes give up.
fn quoted(rest: &str) -> Result<(Scalar, usize)> {
    let bytes = rest.as_bytes();
    match bytes.first() {
        Some(b'\'') => {
            let mut text = String::new();
            let mut i = 1;
            loop {
                let Some(quote) = rest[i..].find('\'') else {
                    return Err(GaveUp);
                };
                text.push_str(&rest[i..i + quote]);
                i += quote + 1;
                if bytes.get(i) == Some(&b'\'') {
                    // `''` is one quote.
                    text.push('\'');
                    i += 1;
                } else {
                    break;
                }
            }
            Ok((
                Scalar {
                    text,
                    style: TScalarStyle::SingleQuoted,
                },
                i,
            ))
        }
        Some(b'"') => {
            let Some(close) = rest[1..].find(['"', '\\']) else {
                return Err(GaveUp);
            };
            if bytes[1 + close] == b'\\' {
                return Err(GaveUp);
            }
            Ok((
                Scalar {
                    text: rest[1..1 + close].to_string(),
                    style: TScalarStyle::DoubleQuoted,
                },
                close + 2,
            ))
        }
        _ => Err(GaveUp),
    }
}

#[cfg(test)]
mod tests {
    use super::super::yaml::tests::{corpus, values};
    use super::super::yaml::{Reader, Redo};

    /// A small deterministic random generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const SCALARS: &[&str] = &[
        "v1",
        "reviews",
        "80",
        "-3",
        "1.5",
        "0x1F",
        "010",
        "true",
        "False",
        "null",
        "~",
        "",
        "a b",
        "a:b",
        "http://x.example.com/a?b=c",
        "a#b",
        "a #b",
        ".*Mobile.*",
        "/api/v2",
        "'single'",
        "'it''s'",
        "''",
        "\"double\"",
        "\"d: q # x\"",
        "\"\"",
        "\"es\\\"c\"",
        "[a, b]",
        "{a: 1}",
        "*alias",
        "&anchor x",
        "!tag x",
        "|",
        ">-",
        "%x",
        "@x",
        "`x",
        "- x",
        "-x",
        "? x",
        ": x",
        "a: b",
        "a:",
        "...",
        "---",
        "--x",
        "a ",
        "<<",
        "é",
        "a\tb",
        "x'y",
        "x\"y",
        "a,b",
        "a]b",
        "a}b",
        "(x)",
        "$v",
        "^p",
        "=e",
        "a  b",
    ];

    const KEYS: &[&str] = &[
        "name",
        "host",
        "subset",
        "x.with.dots",
        "x-canary",
        "app.kubernetes.io/name",
        "80",
        "true",
        "'quoted key'",
        "\"dq\"",
        "a b",
        "a:b",
        "-k",
        "<<",
        "k#",
        "k ",
        "? k",
        "[k]",
        "&a k",
        "*k",
        "!t k",
        "'k''q'",
        "\"k\\\"\"",
        "",
        "...",
    ];

    /// Mostly ordinary scalars and keys, sometimes odd ones.
    fn scalar(rng: &mut Rng) -> &'static str {
        if rng.chance(75) {
            rng.pick(&[
                "v1",
                "reviews",
                "8080",
                "true",
                "",
                "a-b.c_d/e",
                "'q'",
                "\"dq\"",
                "x y",
            ])
        } else {
            rng.pick(SCALARS)
        }
    }

    fn key(rng: &mut Rng) -> &'static str {
        if rng.chance(75) {
            rng.pick(&[
                "name",
                "host",
                "x-canary",
                "app.kubernetes.io/name",
                "'k'",
                "\"k\"",
                "80",
            ])
        } else {
            rng.pick(KEYS)
        }
    }

    /// A random node of a Kubernetes-like YAML document, written at `indent`.
    fn node(rng: &mut Rng, out: &mut String, indent: usize, depth: usize) {
        let pad = |n: usize| " ".repeat(n);
        let kind = if depth >= 4 { 2 } else { rng.below(3) };
        match kind {
            0 => {
                // A mapping.
                for _ in 0..1 + rng.below(4) {
                    out.push_str(&pad(indent));
                    out.push_str(key(rng));
                    out.push(':');
                    entry_value(rng, out, indent, depth);
                }
            }
            1 => {
                // A sequence.
                for _ in 0..1 + rng.below(3) {
                    out.push_str(&pad(indent));
                    out.push('-');
                    match rng.below(4) {
                        0 => {
                            out.push('\n');
                            let inner = indent + 1 + rng.below(3);
                            node(rng, out, inner, depth + 1);
                        }
                        1 => {
                            // A compact mapping.
                            let spaces = 1 + rng.below(2);
                            out.push_str(&pad(spaces));
                            out.push_str(key(rng));
                            out.push(':');
                            entry_value(rng, out, indent + 1 + spaces, depth);
                            for _ in 0..rng.below(3) {
                                out.push_str(&pad(indent + 1 + spaces));
                                out.push_str(key(rng));
                                out.push(':');
                                entry_value(rng, out, indent + 1 + spaces, depth);
                            }
                        }
                        _ => {
                            out.push(' ');
                            out.push_str(scalar(rng));
                            comment(rng, out);
                            out.push('\n');
                        }
                    }
                }
            }
            _ => {
                out.push_str(&pad(indent));
                out.push_str(scalar(rng));
                out.push('\n');
            }
        }
        if rng.chance(10) {
            out.push_str(&pad(rng.below(6)));
            out.push_str("# a comment\n");
        }
        if rng.chance(10) {
            out.push('\n');
        }
    }

    /// What follows `key:`: a scalar, nothing, a nested block or an indentless sequence.
    fn entry_value(rng: &mut Rng, out: &mut String, indent: usize, depth: usize) {
        match rng.below(5) {
            0 | 1 => {
                out.push(' ');
                out.push_str(scalar(rng));
                comment(rng, out);
                out.push('\n');
            }
            2 => {
                comment(rng, out);
                out.push('\n');
                let inner = indent + 1 + rng.below(3);
                node(rng, out, inner, depth + 1);
            }
            3 if depth < 4 => {
                // A sequence at the key's indentation.
                out.push('\n');
                for _ in 0..1 + rng.below(2) {
                    out.push_str(&" ".repeat(indent));
                    out.push_str("- ");
                    out.push_str(scalar(rng));
                    out.push('\n');
                }
            }
            _ => {
                comment(rng, out);
                out.push('\n');
            }
        }
    }

    fn comment(rng: &mut Rng, out: &mut String) {
        match rng.below(8) {
            0 => out.push_str(" # note"),
            1 => out.push_str("  "),
            _ => {}
        }
    }

    fn document(rng: &mut Rng) -> String {
        let mut out = String::new();
        if rng.chance(20) {
            out.push_str("# header\n");
        }
        for d in 0..1 + rng.below(3) {
            if d > 0 || rng.chance(30) {
                out.push_str(rng.pick(&["---\n", "--- # doc\n", "---  \n", "--- x: 1\n", "...\n"]));
            }
            if rng.chance(90) {
                let indent = if rng.chance(95) { 0 } else { 2 };
                node(rng, &mut out, indent, 0);
            }
        }
        out
    }

    /// Insert, delete or replace a few characters with ones that matter to YAML.
    fn mutate(rng: &mut Rng, text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(chars.len() + 1);
            let c = [' ', ':', '-', '#', '\n', '\'', '"', 'x', '[', ' ', ' '][rng.below(11)];
            match rng.below(3) {
                0 => chars.insert(at, c),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = c,
                _ => {}
            }
        }
        chars.into_iter().collect()
    }

    /// Whenever the fast reader does not give up, it reads what yaml-rust2 reads.
    fn check(text: &str) -> bool {
        let fast = values(text, Reader::Fast);
        let events = values(text, Reader::Events);
        match fast {
            Err(Redo::WithEvents) => false,
            Ok((docs, error)) => {
                assert_eq!(error, None, "the fast reader never reports an error");
                match events {
                    Ok((expected, None)) => assert_eq!(docs, expected, "{text:?}"),
                    other => panic!("fast read {docs:?} but yaml-rust2 gives {other:?}: {text:?}"),
                }
                true
            }
            Err(Redo::WithPositions) => {
                assert_eq!(events.err(), Some(Redo::WithPositions), "{text:?}");
                true
            }
        }
    }

    #[test]
    fn fast_reader_agrees_with_yaml_rust2_on_random_documents() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..3000 {
            let text = document(&mut rng);
            total += 1;
            accepted += usize::from(check(&text));
            for _ in 0..3 {
                total += 1;
                accepted += usize::from(check(&mutate(&mut rng, &text)));
            }
        }
        // Both sides of the comparison are exercised.
        assert!(
            accepted > total / 10,
            "only {accepted} of {total} read by the fast reader"
        );
        assert!(accepted < total, "the fast reader accepted everything");
    }

    #[test]
    fn fast_reader_agrees_with_yaml_rust2_on_mutated_files() {
        let mut rng = Rng(0x5eed_1234_abcd_0002);
        for (_, text) in corpus().iter().filter(|(_, t)| t.len() < 20_000) {
            check(text);
            for _ in 0..10 {
                check(&mutate(&mut rng, text));
            }
        }
    }

    #[test]
    fn the_usual_shape_is_read_fast() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: ns   # a comment
spec:
  hosts:
  - reviews
  http:
  - name: \"by-header\"
    match:
    - headers:
        x-canary:
          exact: 'true'
    route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
---
# next
kind: DestinationRule
spec:
  subsets:
    -
      name: v1
    - name: v2
      labels: {}
";
        // Everything but the flow mapping `{}` at the end.
        assert!(check(text.split("---").next().unwrap()));
        assert!(!check(text));
    }
}
