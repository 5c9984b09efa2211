//! Diagnostics about Kubernetes objects, posted as Kubernetes Events on the objects
//! (`kubectl describe virtualservice reviews` shows them): type Warning, reason
//! `ConfigError` (an error) or `ConfigWarning`, reporting controller `shadowplane`, the note
//! the diagnostic's code, field path, message and hint.
//!
//! This module says what an Event carries; `crate::app::kube_events` posts them (one Event per
//! distinct diagnostic, shared by replicas).

use kube::runtime::events::{Event, EventType};
use shadowplane_translator::{Diagnostic, Severity};

use super::convert::PATH_PREFIX;

/// The reporting controller of the Events.
pub const REPORTER: &str = "shadowplane";

/// Kubernetes caps an Event's note at 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

/// An error or warning located in a Kubernetes object.
pub fn is_postable(d: &Diagnostic) -> bool {
    d.severity != Severity::Info
        && d.location
            .as_ref()
            .is_some_and(|l| l.file.starts_with(PATH_PREFIX))
}

/// The Event of a diagnostic.
pub fn event_for(d: &Diagnostic) -> Event {
    let reason = if d.is_error() {
        "ConfigError"
    } else {
        "ConfigWarning"
    };
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note(d)),
        action: "Translate".into(),
        secondary: None,
    }
}

/// `[IST0101] spec.http[0].route[0].destination.subset: message (hint: ...)`, at most 1 kB.
pub fn note(d: &Diagnostic) -> String {
    let mut note = format!("[{}] ", d.code.id());
    if let Some(field) = d.field.as_deref().filter(|f| !f.is_empty()) {
        note.push_str(field);
        note.push_str(": ");
    }
    note.push_str(&d.message);
    if let Some(hint) = &d.hint {
        note.push_str(" (hint: ");
        note.push_str(hint);
        note.push(')');
    }
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_translator::diag::Location;
    use shadowplane_translator::Code;

    fn diag(file: &str) -> Diagnostic {
        let mut d = Diagnostic::error(Code::UnknownField, "unknown field \"subest\"");
        d.location = Some(Location {
            file: file.into(),
            line: 9,
            column: 7,
        });
        d.field = Some("spec.http[0].route[0].destination.subest".into());
        d.hint = Some("did you mean \"subset\"?".into());
        d
    }

    #[test]
    fn notes_name_the_field_message_and_hint() {
        let d = diag("kubernetes:/apis/networking.istio.io/v1/namespaces/a/virtualservices/b");
        assert!(is_postable(&d));
        let e = event_for(&d);
        assert_eq!(e.reason, "ConfigError");
        assert_eq!(e.type_, EventType::Warning);
        let note = e.note.expect("note");
        assert!(note.contains("spec.http[0].route[0].destination.subest: unknown field \"subest\" (hint: did you mean \"subset\"?)"), "{note}");
        assert!(!is_postable(&diag("vs.yaml")));
        let mut long = diag("kubernetes:/x");
        long.message = "é".repeat(2000);
        assert!(note_len(&long) <= MAX_NOTE_BYTES);
    }

    fn note_len(d: &Diagnostic) -> usize {
        note(d).len()
    }
}
