//! The descriptors the forwarder's reflective field check needs, and no more.
//!
//! The vendored descriptor set (`proto/`) covers every message of the Envoy API; decoded whole
//! into a `DescriptorPool` it takes about 50 MB, most of a forwarder's memory. The check only
//! ever looks up the four resource types and the typed configs it supports
//! ([`fields::SUPPORTED_ANY`](super::fields)), so this pool holds just the files those are
//! defined in and their imports, decoded one file at a time (the whole set is never decoded at
//! once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use prost_reflect::DescriptorPool;

/// The same committed build input as the translator's (`proto/README.md`).
static DESCRIPTOR_SET: &[u8] = include_bytes!("../../../proto/envoy-types-0.7.7.descriptor.bin");

/// The message types looked up by name: the four resource types and the supported typed
/// configs.
fn roots() -> Vec<&'static str> {
    let mut r = vec![
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
    ];
    r.extend_from_slice(super::fields::SUPPORTED_ANY);
    r
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // Invariant: the descriptor set is a committed build input and the tests below build this
    // pool from it and look every root up; it cannot differ at run time.
    build(DESCRIPTOR_SET, &roots()).expect("the vendored envoy descriptor set has every root")
});

/// The forwarder's pool (built on first use).
pub(super) fn pool() -> &'static DescriptorPool {
    &POOL
}

/// What is needed of a file to find the roots and the imports.
#[derive(Clone, PartialEq, Message)]
struct FileHead {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<MessageHead>,
}

#[derive(Clone, PartialEq, Message)]
struct MessageHead {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// The encoded `FileDescriptorProto`s of a `FileDescriptorSet` (field 1, repeated), as slices.
fn files(mut set: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !set.is_empty() {
        let (tag, wire) = decode_key(&mut set).map_err(|e| e.to_string())?;
        if tag != 1 || wire != WireType::LengthDelimited {
            return Err(format!(
                "unexpected field {tag} ({wire:?}) in a FileDescriptorSet"
            ));
        }
        let len = usize::try_from(decode_varint(&mut set).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if len > set.len() {
            return Err("truncated FileDescriptorSet".to_string());
        }
        let (file, rest) = set.split_at(len);
        out.push(file);
        set = rest;
    }
    Ok(out)
}

/// A pool with the files defining `roots` and everything they import, in import order.
fn build(set: &[u8], roots: &[&str]) -> Result<DescriptorPool, String> {
    let mut by_name: BTreeMap<String, (&[u8], Vec<String>)> = BTreeMap::new();
    let mut defines: BTreeMap<String, String> = BTreeMap::new();
    for bytes in files(set)? {
        let head = FileHead::decode(bytes).map_err(|e| e.to_string())?;
        let name = head.name.unwrap_or_default();
        let package = head.package.unwrap_or_default();
        for m in head.message_type {
            let m = m.name.unwrap_or_default();
            let full = if package.is_empty() {
                m
            } else {
                format!("{package}.{m}")
            };
            defines.insert(full, name.clone());
        }
        by_name.insert(name, (bytes, head.dependency));
    }
    let mut pool = DescriptorPool::new();
    let mut added: BTreeSet<String> = BTreeSet::new();
    for root in roots {
        let file = defines
            .get(*root)
            .ok_or_else(|| format!("{root} is not in the descriptor set"))?;
        add(file, &by_name, &mut pool, &mut added, &mut BTreeSet::new())?;
    }
    Ok(pool)
}

/// Add `file` after its imports (depth first).
fn add(
    file: &str,
    by_name: &BTreeMap<String, (&[u8], Vec<String>)>,
    pool: &mut DescriptorPool,
    added: &mut BTreeSet<String>,
    visiting: &mut BTreeSet<String>,
) -> Result<(), String> {
    if added.contains(file) || !visiting.insert(file.to_string()) {
        return Ok(());
    }
    let (bytes, deps) = by_name
        .get(file)
        .ok_or_else(|| format!("{file} is imported but not in the descriptor set"))?;
    for d in deps {
        add(d, by_name, pool, added, visiting)?;
    }
    pool.decode_file_descriptor_proto(*bytes)
        .map_err(|e| format!("{file}: {e}"))?;
    added.insert(file.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_has_every_root_and_is_a_fraction_of_the_full_set() {
        let p = pool();
        for r in roots() {
            assert!(p.get_message_by_name(r).is_some(), "{r}");
        }
        let full = shadowplane_translator::print::descriptor_pool();
        let (ours, all) = (p.files().count(), full.files().count());
        assert!(ours * 2 < all, "{ours} of {all} files");
        // Every message the roots reach resolves to the same definition as in the full set.
        for m in p.all_messages() {
            let other = full
                .get_message_by_name(m.full_name())
                .unwrap_or_else(|| panic!("{} only in the pruned pool", m.full_name()));
            assert_eq!(
                m.descriptor_proto(),
                other.descriptor_proto(),
                "{}",
                m.full_name()
            );
        }
    }

    #[test]
    fn a_root_missing_from_the_set_is_an_error() {
        let e = build(DESCRIPTOR_SET, &["envoy.Nope"]).expect_err("no such message");
        assert!(e.contains("envoy.Nope"), "{e}");
        assert!(
            files(&[0x08, 0x01]).is_err(),
            "a varint field 1 is not a file"
        );
    }
}
