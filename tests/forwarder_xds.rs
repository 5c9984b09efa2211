//! The forwarder's xDS client against the real xDS server, in-process.
//!
//! - `serve` (the whole pipeline, a watched temp folder with examples/calc) → the client
//!   (delta and SotW) gets the compiled table; a config change gives a new table;
//! - a snapshot with a field the forwarder cannot honour → a NACK that the server's
//!   `ProxyRegistry` shows with the field path, and the previous table stays;
//! - the server stops and comes back on the same port → the client reconnects and gets the
//!   (new) table again.
//!
//! Every wait is bounded: a test fails, never hangs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use shadowplane::app::{start, RunningServer, ServeConfig};
use shadowplane::config_source::Debounce;
use shadowplane::forwarder::compile::type_url;
use shadowplane::forwarder::table::{Action, ClusterTarget, Fraction, ListenerKey, Table};
use shadowplane::forwarder::xds_client::{self, ClientStatus, Protocol, XdsClientConfig};
use shadowplane::xds::{ProxyRegistry, Snapshot, SnapshotCache};
use shadowplane_translator::{translate_files, Options, Resources, SourceFile};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const V1: &str = "outbound|8080|v1|calcbackendsvc.challengeistio.svc.cluster.local";
const V3: &str = "outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/calc")
}

fn copy_into(dir: &Path, files: &[&str]) {
    for f in files {
        let src = examples().join(f);
        let name = f.replace('/', "-");
        std::fs::write(
            dir.join(name),
            std::fs::read_to_string(&src).expect("example file"),
        )
        .expect("write config");
    }
}

const BASELINE: &[&str] = &[
    "service-entry.yaml",
    "baseline/destination-rule.yaml",
    "baseline/virtual-service.yaml",
];
const MIRROR: &[&str] = &[
    "service-entry.yaml",
    "mirror/destination-rule.yaml",
    "mirror/virtual-service.yaml",
];

// ===== a running client =====

struct Client {
    tables: watch::Receiver<Option<Arc<Table>>>,
    status: Arc<ClientStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Client {
    fn start(addr: SocketAddr, node_id: &str, protocol: Protocol) -> Client {
        let (tx, tables) = watch::channel(None);
        let status = Arc::new(ClientStatus::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let mut cfg = XdsClientConfig::new(addr.to_string(), node_id);
        cfg.protocol = protocol;
        cfg.max_backoff = Duration::from_millis(500);
        let st = status.clone();
        let task = tokio::spawn(async move {
            xds_client::run_with_status(
                cfg,
                st,
                move |t| {
                    let _ = tx.send(Some(t));
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("valid server address");
        });
        Client {
            tables,
            status,
            stop: Some(stop),
            task,
        }
    }

    /// Wait until the latest table satisfies `pred`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Table) -> bool) -> Arc<Table> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(t) = self.tables.borrow_and_update().clone() {
                if pred(&t) {
                    return t;
                }
            }
            match tokio::time::timeout_at(deadline, self.tables.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "no table with {what} within {WAIT:?}; client status: {:?}",
                    self.status.view()
                ),
            }
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops")
            .expect("client task");
    }
}

/// The forward action of the catch-all route (the second route of the calc virtual host).
fn catch_all(t: &Table) -> Option<&shadowplane::forwarder::table::Forward> {
    let rc = t.route_configs.get("8080")?;
    let vh = shadowplane::forwarder::matcher::find_virtual_host(rc, "calcbackendsvc:8080")?;
    match &vh.routes.last()?.action {
        Action::Forward(f) => Some(f),
        _ => None,
    }
}

fn mirrors_to_v3(t: &Table) -> bool {
    catch_all(t).is_some_and(|f| {
        f.mirrors.len() == 1
            && f.mirrors[0].cluster == V3
            && f.mirrors[0].fraction == Fraction::ALWAYS
            && matches!(&f.clusters, ClusterTarget::Single(c) if c == V1)
    })
}

fn routes_without_mirror(t: &Table) -> bool {
    catch_all(t).is_some_and(|f| f.mirrors.is_empty())
}

fn has_endpoints(t: &Table) -> bool {
    t.clusters.get(V1).is_some_and(|c| !c.endpoints.is_empty())
}

// ===== serve pipeline =====

async fn start_serve(dir: &Path) -> RunningServer {
    let mut cfg = ServeConfig::new(vec![dir.to_path_buf()]);
    cfg.xds_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    cfg.phase_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(2);
    tokio::time::timeout(WAIT, start(cfg))
        .await
        .expect("serve starts in time")
        .expect("serve starts")
}

async fn table_follows_serve(protocol: Protocol) {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_into(dir.path(), BASELINE);
    let server = start_serve(dir.path()).await;
    let mut client = Client::start(server.xds_addr(), "forwarder-1", protocol);

    let t = client
        .wait_for("the baseline routes and endpoints", |t| {
            routes_without_mirror(t) && has_endpoints(t)
        })
        .await;
    let l = &t.listeners[&ListenerKey::new("0.0.0.0_8080")];
    assert_eq!((l.port, l.route_config_name.as_str()), (8080, "8080"));
    assert!(!t.versions.listeners.is_empty() && !t.versions.clusters.is_empty());

    // Switch to the mirror walkthrough: a new table with the mirror to v3.
    for f in std::fs::read_dir(dir.path()).expect("dir").flatten() {
        std::fs::remove_file(f.path()).expect("remove");
    }
    copy_into(dir.path(), MIRROR);
    let t = client
        .wait_for("the mirror to v3", |t| mirrors_to_v3(t) && has_endpoints(t))
        .await;
    assert!(t.clusters.contains_key(V3), "the mirror cluster is there");
    let view = client.status.view();
    assert!(view.connected && view.nacks == 0, "{view:?}");

    client.stop().await;
    server.shutdown().await.expect("serve stops");
}

#[tokio::test]
async fn delta_client_gets_the_table_and_its_updates_from_serve() {
    table_follows_serve(Protocol::Delta).await;
}

#[tokio::test]
async fn sotw_client_gets_the_table_and_its_updates_from_serve() {
    table_follows_serve(Protocol::Sotw).await;
}

// ===== the bare xDS server with crafted snapshots =====

fn translate(files: &[&str]) -> Resources {
    let sources: Vec<SourceFile> = files
        .iter()
        .map(|f| SourceFile {
            path: f.to_string(),
            text: std::fs::read_to_string(examples().join(f)).expect("example"),
        })
        .collect();
    let t = translate_files(&sources, &Options::default());
    t.resources
}

struct Xds {
    addr: SocketAddr,
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Xds {
    async fn start_on(addr: SocketAddr, cache: Arc<SnapshotCache>) -> Xds {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind xds");
        let addr = listener.local_addr().expect("addr");
        let registry = Arc::new(ProxyRegistry::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let (c, r) = (cache.clone(), registry.clone());
        let task = tokio::spawn(async move {
            shadowplane::xds::serve(listener, c, r, async {
                let _ = stopped.await;
            })
            .await
            .expect("xds serve");
        });
        Xds {
            addr,
            cache,
            registry,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("xds server stops")
            .expect("xds task");
    }

    fn set(&self, res: &Resources) {
        self.cache
            .set(Snapshot::from_resources(res).expect("snapshot"));
    }

    /// Wait until `node` has acknowledged the last response of all four types.
    async fn settled(&self, node: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let types: Vec<_> = self
                .registry
                .node(node)
                .into_iter()
                .flat_map(|p| p.types)
                .collect();
            if types.len() == 4
                && types
                    .iter()
                    .all(|t| t.nonce_sent.is_some() && t.nonce_sent == t.nonce_acked)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{node} did not settle: {types:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the registry shows a NACK of `type_url` from `node` and return its message.
    async fn nack_message(&self, node: &str, type_url: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let nack = self
                .registry
                .node(node)
                .into_iter()
                .flat_map(|p| p.types)
                .find(|t| t.type_url == type_url)
                .and_then(|t| t.last_nack);
            if let Some(n) = nack {
                return n.message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {type_url} nack from {node} in the registry: {:?}",
                self.registry.node(node)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn unsupported_field_is_nacked(protocol: Protocol) {
    let xds = Xds::start_on(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(SnapshotCache::new()),
    )
    .await;
    let good = translate(MIRROR);
    xds.set(&good);
    let node = "forwarder-nack";
    let mut client = Client::start(xds.addr, node, protocol);
    let before = client
        .wait_for("the mirror", |t| mirrors_to_v3(t) && has_endpoints(t))
        .await;
    xds.settled(node).await;
    let tables_before = client.status.view().tables;

    // A cluster with a load-balancing policy the forwarder cannot honour.
    let mut bad = good.clone();
    let c = bad
        .clusters
        .iter_mut()
        .find(|c| c.name == V1)
        .expect("v1 cluster");
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    xds.set(&bad);
    let message = xds.nack_message(node, type_url::CLUSTER).await;
    assert!(message.contains(V1), "{message}");
    assert!(message.contains("lb_policy"), "{message}");
    assert!(message.contains("CLUSTER_PROVIDED"), "{message}");
    assert_eq!(
        client.status.view().tables,
        tables_before,
        "no table was handed over for the rejected clusters"
    );

    // A route hash policy on filter state: the NACK names the field path. (The clusters stay
    // the rejected ones, so nothing else is pushed.)
    let mut bad_route = bad.clone();
    let rc = bad_route
        .routes
        .iter_mut()
        .find(|r| r.name == "8080")
        .expect("rds 8080");
    let last = rc.virtual_hosts[0].routes.len() - 1;
    let Some(route_v3::route::Action::Route(ra)) = &mut rc.virtual_hosts[0].routes[last].action
    else {
        panic!("route action");
    };
    ra.hash_policy.push(route_v3::route_action::HashPolicy {
        policy_specifier: Some(
            route_v3::route_action::hash_policy::PolicySpecifier::FilterState(
                route_v3::route_action::hash_policy::FilterState { key: "k".into() },
            ),
        ),
        terminal: false,
    });
    xds.set(&bad_route);
    let message = xds.nack_message(node, type_url::ROUTE).await;
    let field = format!("virtual_hosts[0].routes[{last}].route.hash_policy[0].filter_state");
    assert!(message.contains(&field), "{message}");

    // The client kept the previous table: no new table was handed over after the first good one
    // except ones equal in content (a bad update never reaches the data plane).
    let view = client.status.view();
    assert!(view.nacks >= 2, "{view:?}");
    assert!(
        view.last_nack
            .as_deref()
            .is_some_and(|m| m.contains("filter_state")),
        "{view:?}"
    );
    let current = client.tables.borrow().clone().expect("a table");
    assert!(mirrors_to_v3(&current));
    assert!(current.route_configs["8080"].virtual_hosts[0]
        .routes
        .iter()
        .all(|r| match &r.action {
            Action::Forward(f) => f.hash_policy.is_empty(),
            _ => true,
        }));
    assert_eq!(
        current.clusters[V1].lb, before.clusters[V1].lb,
        "the rejected lb policy never reached the table"
    );
    assert_eq!(
        view.tables, tables_before,
        "no table was handed over for a rejected update"
    );

    // Fixing the config is accepted again.
    let mut fixed = good.clone();
    fixed.routes.iter_mut().for_each(|r| {
        r.virtual_hosts[0].routes[last].name = "fixed".into();
    });
    xds.set(&fixed);
    client
        .wait_for("the fixed route", |t| {
            t.route_configs
                .get("8080")
                .is_some_and(|rc| rc.virtual_hosts[0].routes[last].name == "fixed")
        })
        .await;

    client.stop().await;
    xds.stop().await;
}

#[tokio::test]
async fn delta_unsupported_field_is_nacked_and_the_previous_table_kept() {
    unsupported_field_is_nacked(Protocol::Delta).await;
}

#[tokio::test]
async fn sotw_unsupported_field_is_nacked_and_the_previous_table_kept() {
    unsupported_field_is_nacked(Protocol::Sotw).await;
}

async fn reconnects(protocol: Protocol) {
    let cache = Arc::new(SnapshotCache::new());
    let xds = Xds::start_on("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;
    let addr = xds.addr;
    xds.set(&translate(BASELINE));
    let mut client = Client::start(addr, "forwarder-reconnect", protocol);
    client
        .wait_for("the baseline", |t| {
            routes_without_mirror(t) && has_endpoints(t)
        })
        .await;

    // The control plane goes away: the client keeps its table and notices.
    xds.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.status.view().connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not notice the server stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = client.tables.borrow().clone().expect("table kept");
    assert!(routes_without_mirror(&kept));

    // It comes back on the same port with a new config: the client reconnects and gets it.
    let xds = Xds::start_on(addr, Arc::new(SnapshotCache::new())).await;
    xds.set(&translate(MIRROR));
    client
        .wait_for("the mirror after reconnecting", |t| {
            mirrors_to_v3(t) && has_endpoints(t)
        })
        .await;
    let view = client.status.view();
    assert!(view.connects >= 2 && view.connected, "{view:?}");

    client.stop().await;
    xds.stop().await;
}

#[tokio::test]
async fn delta_client_reconnects_after_the_server_restarts() {
    reconnects(Protocol::Delta).await;
}

#[tokio::test]
async fn sotw_client_reconnects_after_the_server_restarts() {
    reconnects(Protocol::Sotw).await;
}
