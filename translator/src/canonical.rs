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
//!
//! Re-encoding copies every sub-message that may hold a map, which is nearly all of an Envoy
//! resource (`Metadata` and `Any` are everywhere), and is only needed when some map field has
//! two or more entries (a route with both a fault and a CORS policy). So [`encode`] first
//! scans prost's bytes, read-only and only into sub-messages whose type can reach a map field
//! or an `Any` (known per type from the descriptor pool, once), and returns them unchanged
//! when no map field has two entries: exactly what the re-encoding would have produced.

use std::sync::LazyLock;

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::{Message, Name};
use prost_reflect::{Kind, MessageDescriptor};

use crate::print::descriptor_pool;

/// Encode `msg` with deterministic map-entry order.
pub fn encode<M: Message + Name>(msg: &M) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let name = M::full_name();
    if is_plain(&name, &bytes) {
        return bytes;
    }
    match descriptor_pool().get_message_by_name(&name) {
        Some(descriptor) => canonicalize(&descriptor, &bytes),
        // Every type we emit is in the descriptor set (tested); fall back to prost's bytes.
        None => bytes,
    }
}

/// What the read-only scan of [`encode`] needs to know about a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// A `map<...>` field; its entries are messages of this type.
    Map(usize),
    /// `google.protobuf.Any`: the payload's type is in its `type_url`.
    Any,
    /// Any other message field, of this type.
    Message(usize),
    /// Scalars, strings, bytes, enums.
    Other,
}

/// One message type of the descriptor pool.
#[derive(Debug, Default)]
struct TypeInfo {
    /// Can a map field be reached from this type: its own fields, its sub-messages' (to any
    /// depth) or an `Any`'s (whose payload can be anything)?
    may_hold_maps: bool,
    /// Its message, map and `Any` fields by number, sorted by number.
    fields: Vec<(u32, FieldKind)>,
}

/// Type index by full name. The crate bans `HashMap` so that no output follows its random
/// iteration order; this one is only ever looked up, never iterated, and is looked up for
/// every sub-message scanned, where a hash beats comparing long `envoy.config...` names.
#[allow(clippy::disallowed_types)]
type ByName = std::collections::HashMap<String, usize>;

/// Every message type of the descriptor pool, for the scan.
struct TypeTable {
    types: Vec<TypeInfo>,
    by_name: ByName,
}

static TYPES: LazyLock<TypeTable> = LazyLock::new(|| TypeTable::new(descriptor_pool()));

impl TypeTable {
    fn new(pool: &prost_reflect::DescriptorPool) -> TypeTable {
        let by_name: ByName = pool
            .all_messages()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_string(), i))
            .collect();
        let mut types: Vec<TypeInfo> = Vec::with_capacity(by_name.len());
        // parents[t]: the types with a field of type t (for the reachability below).
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); by_name.len()];
        for (i, message) in pool.all_messages().enumerate() {
            let mut info = TypeInfo::default();
            for field in message.fields() {
                let Kind::Message(m) = field.kind() else {
                    continue;
                };
                let Some(&t) = by_name.get(m.full_name()) else {
                    continue;
                };
                let kind = if field.is_map() {
                    FieldKind::Map(t)
                } else if m.full_name() == "google.protobuf.Any" {
                    FieldKind::Any
                } else {
                    FieldKind::Message(t)
                };
                info.may_hold_maps |= matches!(kind, FieldKind::Map(_) | FieldKind::Any);
                parents[t].push(i);
                info.fields.push((field.number(), kind));
            }
            info.fields.sort_by_key(|(number, _)| *number);
            types.push(info);
        }
        // Whatever holds a type that may hold maps may hold maps too.
        let mut pending: Vec<usize> = (0..types.len())
            .filter(|&t| types[t].may_hold_maps)
            .collect();
        while let Some(t) = pending.pop() {
            for &parent in &parents[t] {
                if !types[parent].may_hold_maps {
                    types[parent].may_hold_maps = true;
                    pending.push(parent);
                }
            }
        }
        TypeTable { types, by_name }
    }

    fn field(&self, t: usize, number: u32) -> FieldKind {
        let fields = &self.types[t].fields;
        match fields.binary_search_by_key(&number, |(n, _)| *n) {
            Ok(i) => fields[i].1,
            Err(_) => FieldKind::Other,
        }
    }

    /// Would [`canonicalize`] change `buf`, the encoding of a message of type `t`? Only when a
    /// map field, here or in a sub-message or an `Any` payload, has two or more entries in a
    /// row: everything else it re-encodes exactly as prost wrote it. Anything unexpected
    /// (bytes that do not parse, an `Any` not in prost's shape) also says yes, so that
    /// `canonicalize` decides.
    fn needs_walk(&self, t: usize, mut buf: &[u8]) -> bool {
        if !self.types[t].may_hold_maps {
            return false;
        }
        let mut previous: Option<u32> = None;
        while buf.has_remaining() {
            let Ok((tag, wire_type)) = decode_key(&mut buf) else {
                return true;
            };
            match wire_type {
                WireType::Varint => {
                    if decode_varint(&mut buf).is_err() {
                        return true;
                    }
                }
                WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                    let n = if wire_type == WireType::SixtyFourBit {
                        8
                    } else {
                        4
                    };
                    let Some((_, rest)) = split(buf, n) else {
                        return true;
                    };
                    buf = rest;
                }
                WireType::LengthDelimited => {
                    let Some((payload, rest)) = delimited(buf) else {
                        return true;
                    };
                    buf = rest;
                    let changes = match self.field(t, tag) {
                        FieldKind::Map(entry) => {
                            previous == Some(tag) || self.needs_walk(entry, payload)
                        }
                        FieldKind::Message(m) => self.needs_walk(m, payload),
                        FieldKind::Any => self.any_needs_walk(payload),
                        FieldKind::Other => false,
                    };
                    if changes {
                        return true;
                    }
                }
                WireType::StartGroup | WireType::EndGroup => return true,
            }
            previous = Some(tag);
        }
        false
    }

    /// [`Self::needs_walk`] for a `google.protobuf.Any`: its payload is scanned as the type its
    /// `type_url` names. `canonicalize` rewrites an `Any` as a non-empty `type_url` (1) then a
    /// non-empty `value` (2), as prost writes it; any other shape says yes.
    fn any_needs_walk(&self, mut buf: &[u8]) -> bool {
        let mut type_url: Option<&[u8]> = None;
        let mut value: Option<&[u8]> = None;
        while buf.has_remaining() {
            let Ok((tag, WireType::LengthDelimited)) = decode_key(&mut buf) else {
                return true;
            };
            let Some((payload, rest)) = delimited(buf) else {
                return true;
            };
            buf = rest;
            match tag {
                1 if type_url.is_none() && value.is_none() && !payload.is_empty() => {
                    type_url = Some(payload);
                }
                2 if value.is_none() && !payload.is_empty() => value = Some(payload),
                _ => return true,
            }
        }
        // A missing or unknown type: `canonicalize` keeps such a payload as it is, so the
        // answer could be no; yes keeps [`is_plain`] simple (such an `Any` cannot be printed
        // either). Never the case for what the translator builds.
        let Some(type_url) = type_url.and_then(|u| std::str::from_utf8(u).ok()) else {
            return true;
        };
        let type_name = type_url.rsplit('/').next().unwrap_or_default();
        let Some(&t) = self.by_name.get(type_name) else {
            return true;
        };
        value.is_some_and(|value| self.needs_walk(t, value))
    }
}

/// Is `bytes`, prost's encoding of a message named `full_name`, plain: every map field (at
/// any depth, in `Any` payloads too) has at most one entry, and every `Any` payload is of a
/// type the descriptor set knows? Then the bytes are canonical as they are, and printing
/// them needs no map-key sorting nor can it fail on an unknown type.
pub(crate) fn is_plain(full_name: &str, bytes: &[u8]) -> bool {
    let table = &*TYPES;
    table
        .by_name
        .get(full_name)
        .is_some_and(|&t| !table.needs_walk(t, bytes))
}

/// A length-delimited payload at the start of `buf`, and the rest.
fn delimited(mut buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
    split(buf, len)
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
    fn only_a_map_with_two_entries_needs_the_walk() {
        let table = &*TYPES;
        let t = table.by_name["envoy.config.route.v3.RouteConfiguration"];
        let one = config(&["only"]).encode_to_vec();
        let two = config(&["a", "b"]).encode_to_vec();
        assert!(!table.needs_walk(t, &one));
        assert!(table.needs_walk(t, &two));
        // Types that cannot reach a map are never scanned.
        let duration = table.by_name["google.protobuf.Duration"];
        assert!(!table.types[duration].may_hold_maps);
        // An Any can hold anything; so can what holds one.
        let filter = table.by_name["envoy.config.listener.v3.Filter"];
        assert!(table.types[filter].may_hold_maps);
        // Bytes that do not parse are left to the walk (which keeps them as they are).
        assert!(table.needs_walk(t, &[0x0a, 0x05, b'x']));
    }

    #[test]
    fn a_two_entry_map_inside_an_any_is_found() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let mut options = HashMap::new();
        for name in ["x", "y"] {
            options.insert(
                name.to_string(),
                envoy_types::util::pack_any(config(&["p", "q"])),
            );
        }
        let cluster = Cluster {
            name: "c".into(),
            typed_extension_protocol_options: options,
            ..Default::default()
        };
        let table = &*TYPES;
        let t = table.by_name["envoy.config.cluster.v3.Cluster"];
        assert!(table.needs_walk(t, &cluster.encode_to_vec()));
        let reference = encode(&cluster);
        let mut single = cluster.clone();
        single.typed_extension_protocol_options.remove("y");
        // One entry outside, but two inside the Any's payload.
        assert!(table.needs_walk(t, &single.encode_to_vec()));
        for _ in 0..5 {
            let mut again = cluster.clone();
            again.typed_extension_protocol_options = cluster
                .typed_extension_protocol_options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(encode(&again), reference);
        }
    }

    #[test]
    fn messages_without_maps_are_unchanged() {
        let mut c = config(&["only"]);
        c.virtual_hosts[0].routes[0].typed_per_filter_config.clear();
        assert_eq!(encode(&c), c.encode_to_vec());
    }
}
