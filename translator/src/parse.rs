//! YAML text → [`source::Resource`]s, with positions for every field path.

use crate::source::{Parsed, SourceFile};

/// Parse every file (multi-document YAML) in order. Never panics; problems become diagnostics.
pub fn parse_files(files: &[SourceFile]) -> Parsed {
    let mut parsed = Parsed::default();
    for file in files {
        let one = parse_file(&file.path, &file.text);
        parsed.resources.extend(one.resources);
        parsed.diagnostics.extend(one.diagnostics);
    }
    parsed
}

/// Parse one file. TODO: implemented by the input stage.
pub fn parse_file(_path: &str, _text: &str) -> Parsed {
    Parsed::default()
}
