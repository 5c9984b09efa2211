//! Response messages that write the snapshot's pre-encoded `Any` bytes straight into the
//! gRPC frame: wire-identical to `DiscoveryResponse` / `DeltaDiscoveryResponse`, without
//! re-encoding or copying each resource into a fresh `Vec` per proxy.
//!
//! The server only ever encodes these; decoding skips every field (clients decode the
//! generated envoy-types messages).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, key_len, skip_field, string, DecodeContext,
    WireType,
};
use prost::DecodeError;

use super::resource::EncodedResource;

fn len_delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_len_delimited(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// Resources at least this large are not copied into a response's frame: the frame is a
/// list of chunks that points at the snapshot's bytes (see [`Chunks`]).
pub const SHARE_AT: usize = 4 * 1024;

/// A message written as a list of byte chunks: small fields copied into buffers of their
/// own, big pre-encoded resources shared with the snapshot. Sending a 2 MB route
/// configuration to a thousand streams then copies nothing per stream.
#[derive(Default)]
pub struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl Chunks {
    /// Start with `prefix` (e.g. the gRPC message header).
    pub fn with_prefix(prefix: &[u8]) -> Chunks {
        Chunks {
            done: Vec::new(),
            current: prefix.to_vec(),
        }
    }

    fn put_shared(&mut self, bytes: &Bytes) {
        if bytes.len() < SHARE_AT {
            self.current.extend_from_slice(bytes);
            return;
        }
        if !self.current.is_empty() {
            self.done
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
        self.done.push(bytes.clone());
    }

    /// The chunks, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        self.done
    }
}

/// A message that can be written as [`Chunks`], byte for byte its protobuf encoding.
pub trait ChunkedMessage: prost::Message {
    fn encode_chunks(&self, out: &mut Chunks);
}

impl ChunkedMessage for SotwWire {
    fn encode_chunks(&self, out: &mut Chunks) {
        let buf = &mut out.current;
        put_str(1, &self.version_info, buf);
        for r in &self.resources {
            let any = r.any_bytes();
            encode_key(2, WireType::LengthDelimited, &mut out.current);
            encode_varint(any.len() as u64, &mut out.current);
            out.put_shared(any);
        }
        let buf = &mut out.current;
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
        if let Some(cp) = &self.control_plane {
            put_len_delimited(6, cp, buf);
        }
    }
}

impl ChunkedMessage for DeltaWire {
    fn encode_chunks(&self, out: &mut Chunks) {
        put_str(1, &self.system_version_info, &mut out.current);
        for r in &self.resources {
            let buf = &mut out.current;
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(envelope_len(r) as u64, buf);
            put_str(1, r.version(), buf);
            let any = r.any_bytes();
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(any.len() as u64, buf);
            out.put_shared(any);
            put_str(3, r.name(), &mut out.current);
        }
        let buf = &mut out.current;
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
        for name in &self.removed_resources {
            string::encode(6, name, buf);
        }
        if let Some(cp) = &self.control_plane {
            put_len_delimited(7, cp, buf);
        }
    }
}

/// `envoy.service.discovery.v3.DiscoveryResponse`, with pre-encoded resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SotwWire {
    /// Field 1.
    pub version_info: String,
    /// Field 2: each an encoded `google.protobuf.Any`.
    pub resources: Vec<Arc<EncodedResource>>,
    /// Field 4.
    pub type_url: String,
    /// Field 5.
    pub nonce: String,
    /// Field 6: an encoded `envoy.config.core.v3.ControlPlane`.
    pub control_plane: Option<Bytes>,
}

impl prost::Message for SotwWire {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.version_info, buf);
        for r in &self.resources {
            put_len_delimited(2, r.any_bytes(), buf);
        }
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
        if let Some(cp) = &self.control_plane {
            put_len_delimited(6, cp, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| len_delimited_len(2, r.any_bytes().len()))
                .sum::<usize>()
            + str_len(4, &self.type_url)
            + str_len(5, &self.nonce)
            + self
                .control_plane
                .as_ref()
                .map_or(0, |cp| len_delimited_len(6, cp.len()))
    }

    fn clear(&mut self) {
        *self = SotwWire::default();
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`, with pre-encoded resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeltaWire {
    /// Field 1.
    pub system_version_info: String,
    /// Field 2: each written as a `Resource { name, version, resource }` around the
    /// pre-encoded `Any`.
    pub resources: Vec<Arc<EncodedResource>>,
    /// Field 4.
    pub type_url: String,
    /// Field 6.
    pub removed_resources: Vec<String>,
    /// Field 5.
    pub nonce: String,
    /// Field 7: an encoded `envoy.config.core.v3.ControlPlane`.
    pub control_plane: Option<Bytes>,
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_len_delimited(tag, s.as_bytes(), buf);
    }
}

/// Length of `envoy.service.discovery.v3.Resource { version (1), resource (2), name (3) }`.
fn envelope_len(r: &EncodedResource) -> usize {
    str_len(1, r.version()) + len_delimited_len(2, r.any_bytes().len()) + str_len(3, r.name())
}

impl prost::Message for DeltaWire {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.system_version_info, buf);
        for r in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(envelope_len(r) as u64, buf);
            put_str(1, r.version(), buf);
            put_len_delimited(2, r.any_bytes(), buf);
            put_str(3, r.name(), buf);
        }
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty (proto3 keeps every element).
            string::encode(6, name, buf);
        }
        if let Some(cp) = &self.control_plane {
            put_len_delimited(7, cp, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| len_delimited_len(2, envelope_len(r)))
                .sum::<usize>()
            + str_len(4, &self.type_url)
            + str_len(5, &self.nonce)
            + string::encoded_len_repeated(6, &self.removed_resources)
            + self
                .control_plane
                .as_ref()
                .map_or(0, |cp| len_delimited_len(7, cp.len()))
    }

    fn clear(&mut self) {
        *self = DeltaWire::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use prost::Message;

    fn res(name: &str) -> Arc<EncodedResource> {
        Arc::new(EncodedResource::from_message(
            name,
            &Cluster {
                name: name.into(),
                ..Default::default()
            },
        ))
    }

    fn big(name: &str) -> Arc<EncodedResource> {
        Arc::new(EncodedResource::from_message(
            name,
            &Cluster {
                name: name.into(),
                alt_stat_name: "x".repeat(SHARE_AT),
                ..Default::default()
            },
        ))
    }

    fn chunked<M: ChunkedMessage>(m: &M) -> (Vec<u8>, usize) {
        let mut chunks = Chunks::with_prefix(b"hdr");
        m.encode_chunks(&mut chunks);
        let chunks = chunks.finish();
        let n = chunks.len();
        (chunks.concat(), n)
    }

    #[test]
    fn chunks_are_the_encoding_and_share_big_resources() {
        let sotw = SotwWire {
            version_info: "v1".into(),
            resources: vec![res("a"), big("b"), res("c"), big("d")],
            type_url: super::super::resource::CLUSTER.into(),
            nonce: "7".into(),
            control_plane: Some(Bytes::from_static(b"cp")),
        };
        let (bytes, n) = chunked(&sotw);
        assert_eq!(bytes, [b"hdr".to_vec(), sotw.encode_to_vec()].concat());
        // hdr..a+key, b, key+c+key, d, rest
        assert_eq!(n, 5);
        let delta = DeltaWire {
            system_version_info: "v2".into(),
            resources: vec![big("b"), res("a")],
            type_url: super::super::resource::CLUSTER.into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "8".into(),
            control_plane: None,
        };
        let (bytes, n) = chunked(&delta);
        assert_eq!(bytes, [b"hdr".to_vec(), delta.encode_to_vec()].concat());
        assert_eq!(n, 3);
        // Nothing big: one chunk.
        let small = SotwWire {
            resources: vec![res("a")],
            ..Default::default()
        };
        assert_eq!(chunked(&small).1, 1);
    }

    #[test]
    fn sotw_wire_decodes_as_discovery_response() {
        let cp = ControlPlane {
            identifier: "cp".into(),
        };
        let wire = SotwWire {
            version_info: "v1".into(),
            resources: vec![res("a"), res("b")],
            type_url: super::super::resource::CLUSTER.into(),
            nonce: "7".into(),
            control_plane: Some(Bytes::from(cp.encode_to_vec())),
        };
        let bytes = wire.encode_to_vec();
        assert_eq!(bytes.len(), wire.encoded_len());
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).unwrap();
        let expected = DiscoveryResponse {
            version_info: "v1".into(),
            resources: vec![res("a").to_any(), res("b").to_any()],
            type_url: super::super::resource::CLUSTER.into(),
            nonce: "7".into(),
            control_plane: Some(cp),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn delta_wire_decodes_as_delta_discovery_response() {
        let wire = DeltaWire {
            system_version_info: "v2".into(),
            resources: vec![res("a")],
            type_url: super::super::resource::CLUSTER.into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "8".into(),
            control_plane: None,
        };
        let bytes = wire.encode_to_vec();
        assert_eq!(bytes.len(), wire.encoded_len());
        let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
        let a = res("a");
        let expected = DeltaDiscoveryResponse {
            system_version_info: "v2".into(),
            resources: vec![Resource {
                name: "a".into(),
                version: a.version().into(),
                resource: Some(a.to_any()),
                ..Default::default()
            }],
            type_url: super::super::resource::CLUSTER.into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "8".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(envelope_len(&a), decoded.resources[0].encoded_len());
    }
}
