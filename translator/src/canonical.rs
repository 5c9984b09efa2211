//! Deterministic protobuf encoding of Envoy resources.
//!
//! envoy-types generates `map<...>` fields as `std::collections::HashMap`, and prost encodes
//! them in the map's iteration order, which is random per process (a route with both a fault
//! and a CORS policy has two `typed_per_filter_config` entries). xDS versions are content
//! hashes of the encoded bytes, so that randomness would give a restart or a second replica
//! different versions for the same config, and a spurious push.
//!
//! [`encode`] re-encodes a message with every map's entries in a fixed order (sorted by their
//! encoded bytes), recursing into sub-messages and into `google.protobuf.Any` payloads by
//! their type URL. Everything else is kept byte for byte: prost already writes fields in
//! field-number order.

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::{Message, Name};
use prost_reflect::{Kind, MessageDescriptor};

use crate::print::descriptor_pool;

/// Encode `msg` with deterministic map-entry order.
pub fn encode<M: Message + Name>(msg: &M) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    match descriptor_pool().get_message_by_name(&M::full_name()) {
        Some(descriptor) => canonicalize(&descriptor, &bytes),
        // Every type we emit is in the descriptor set (tested); fall back to prost's bytes.
        None => bytes,
    }
}

/// Canonicalize the encoding of a message of type `descriptor`. Bytes that cannot be walked
/// (never the case for prost's own output) are returned unchanged.
pub fn canonicalize(descriptor: &MessageDescriptor, bytes: &[u8]) -> Vec<u8> {
    walk(descriptor, bytes).unwrap_or_else(|| bytes.to_vec())
}

fn walk(descriptor: &MessageDescriptor, mut buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    // Entries of the map field being read: (field number, encoded entries).
    let mut map: Option<(u32, Vec<Vec<u8>>)> = None;
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        let field = descriptor.get_field(tag);
        if map.as_ref().is_some_and(|(t, _)| *t != tag) {
            flush(&mut map, &mut out);
        }
        match wire_type {
            WireType::Varint => {
                let v = decode_varint(&mut buf).ok()?;
                encode_key(tag, wire_type, &mut out);
                encode_varint(v, &mut out);
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                let (value, rest) = split(buf, n)?;
                buf = rest;
                encode_key(tag, wire_type, &mut out);
                out.extend_from_slice(value);
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let (payload, rest) = split(buf, len)?;
                buf = rest;
                let canonical = match field.as_ref().map(|f| f.kind()) {
                    Some(Kind::Message(m)) if m.full_name() == "google.protobuf.Any" => {
                        any(&m, payload)?
                    }
                    Some(Kind::Message(m)) => walk(&m, payload)?,
                    _ => payload.to_vec(),
                };
                if field.as_ref().is_some_and(|f| f.is_map()) {
                    map.get_or_insert_with(|| (tag, Vec::new()))
                        .1
                        .push(canonical);
                } else {
                    write_delimited(tag, &canonical, &mut out);
                }
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    flush(&mut map, &mut out);
    Some(out)
}

/// `google.protobuf.Any`: canonicalize `value` as the message its `type_url` names.
fn any(descriptor: &MessageDescriptor, payload: &[u8]) -> Option<Vec<u8>> {
    let decoded = envoy_types::pb::google::protobuf::Any::decode(payload).ok()?;
    let type_name = decoded.type_url.rsplit('/').next().unwrap_or_default();
    let value = match descriptor_pool().get_message_by_name(type_name) {
        Some(inner) => walk(&inner, &decoded.value)?,
        None => decoded.value.clone(),
    };
    let mut out = Vec::with_capacity(payload.len());
    if !decoded.type_url.is_empty() {
        write_delimited(1, decoded.type_url.as_bytes(), &mut out);
    }
    if !value.is_empty() {
        write_delimited(2, &value, &mut out);
    }
    // Keep `descriptor` in the signature so a future Any field change is noticed here.
    debug_assert_eq!(descriptor.full_name(), "google.protobuf.Any");
    Some(out)
}

fn flush(map: &mut Option<(u32, Vec<Vec<u8>>)>, out: &mut Vec<u8>) {
    if let Some((tag, mut entries)) = map.take() {
        entries.sort();
        for entry in entries {
            write_delimited(tag, &entry, out);
        }
    }
}

fn write_delimited(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn split(buf: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (buf.len() >= n).then(|| buf.split_at(n))
}

#[cfg(test)]
// The point of these tests is HashMap's random order.
#[allow(clippy::disallowed_types)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: value.to_vec(),
        }
    }

    /// A route config whose route has several `typed_per_filter_config` entries, inserted in
    /// the given order into a fresh `HashMap` (its own random iteration order).
    fn config(order: &[&str]) -> RouteConfiguration {
        let mut per_filter = HashMap::new();
        for name in order {
            per_filter.insert(
                name.to_string(),
                any(
                    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    &[],
                ),
            );
        }
        RouteConfiguration {
            name: "8080".into(),
            virtual_hosts: vec![VirtualHost {
                name: "a:8080".into(),
                domains: vec!["a".into()],
                routes: vec![Route {
                    name: "r".into(),
                    typed_per_filter_config: per_filter,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn map_entry_order_does_not_change_the_bytes() {
        let names = [
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "x",
            "y",
            "z",
        ];
        let reference = encode(&config(&names));
        for round in 0..20 {
            let mut order = names.to_vec();
            order.rotate_left(round % names.len());
            if round % 2 == 1 {
                order.reverse();
            }
            assert_eq!(encode(&config(&order)), reference, "round {round}");
        }
        // Still the same message.
        let decoded = RouteConfiguration::decode(reference.as_slice()).unwrap();
        assert_eq!(decoded, config(&names));
    }

    #[test]
    fn messages_without_maps_are_unchanged() {
        let mut c = config(&["only"]);
        c.virtual_hosts[0].routes[0].typed_per_filter_config.clear();
        assert_eq!(encode(&c), c.encode_to_vec());
    }
}
