//! gRPC services and [`serve`].
//!
//! The services are hand-written tower services (one per gRPC service name) rather than the
//! envoy-types generated servers, because the generated traits fix the response type to
//! `DiscoveryResponse`, which owns a `Vec<u8>` per resource. Ours stream [`SotwWire`] /
//! [`DeltaWire`], which write the snapshot's pre-encoded bytes straight into the gRPC frame.
//! Requests are the generated `DiscoveryRequest` / `DeltaDiscoveryRequest`, so any xDS client
//! talks to it unchanged. The gRPC framing itself is [`super::grpc`]'s (tonic's codec keeps a
//! per-stream buffer as large as the largest message it ever carried).
//! Accepted connections get `TCP_NODELAY`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use super::cache::SnapshotCache;
use super::delta::DeltaProtocol;
use super::grpc::{self, Inbound};
use super::registry::{ProxyRegistry, Transport};
use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use super::sotw::SotwProtocol;
use super::stream::{self, Outbound, Shared, StreamCtx};
use super::wire::{DeltaWire, SotwWire};
use super::ServerOptions;

/// Errors from [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("xds grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

#[derive(Clone, Copy)]
enum Method {
    Sotw(Option<&'static str>),
    Delta(Option<&'static str>),
}

fn method_for(path: &str) -> Option<Method> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let typed = match service {
        "envoy.service.discovery.v3.AggregatedDiscoveryService" => None,
        "envoy.service.listener.v3.ListenerDiscoveryService" => Some(LISTENER),
        "envoy.service.route.v3.RouteDiscoveryService" => Some(ROUTE),
        "envoy.service.cluster.v3.ClusterDiscoveryService" => Some(CLUSTER),
        "envoy.service.endpoint.v3.EndpointDiscoveryService" => Some(ENDPOINT),
        _ => return None,
    };
    match (typed, method) {
        (None, "StreamAggregatedResources") => Some(Method::Sotw(None)),
        (None, "DeltaAggregatedResources") => Some(Method::Delta(None)),
        (Some(t), m) if m.starts_with("Stream") => Some(Method::Sotw(Some(t))),
        (Some(t), m) if m.starts_with("Delta") => Some(Method::Delta(Some(t))),
        _ => None,
    }
}

fn dispatch(
    shared: Shared,
    req: http::Request<Body>,
) -> BoxFuture<http::Response<Body>, Infallible> {
    let max_request = shared.options.max_request_bytes;
    let buffer = shared.options.stream_buffer.max(1);
    match method_for(req.uri().path()) {
        Some(Method::Sotw(fixed)) => {
            let transport = if fixed.is_some() {
                Transport::Sotw
            } else {
                Transport::SotwAds
            };
            let inbound = Inbound::<DiscoveryRequest>::new(req.into_body(), max_request);
            let (tx, rx) = mpsc::channel::<Outbound<SotwWire>>(buffer);
            let handle = stream::open(&shared, transport);
            let ctx = StreamCtx::new(handle, &shared, transport, fixed);
            tokio::spawn(stream::run(shared, SotwProtocol::new(ctx), inbound, tx));
            Box::pin(async move { Ok(grpc::response(rx)) })
        }
        Some(Method::Delta(fixed)) => {
            let transport = if fixed.is_some() {
                Transport::Delta
            } else {
                Transport::DeltaAds
            };
            let inbound = Inbound::<DeltaDiscoveryRequest>::new(req.into_body(), max_request);
            let (tx, rx) = mpsc::channel::<Outbound<DeltaWire>>(buffer);
            let handle = stream::open(&shared, transport);
            let ctx = StreamCtx::new(handle, &shared, transport, fixed);
            tokio::spawn(stream::run(shared, DeltaProtocol::new(ctx), inbound, tx));
            Box::pin(async move { Ok(grpc::response(rx)) })
        }
        None => {
            let path = req.uri().path().to_string();
            Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "{path} is not served: use the streaming (SotW or delta) methods"
                ))
                .into_http())
            })
        }
    }
}

macro_rules! xds_service {
    ($(#[$doc:meta])* $name:ident, $service:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            shared: Shared,
        }

        impl NamedService for $name {
            const NAME: &'static str = $service;
        }

        impl Service<http::Request<Body>> for $name {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = BoxFuture<Self::Response, Infallible>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<Body>) -> Self::Future {
                dispatch(self.shared.clone(), req)
            }
        }
    };
}

xds_service!(
    /// `envoy.service.discovery.v3.AggregatedDiscoveryService`: SotW and delta ADS.
    AdsService,
    "envoy.service.discovery.v3.AggregatedDiscoveryService"
);
xds_service!(
    /// `envoy.service.listener.v3.ListenerDiscoveryService`: `StreamListeners`, `DeltaListeners`.
    LdsService,
    "envoy.service.listener.v3.ListenerDiscoveryService"
);
xds_service!(
    /// `envoy.service.route.v3.RouteDiscoveryService`: `StreamRoutes`, `DeltaRoutes`.
    RdsService,
    "envoy.service.route.v3.RouteDiscoveryService"
);
xds_service!(
    /// `envoy.service.cluster.v3.ClusterDiscoveryService`: `StreamClusters`, `DeltaClusters`.
    CdsService,
    "envoy.service.cluster.v3.ClusterDiscoveryService"
);
xds_service!(
    /// `envoy.service.endpoint.v3.EndpointDiscoveryService`: `StreamEndpoints`, `DeltaEndpoints`.
    EdsService,
    "envoy.service.endpoint.v3.EndpointDiscoveryService"
);

/// The five discovery services over one cache and registry, for mounting on a tonic server
/// next to other services (CSDS, health). `Fetch*` methods answer `UNIMPLEMENTED`.
pub struct XdsServices {
    pub ads: AdsService,
    pub lds: LdsService,
    pub rds: RdsService,
    pub cds: CdsService,
    pub eds: EdsService,
}

impl XdsServices {
    /// Streams end (with `UNAVAILABLE`) when `shutdown` becomes `true`.
    pub fn new(
        cache: Arc<SnapshotCache>,
        registry: Arc<ProxyRegistry>,
        options: ServerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let control_plane = options.control_plane_id.as_ref().map(|id| {
            Bytes::from(
                ControlPlane {
                    identifier: id.clone(),
                }
                .encode_to_vec(),
            )
        });
        let shared = Shared {
            cache,
            registry,
            options: Arc::new(options),
            control_plane,
            shutdown,
        };
        XdsServices {
            ads: AdsService {
                shared: shared.clone(),
            },
            lds: LdsService {
                shared: shared.clone(),
            },
            rds: RdsService {
                shared: shared.clone(),
            },
            cds: CdsService {
                shared: shared.clone(),
            },
            eds: EdsService { shared },
        }
    }
}

/// Serve xDS on `listener` with [`ServerOptions::default`] until `shutdown` completes.
/// On shutdown every open stream ends with `UNAVAILABLE` (so proxies reconnect elsewhere)
/// and the function returns once connections are closed.
pub async fn serve(
    listener: TcpListener,
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with_options(
        listener,
        cache,
        registry,
        ServerOptions::default(),
        shutdown,
    )
    .await
}

/// Accepted connections with `TCP_NODELAY` set. tonic's `Server::tcp_nodelay` only applies to
/// the listeners it binds itself, not to `serve_with_incoming`; without it every small
/// response (an ACK-driven EDS answer, a one-route delta push) waits for the client's delayed
/// ACK under Nagle's algorithm: ~40 ms per push on Linux.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// [`serve`] with explicit options.
pub async fn serve_with_options(
    listener: TcpListener,
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (down_tx, down_rx) = watch::channel(false);
    let mut builder = tonic::transport::Server::builder();
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = options.max_connection_age_grace {
        builder = builder.max_connection_age_grace(grace);
    }
    let services = XdsServices::new(cache, registry, options, down_rx);
    let local = listener.local_addr().ok();
    tracing::info!(address = ?local, "xds server listening");
    let signal = async move {
        shutdown.await;
        tracing::info!("xds server shutting down: closing streams");
        let _ = down_tx.send(true);
    };
    builder
        .add_service(services.ads)
        .add_service(services.lds)
        .add_service(services.rds)
        .add_service(services.cds)
        .add_service(services.eds)
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn paths_map_to_methods() {
        assert!(matches!(
            method_for(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            ),
            Some(Method::Sotw(None))
        ));
        assert!(matches!(
            method_for("/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints"),
            Some(Method::Delta(Some(ENDPOINT)))
        ));
        assert!(
            method_for("/envoy.service.cluster.v3.ClusterDiscoveryService/FetchClusters").is_none()
        );
        assert!(method_for("/nope/x").is_none());
    }
}
