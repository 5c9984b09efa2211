//! Envoy resources → canonical protobuf JSON (what Envoy's config_dump shows and its YAML
//! loader accepts), as JSON or YAML, via the descriptor set in `proto/`.
