//! Placeholder created by the table author so the crate compiles; D owns this file.
