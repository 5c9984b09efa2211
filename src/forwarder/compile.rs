//! placeholder, filled in next commits.
