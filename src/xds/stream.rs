//! The task behind every xDS stream: reads requests, watches the group's snapshot and the
//! shutdown signal, and feeds a protocol state machine (SotW or delta) whose responses go to
//! the client through a bounded channel. A slow client only blocks its own task; snapshot
//! updates coalesce in the watch channel meanwhile.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use prost::bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::cache::{Snapshot, SnapshotCache, StreamInfo};
use super::grpc::Inbound;
use super::registry::{ProxyRegistry, StreamHandle, Transport};
use super::ServerOptions;

/// What a stream's task hands to its HTTP response: a message, or the status that ends the
/// stream. Both boxed: the channel allocates a block of 32 slots up front and keeps it for the
/// stream's life, which unboxed (a response and a `Status` are a few hundred bytes) was ~5 KB
/// per stream.
pub(crate) type Outbound<R> = Result<Box<R>, Box<Status>>;

/// What a stream needs from the server.
#[derive(Clone)]
pub(crate) struct Shared {
    pub cache: Arc<SnapshotCache>,
    pub registry: Arc<ProxyRegistry>,
    pub options: Arc<ServerOptions>,
    /// Encoded `ControlPlane` for responses.
    pub control_plane: Option<Bytes>,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Per-stream context shared by both protocols.
pub(crate) struct StreamCtx {
    pub handle: StreamHandle,
    pub options: Arc<ServerOptions>,
    pub control_plane: Option<Bytes>,
    pub node_id: String,
    pub group: String,
    pub ads: bool,
    /// The only type a per-type stream serves.
    pub fixed_type: Option<&'static str>,
    pub transport: Transport,
    nonce: u64,
}

impl StreamCtx {
    pub fn new(
        handle: StreamHandle,
        shared: &Shared,
        transport: Transport,
        fixed_type: Option<&'static str>,
    ) -> Self {
        StreamCtx {
            handle,
            options: shared.options.clone(),
            control_plane: shared.control_plane.clone(),
            node_id: String::new(),
            group: String::new(),
            ads: fixed_type.is_none(),
            fixed_type,
            transport,
            nonce: 0,
        }
    }

    /// How this stream connected, for the cache's grouping.
    pub fn stream_info(&self) -> StreamInfo {
        StreamInfo {
            transport: self.transport,
            type_url: self.fixed_type,
        }
    }

    /// A fresh nonce, unique within the stream and, through the stream id prefix, across
    /// the streams of this server process.
    pub fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}-{}", self.handle.id(), self.nonce)
    }

    /// The type URL a request is about: required on ADS, implied on per-type streams.
    pub fn resolve_type(&self, requested: &str) -> Result<String, Status> {
        match (self.fixed_type, requested.is_empty()) {
            (None, true) => Err(Status::invalid_argument(
                "type_url is required on an aggregated (ADS) stream: set it to the resource type you request",
            )),
            (None, false) => Ok(requested.to_string()),
            (Some(fixed), true) => Ok(fixed.to_string()),
            (Some(fixed), false) if fixed == requested => Ok(fixed.to_string()),
            (Some(fixed), false) => Err(Status::invalid_argument(format!(
                "type_url {requested:?} on a stream that only serves {fixed:?}: use the matching discovery service or ADS"
            ))),
        }
    }
}

/// A protocol state machine driven by [`run`].
pub(crate) trait Protocol: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;

    fn ctx(&mut self) -> &mut StreamCtx;
    fn node(request: &Self::Request) -> Option<&Node>;
    /// Install the snapshot current when the stream learned its group (no responses).
    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>);
    fn on_request(&mut self, request: Self::Request) -> Result<Vec<Self::Response>, Status>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response>;
}

async fn changed(rx: &mut Option<watch::Receiver<Option<Arc<Snapshot>>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Completes when the server shuts down (or is gone).
async fn shut_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

async fn send_all<R>(tx: &mpsc::Sender<Outbound<R>>, responses: Vec<R>) -> bool {
    for r in responses {
        if tx.send(Ok(Box::new(r))).await.is_err() {
            return false;
        }
    }
    true
}

/// Drive one stream until the client goes away, a protocol error, or shutdown.
pub(crate) async fn run<P: Protocol>(
    shared: Shared,
    mut protocol: P,
    mut inbound: Inbound<P::Request>,
    tx: mpsc::Sender<Outbound<P::Response>>,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut snapshots: Option<watch::Receiver<Option<Arc<Snapshot>>>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => {
                let _ = tx
                    .send(Err(Box::new(Status::unavailable(
                        "xds server is shutting down: reconnect",
                    ))))
                    .await;
                break;
            }
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        // A broken or oversized request, or the client went away; in the
                        // latter case nobody reads this.
                        tracing::debug!(node = %protocol.ctx().node_id, %status, "xds stream ended while reading a request");
                        let _ = tx.send(Err(Box::new(status))).await;
                        break;
                    }
                };
                if snapshots.is_none() {
                    // The node is only guaranteed on the first request (G1).
                    let node = P::node(&request).cloned().unwrap_or_default();
                    let ctx = protocol.ctx();
                    let group = shared.cache.group_for_stream(&node, &ctx.stream_info());
                    ctx.node_id = node.id.clone();
                    ctx.handle.set_node(&node, &group);
                    ctx.group = group.clone();
                    let mut rx = shared.cache.watch(&group);
                    let current = rx.borrow_and_update().clone();
                    protocol.set_snapshot(current);
                    snapshots = Some(rx);
                } else if protocol.ctx().node_id.is_empty() {
                    if let Some(node) = P::node(&request) {
                        let node = node.clone();
                        let ctx = protocol.ctx();
                        ctx.node_id = node.id.clone();
                        ctx.handle.set_node(&node, &ctx.group);
                    }
                }
                match protocol.on_request(request) {
                    Ok(responses) => {
                        if !send_all(&tx, responses).await {
                            break;
                        }
                    }
                    Err(status) => {
                        tracing::debug!(node = %protocol.ctx().node_id, %status, "closing xds stream");
                        let _ = tx.send(Err(Box::new(status))).await;
                        break;
                    }
                }
            }
            alive = changed(&mut snapshots) => {
                if !alive {
                    break;
                }
                let current = snapshots.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                if let Some(snapshot) = current {
                    let responses = protocol.on_snapshot(snapshot);
                    if !send_all(&tx, responses).await {
                        break;
                    }
                }
            }
        }
    }
}

/// Open the registry entry for a new stream.
pub(crate) fn open(shared: &Shared, transport: Transport) -> StreamHandle {
    shared.registry.open(transport)
}
