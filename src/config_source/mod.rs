//! Where `serve` gets its config from, as a stream of file sets.
//!
//! Today the only source is the file system ([`files`]): the `--config` paths, watched and
//! re-read after a short quiet time. A source never translates; it hands the text to
//! [`crate::app`], which decides whether the result is good enough to serve.

pub mod files;

pub use files::{ConfigLoad, Debounce, FileSource, WatchError};
