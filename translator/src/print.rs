//! Envoy resources → canonical protobuf JSON (what Envoy's config_dump shows and its YAML
//! loader accepts), as JSON or YAML, via the descriptor set in `proto/`.
//!
//! Field names are the proto names (`request_mirror_policies`, snake_case, like config_dump),
//! fields at their default value are left out, `google.protobuf.Any` is expanded with `@type`,
//! well-known types use their JSON forms (`"0s"` for a zero `Duration` that is set), enums print
//! by name (`"MILLION"`), and 64-bit integers are strings, as the proto3 JSON mapping says.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use crate::diag::Diagnostic;
use crate::Resources;

/// The descriptor set of every message envoy-types 0.7.7 generates (see `proto/README.md`).
static DESCRIPTOR_SET: &[u8] = include_bytes!("../../proto/envoy-types-0.7.7.descriptor.bin");

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // Invariant: the file is a committed build input, decoded by the tests in this module
    // (`descriptor_pool_has_what_we_print`); it cannot differ at run time.
    DescriptorPool::decode(DESCRIPTOR_SET).expect("proto/envoy-types-0.7.7.descriptor.bin decodes")
});

/// The Envoy descriptor pool (Envoy's data-plane API, its dependencies and the
/// `google.protobuf` well-known types).
pub fn descriptor_pool() -> &'static DescriptorPool {
    &POOL
}

/// Why a message could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    #[error("message type {0} is not in the Envoy descriptor set")]
    UnknownMessage(String),
    #[error("cannot decode {type_name} with its descriptor: {source}")]
    Decode {
        type_name: String,
        #[source]
        source: prost::DecodeError,
    },
    /// Usually an `Any` whose `type_url` names a type the descriptor set does not have.
    #[error("cannot print {type_name} as JSON: {source}")]
    Serialize {
        type_name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

/// One message as canonical proto JSON with proto field names.
pub fn to_json<M: Message + Name>(msg: &M) -> Result<Value, PrintError> {
    let type_name = M::full_name();
    let descriptor = descriptor_pool()
        .get_message_by_name(&type_name)
        .ok_or_else(|| PrintError::UnknownMessage(type_name.clone()))?;
    let dynamic = DynamicMessage::decode(descriptor.clone(), msg.encode_to_vec().as_slice())
        .map_err(|source| PrintError::Decode {
            type_name: type_name.clone(),
            source,
        })?;
    let mut json = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(|source| PrintError::Serialize { type_name, source })?;
    sort_map_keys(&descriptor, &mut json);
    Ok(json)
}

/// prost-reflect prints `map<...>` fields (and `google.protobuf.Struct`s) in hash order; sort
/// their keys so the same resource always prints the same (goldens compare bytes). Regular
/// fields keep the proto order.
fn sort_map_keys(descriptor: &prost_reflect::MessageDescriptor, value: &mut Value) {
    use prost_reflect::Kind;
    let Value::Object(object) = value else {
        return;
    };
    match descriptor.full_name() {
        "google.protobuf.Any" => {
            let inner = object
                .get("@type")
                .and_then(Value::as_str)
                .and_then(|url| url.rsplit('/').next())
                .and_then(|name| descriptor_pool().get_message_by_name(name));
            if let Some(inner) = inner {
                sort_map_keys(&inner, value);
            }
            return;
        }
        "google.protobuf.Struct" | "google.protobuf.Value" => {
            sort_all_keys(value);
            return;
        }
        _ => {}
    }
    for field in descriptor.fields() {
        let Some(child) = object.get_mut(field.name()) else {
            continue;
        };
        if field.is_map() {
            if let Value::Object(entries) = child {
                entries.sort_keys();
            }
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                _ => continue,
            };
            if let (Kind::Message(m), Value::Object(entries)) = (value_kind, child) {
                for v in entries.values_mut() {
                    sort_map_keys(&m, v);
                }
            }
        } else if let Kind::Message(m) = field.kind() {
            match child {
                Value::Array(items) => items.iter_mut().for_each(|v| sort_map_keys(&m, v)),
                v => sort_map_keys(&m, v),
            }
        }
    }
}

fn sort_all_keys(value: &mut Value) {
    match value {
        Value::Object(object) => {
            object.sort_keys();
            object.values_mut().for_each(sort_all_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_all_keys),
        _ => {}
    }
}

/// One list item: the message's JSON, or what went wrong.
fn item_to_json<M: Message + Name>(msg: &M) -> Value {
    match to_json(msg) {
        Ok(v) => v,
        // Every type xds builds is in the descriptor set (checked by the tests below);
        // should one ever be missing, say so in the output instead of dropping it.
        Err(e) => serde_json::json!({ "@error": e.to_string() }),
    }
}

fn list_to_json<M: Message + Name>(items: &[M]) -> Value {
    Value::Array(items.iter().map(item_to_json).collect())
}

/// All resources, grouped by type in xDS order, each list in its given order:
/// `{"listeners": [...], "routes": [...], "clusters": [...], "endpoints": [...]}`.
pub fn resources_to_json(resources: &Resources) -> Value {
    let mut map = Map::new();
    map.insert("listeners".into(), list_to_json(&resources.listeners));
    map.insert("routes".into(), list_to_json(&resources.routes));
    map.insert("clusters".into(), list_to_json(&resources.clusters));
    map.insert("endpoints".into(), list_to_json(&resources.endpoints));
    Value::Object(map)
}

/// A list of messages that serializes like [`list_to_json`]'s array, one message at a time.
struct StreamedList<'a, M>(&'a [M]);

impl<M: Message + Name> serde::Serialize for StreamedList<'_, M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for msg in self.0 {
            seq.serialize_element(&StreamedItem(msg))?;
        }
        seq.end()
    }
}

/// One message, serialized like its [`item_to_json`] value. A plain message
/// ([`crate::canonical::is_plain`]: no map with two entries, no unknown `Any` type) is
/// written straight from its dynamic form: [`sort_map_keys`] would change nothing and it
/// cannot fail. Otherwise its JSON tree is built, sorted and written. (The route
/// configuration of a large mesh is a single message: its tree was most of the printing's
/// time and memory.)
struct StreamedItem<'a, M>(&'a M);

impl<M: Message + Name> serde::Serialize for StreamedItem<'_, M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.encode_to_vec();
        let type_name = M::full_name();
        let plain = crate::canonical::is_plain(&type_name, &bytes)
            .then(|| descriptor_pool().get_message_by_name(&type_name))
            .flatten();
        match plain {
            Some(descriptor) => serialize_plain(descriptor, &bytes, serializer),
            None => serde::Serialize::serialize(&item_to_json(self.0), serializer),
        }
    }
}

/// A plain message (see [`StreamedItem`]) from its encoding, with its repeated message
/// fields written element by element, each element decoded on its own: a mesh's route
/// configuration is one message with a virtual host per service, and decoding it whole took
/// more memory than the rest of the translation. The same serializer calls as serializing the
/// whole decoded message (prost-reflect writes the present fields in field-number order, a
/// repeated message field as a sequence of its elements, each like a message on its own).
fn serialize_plain<S: serde::Serializer>(
    descriptor: MessageDescriptor,
    bytes: &[u8],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::{Error, SerializeMap};
    let whole = |serializer: S| match DynamicMessage::decode(descriptor.clone(), bytes) {
        Ok(dynamic) => dynamic.serialize_with_options(serializer, &options()),
        Err(e) => Err(S::Error::custom(e)),
    };
    // Well-known types have JSON forms of their own.
    if descriptor.full_name().starts_with("google.protobuf.") {
        return whole(serializer);
    }
    let Some((lists, rest)) = split_lists(&descriptor, bytes) else {
        return whole(serializer);
    };
    if lists.is_empty() {
        return whole(serializer);
    }
    // Everything but the lists, decoded and turned into JSON (small), in field order.
    let rest = DynamicMessage::decode(descriptor.clone(), rest.as_slice())
        .map_err(S::Error::custom)?
        .serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(S::Error::custom)?;
    let Value::Object(rest) = rest else {
        return whole(serializer);
    };
    let mut map = serializer.serialize_map(None)?;
    for field in descriptor.fields() {
        match (lists.get(&field.number()), field.kind()) {
            (Some(elements), Kind::Message(element)) => {
                map.serialize_entry(field.name(), &Elements { element, elements })?;
            }
            _ => {
                if let Some(value) = rest.get(field.name()) {
                    map.serialize_entry(field.name(), value)?;
                }
            }
        }
    }
    map.end()
}

/// Field number → the encodings of the elements of a repeated message field.
type Lists<'b> = BTreeMap<u32, Vec<&'b [u8]>>;

/// The repeated message fields of `bytes` and the encoding of everything else. `None` for
/// bytes it does not expect (groups, bad lengths).
fn split_lists<'b>(
    descriptor: &MessageDescriptor,
    bytes: &'b [u8],
) -> Option<(Lists<'b>, Vec<u8>)> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut lists = Lists::new();
    let mut rest = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = bytes.len() - buf.len();
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        let payload = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                None
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                buf = buf.get(n..)?;
                None
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let payload = buf.get(..len)?;
                buf = &buf[len..];
                Some(payload)
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        let list = descriptor
            .get_field(tag)
            .filter(|f| f.is_list() && matches!(f.kind(), Kind::Message(_)));
        match (list, payload) {
            (Some(_), Some(payload)) => lists.entry(tag).or_default().push(payload),
            _ => rest.extend_from_slice(&bytes[start..bytes.len() - buf.len()]),
        }
    }
    Some((lists, rest))
}

/// The elements of a repeated message field, each decoded when written.
struct Elements<'a> {
    element: MessageDescriptor,
    elements: &'a [&'a [u8]],
}

impl serde::Serialize for Elements<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = serializer.serialize_seq(Some(self.elements.len()))?;
        for bytes in self.elements {
            let element =
                DynamicMessage::decode(self.element.clone(), *bytes).map_err(S::Error::custom)?;
            seq.serialize_element(&Plain(&element))?;
        }
        seq.end()
    }
}

/// A decoded message, serialized as prost-reflect serializes it (with [`options`]).
struct Plain<'a>(&'a DynamicMessage);

impl serde::Serialize for Plain<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &options())
    }
}

/// [`resources_to_json`]'s object, streamed: the same serializer calls (so the same text),
/// without the whole output's JSON tree.
struct StreamedResources<'a>(&'a Resources);

impl serde::Serialize for StreamedResources<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("listeners", &StreamedList(&r.listeners))?;
        map.serialize_entry("routes", &StreamedList(&r.routes))?;
        map.serialize_entry("clusters", &StreamedList(&r.clusters))?;
        map.serialize_entry("endpoints", &StreamedList(&r.endpoints))?;
        map.end()
    }
}

/// Write all resources as pretty JSON: byte for byte
/// `to_json_string(&resources_to_json(resources))`, without building the JSON tree (at
/// 10,000 services that tree is several times the size of the resources).
pub fn write_resources_json<W: std::io::Write>(
    resources: &Resources,
    writer: W,
) -> std::io::Result<()> {
    let mut writer = writer;
    serde_json::to_writer_pretty(&mut writer, &StreamedResources(resources))
        .map_err(std::io::Error::other)?;
    writer.write_all(b"\n")
}

/// Write all resources as block-style YAML: byte for byte
/// `to_yaml_string(&resources_to_json(resources))`, without building the JSON tree.
pub fn write_resources_yaml<W: std::io::Write>(
    resources: &Resources,
    writer: W,
) -> std::io::Result<()> {
    serde_yaml::to_writer(writer, &StreamedResources(resources)).map_err(std::io::Error::other)
}

/// Block-style YAML (ends with a newline).
pub fn to_yaml_string(value: &Value) -> String {
    match serde_yaml::to_string(value) {
        Ok(text) => text,
        // A JSON value always has string keys, so this does not happen; JSON is YAML anyway.
        Err(_) => to_json_string(value),
    }
}

/// Pretty JSON, two-space indented, ending with a newline.
pub fn to_json_string(value: &Value) -> String {
    // Serializing a `serde_json::Value` cannot fail (its map keys are strings).
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// Diagnostics as a JSON array of objects: `severity`, `code` (`IST0101`), `code_name`
/// (`referenced-resource-not-found`), `location` {file, line, column}, `resource`
/// {kind, namespace, name}, `field`, `value`, `message`, `hint` (absent when unknown).
pub fn diagnostics_to_json(diagnostics: &[Diagnostic]) -> Value {
    Value::Array(
        diagnostics
            .iter()
            .map(|d| {
                let mut value = serde_json::to_value(d).unwrap_or_else(|e| {
                    serde_json::json!({ "severity": d.severity, "message": d.message, "@error": e.to_string() })
                });
                if let Value::Object(map) = &mut value {
                    map.insert("code_name".into(), Value::String(d.code.name().into()));
                }
                value
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, RuntimeFractionalPercent, SocketAddress,
    };
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::config::route::v3::{
        route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
        VirtualHost,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager, HttpConnectionManager, Rds,
    };
    use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use serde_json::json;

    #[test]
    fn descriptor_pool_has_what_we_print() {
        let pool = descriptor_pool();
        for name in [
            "google.protobuf.Any",
            "google.protobuf.Duration",
            "google.protobuf.UInt32Value",
            "google.protobuf.BoolValue",
            "google.protobuf.Struct",
            "envoy.config.listener.v3.Listener",
            "envoy.config.route.v3.RouteConfiguration",
            "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
            "envoy.config.cluster.v3.Cluster",
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            "envoy.extensions.filters.http.cors.v3.Cors",
            "envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
            "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        ] {
            assert!(
                pool.get_message_by_name(name).is_some(),
                "{name} missing from the descriptor set"
            );
        }
    }

    fn hcm_any() -> envoy_types::pb::google::protobuf::Any {
        envoy_types::util::pack_any(HttpConnectionManager {
            stat_prefix: "outbound_0.0.0.0_8080".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: "8080".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    #[test]
    fn listener_prints_with_any_expanded() {
        let listener = Listener {
            name: "0.0.0.0_8080".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(hcm_any())),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let value = to_json(&listener).expect("a Listener prints");
        assert_eq!(
            value,
            json!({
                "name": "0.0.0.0_8080",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "outbound_0.0.0.0_8080",
                            "rds": {"route_config_name": "8080"}
                        }
                    }]
                }]
            })
        );
    }

    fn mirror_route_config() -> RouteConfiguration {
        let mirror = route_action::RequestMirrorPolicy {
            cluster: "outbound|80|v3|calcbackendsvc.challengeistio.svc.cluster.local".into(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 500_000,
                    denominator: fractional_percent::DenominatorType::Million as i32,
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        };
        RouteConfiguration {
            name: "80".into(),
            validate_clusters: Some(Default::default()),
            virtual_hosts: vec![VirtualHost {
                name: "calcbackendsvc.challengeistio.svc.cluster.local:80".into(),
                domains: vec!["calcbackendsvc".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local".into(),
                        )),
                        timeout: Some(Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        request_mirror_policies: vec![mirror],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn route_prints_zero_duration_and_enum_names() {
        let value = to_json(&mirror_route_config()).expect("a RouteConfiguration prints");
        assert_eq!(
            value,
            json!({
                "name": "80",
                // A BoolValue that is set to false is a present message: kept, as `false`.
                "validate_clusters": false,
                "virtual_hosts": [{
                    "name": "calcbackendsvc.challengeistio.svc.cluster.local:80",
                    "domains": ["calcbackendsvc"],
                    "routes": [{
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local",
                            // Set but all-default: Envoy needs it present (0s disables the timeout).
                            "timeout": "0s",
                            "request_mirror_policies": [{
                                "cluster": "outbound|80|v3|calcbackendsvc.challengeistio.svc.cluster.local",
                                "runtime_fraction": {
                                    "default_value": {"numerator": 500000, "denominator": "MILLION"}
                                }
                            }]
                        }
                    }]
                }]
            })
        );
        // The YAML form says the same and keeps `0s` a string.
        let yaml = to_yaml_string(&value);
        assert!(yaml.contains("timeout: 0s\n"), "{yaml}");
        assert!(yaml.contains("denominator: MILLION\n"), "{yaml}");
        let back: Value = serde_yaml::from_str(&yaml).expect("printed YAML parses");
        assert_eq!(back, value);
    }

    #[test]
    fn cluster_prints_64_bit_and_wrapper_fields() {
        let cluster = Cluster {
            name: "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local"
                    .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = to_json(&cluster).expect("a Cluster prints");
        assert_eq!(
            value,
            json!({
                "name": "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local",
                "type": "EDS",
                "connect_timeout": "10s",
                "per_connection_buffer_limit_bytes": 32768,
                "eds_cluster_config": {
                    "service_name": "outbound|80|v1|calcbackendsvc.challengeistio.svc.cluster.local"
                }
            })
        );
    }

    #[test]
    fn resources_group_by_type_in_order() {
        let resources = Resources {
            listeners: vec![],
            routes: vec![
                RouteConfiguration {
                    name: "9080".into(),
                    ..Default::default()
                },
                RouteConfiguration {
                    name: "80".into(),
                    ..Default::default()
                },
            ],
            clusters: vec![],
            endpoints: vec![],
        };
        let value = resources_to_json(&resources);
        assert_eq!(
            value,
            json!({
                "listeners": [],
                "routes": [{"name": "9080"}, {"name": "80"}],
                "clusters": [],
                "endpoints": []
            })
        );
        let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["listeners", "routes", "clusters", "endpoints"]);
        let yaml = to_yaml_string(&value);
        assert!(
            yaml.starts_with("listeners: []\nroutes:\n- name: '9080'\n"),
            "{yaml}"
        );
        assert!(to_json_string(&value).ends_with("}\n"));
    }

    #[test]
    fn unknown_any_type_is_an_error() {
        let route = RouteConfiguration {
            name: "x".into(),
            typed_per_filter_config: [(
                "f".to_string(),
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/not.a.Type".into(),
                    value: vec![],
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let err = to_json(&route).expect_err("the Any cannot be expanded");
        assert!(matches!(err, PrintError::Serialize { .. }), "{err}");
        let listed = list_to_json(std::slice::from_ref(&route));
        assert!(listed[0]["@error"]
            .as_str()
            .is_some_and(|e| e.contains("RouteConfiguration")));
        // The streamed printers say the same, and go on with the next resource.
        let resources = Resources {
            routes: vec![route, RouteConfiguration::default()],
            ..Default::default()
        };
        let mut json = Vec::new();
        write_resources_json(&resources, &mut json).expect("writing to memory");
        let expected = to_json_string(&resources_to_json(&resources));
        assert_eq!(String::from_utf8(json).expect("UTF-8"), expected);
        assert!(expected.contains("@error"), "{expected}");
        let mut yaml = Vec::new();
        write_resources_yaml(&resources, &mut yaml).expect("writing to memory");
        let expected = to_yaml_string(&resources_to_json(&resources));
        assert_eq!(String::from_utf8(yaml).expect("UTF-8"), expected);
    }

    #[test]
    fn diagnostics_print_with_code_ids_and_names() {
        use crate::diag::{Code, Location};
        let d = Diagnostic::error(Code::UnknownField, "unknown field \"subest\"")
            .at(Some(Location {
                file: "vs.yaml".into(),
                line: 3,
                column: 5,
            }))
            .field("spec.http[0].route[0].destination.subest")
            .hint("did you mean \"subset\"?");
        assert_eq!(
            diagnostics_to_json(&[d]),
            json!([{
                "severity": "error",
                "code": "SP0002",
                "code_name": "unknown-field",
                "location": {"file": "vs.yaml", "line": 3, "column": 5},
                "field": "spec.http[0].route[0].destination.subest",
                "message": "unknown field \"subest\"",
                "hint": "did you mean \"subset\"?"
            }])
        );
        assert_eq!(diagnostics_to_json(&[]), json!([]));
    }

    /// Guards `proto/envoy-types-0.7.7.descriptor.bin` against drifting from the envoy-types
    /// structs: a field the struct sets must be seen by name through the descriptor.
    #[test]
    fn descriptor_matches_envoy_types_structs() {
        let policy = route_action::RequestMirrorPolicy {
            cluster: "c".into(),
            disable_shadow_host_suffix_append: true,
            ..Default::default()
        };
        let desc = descriptor_pool()
            .get_message_by_name(&route_action::RequestMirrorPolicy::full_name())
            .expect("RequestMirrorPolicy is in the descriptor set");
        let dynamic = DynamicMessage::decode(desc, policy.encode_to_vec().as_slice())
            .expect("the struct's bytes decode with the descriptor");
        assert_eq!(
            dynamic
                .get_field_by_name("disable_shadow_host_suffix_append")
                .map(|v| v.as_bool()),
            Some(Some(true))
        );
        assert_eq!(
            dynamic.unknown_fields().count(),
            0,
            "fields the descriptor does not know"
        );

        let hcm = HttpConnectionManager {
            stat_prefix: "s".into(),
            codec_type: http_connection_manager::CodecType::Auto as i32,
            normalize_path: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            ..Default::default()
        };
        let desc = descriptor_pool()
            .get_message_by_name(&HttpConnectionManager::full_name())
            .expect("HttpConnectionManager is in the descriptor set");
        let dynamic = DynamicMessage::decode(desc, hcm.encode_to_vec().as_slice())
            .expect("the struct's bytes decode with the descriptor");
        assert!(dynamic.has_field_by_name("normalize_path"));
        assert_eq!(dynamic.unknown_fields().count(), 0);

        // And the descriptor's view round-trips to the same struct.
        let bytes = dynamic.encode_to_vec();
        assert_eq!(
            HttpConnectionManager::decode(bytes.as_slice()).expect("round trip"),
            hcm
        );
    }
}
