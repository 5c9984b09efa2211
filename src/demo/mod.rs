//! `shadowplane demo`: the calc walkthrough end to end, in one process, nothing to install.
//!
//! ```text
//!  traffic loop ──GET /factor/<n>, Host: calcbackendsvc──► data plane ──► v1 / v2 (trial division)
//!  (1 in 4 Mobile)                                 (forwarder or Envoy)  └─mirror─► v3 (Pollard's rho)
//!                                                         ▲ ADS
//!  temp config folder ──watched──► serve (xDS) ───────────┘
//!  (step files rewritten as the seed shows them)
//! ```
//!
//! Everything listens on 127.0.0.1 on ports the OS picks: `serve` ([`crate::app::start`]) on a
//! temporary config folder, three backends ([`crate::backend`]; v1 and v2 factor by trial
//! division, v3 by Pollard's rho), the data plane ([`plane`]: the in-process forwarder by
//! default, or a real Envoy) whose listener is the ServiceEntry's port, and the traffic loop
//! ([`traffic`]). Then the story ([`story::STEPS`]): baseline, mirror to v3, reset, each
//! applied by rewriting the YAML files exactly as the seed shows them, each running for a third
//! of `--duration` once the data plane has acknowledged it (the traffic pauses while a step is
//! applied, so every answer belongs to one step).
//!
//! Measured ([`ledger`], [`metrics`]): per step and version, the requests each backend
//! received, how many were mirrored copies (Host `calcbackendsvc-shadow`), 5xx answers, the
//! backend's service time (p50/p90/p99), what the data plane says it sent (its Prometheus
//! `upstream_rq_total`, the same page for Envoy and the forwarder), and which version answered
//! each user. The summary ends with the verdict ([`verdict`]).
//!
//! Ctrl-C (or SIGTERM) stops the loop, shuts everything down (the Envoy child included),
//! removes the temporary folder, prints the summary so far and exits 130, as shells report an
//! interrupted command.

pub mod client;
pub mod ledger;
pub mod metrics;
pub mod plane;
pub mod story;
pub mod traffic;
pub mod verdict;
pub mod view;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{RunningServer, ServeConfig};
use crate::backend::{self, Algorithm, BackendConfig, BackendError};
use ledger::{Ledger, Quantiles, StepClock, VERSIONS};
use metrics::ProxyView;
use plane::{DataPlaneChoice, EnvoyPlane, ForwarderPlane, Plane};
use story::STEPS;
use traffic::{Phase, Traffic};
use verdict::{Errors, Pair};
use view::{Frame, MirrorPairs, Paired, StepSummary, Summary, View};

/// Default `--duration`: the whole story, three steps of 10 s.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// The shortest `--duration` (a second per step).
pub const MIN_DURATION: Duration = Duration::from_secs(3);
/// How long a step's rules may take to be acknowledged by the data plane.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// What `shadowplane demo` runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The whole story; each step gets a third.
    pub duration: Duration,
    pub data_plane: DataPlaneChoice,
    /// Redraw a live table (stdout is a terminal); else one plain line a second.
    pub live: bool,
    /// Traffic loop workers, each sending one request per `period`.
    pub workers: usize,
    pub period: Duration,
}

impl DemoConfig {
    pub fn new(duration: Duration, data_plane: DataPlaneChoice, live: bool) -> DemoConfig {
        DemoConfig {
            duration,
            data_plane,
            live,
            workers: 4,
            period: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("cannot start serve: {0}")]
    Serve(#[from] crate::app::ServeError),
    #[error("{0}")]
    Envoy(String),
    #[error("{0}")]
    Apply(String),
}

/// How the demo ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Ctrl-C or SIGTERM stopped it.
    pub interrupted: bool,
    /// Answers users got from v3 (the mirror's promise: 0).
    pub users_from_v3: u64,
    pub summary: Summary,
}

/// Run the demo, writing to `out`, until the story ends or `interrupt` completes. Everything
/// started is stopped and the temporary folder removed on every path.
pub async fn run(
    cfg: DemoConfig,
    out: Box<dyn std::io::Write + Send>,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome, DemoError> {
    let mut view = View::new(out, cfg.live);
    let mut demo = Demo::new()?;
    let played = {
        let story = demo.play(&cfg, &mut view);
        tokio::pin!(interrupt);
        // Interruption first: a terminal's Ctrl-C also reaches an Envoy child, and its exit
        // must read as the interruption it is, not as a failure of the story.
        tokio::select! {
            biased;
            _ = &mut interrupt => Ok(true),
            r = story => r.map(|()| false),
        }
    };
    view.end_live();
    let interrupted = matches!(played, Ok(true));
    if interrupted {
        view.line("\ninterrupted: stopping the traffic, the data plane, serve and the backends");
    }
    // Close the figures of a step cut short (a no-op when the story ended).
    demo.end_step().await;
    let summary = demo.summary(interrupted);
    let plane_name = demo.plane.as_ref().map(Plane::name);
    demo.shutdown().await;
    if let Err(e) = played {
        if !summary.steps.is_empty() {
            view.line(&view::summary(&summary));
        }
        return Err(e);
    }
    view.line(&view::summary(&summary));
    let users_from_v3 = summary.users.by_version[2];
    view.line(&format!(
        "stopped: {}, serve and the three backends; the temporary config folder is removed",
        plane_name.unwrap_or("the data plane")
    ));
    Ok(Outcome {
        interrupted,
        users_from_v3,
        summary,
    })
}

/// Everything the demo started (each part optional, so that a partial start or an
/// interruption at any point is shut down the same way).
struct Demo {
    tmp: Option<tempfile::TempDir>,
    config_dir: PathBuf,
    ledger: Arc<Ledger>,
    serve: Option<RunningServer>,
    backend_stop: watch::Sender<bool>,
    backends: Vec<(&'static str, JoinHandle<Result<(), BackendError>>)>,
    plane: Option<Plane>,
    traffic: Option<Traffic>,
    service_port: u16,
    /// The data plane's figures, last known.
    proxy_latest: ProxyView,
    /// The data plane's figures at the start of each step started so far.
    proxy_start: Vec<ProxyView>,
    /// ... and at its end (filled by [`Demo::end_step`]).
    proxy_end: Vec<ProxyView>,
    clocks: Vec<StepClock>,
    /// The forwarder's `/debug/mirror` after the mirror step.
    mirror_json: Option<serde_json::Value>,
    /// The step whose traffic is running and when it started.
    running: Option<(usize, Instant)>,
}

impl Demo {
    fn new() -> Result<Demo, DemoError> {
        let tmp = tempfile::Builder::new()
            .prefix("shadowplane-demo-")
            .tempdir()
            .map_err(|e| DemoError::Io("cannot create a temporary folder".into(), e))?;
        let config_dir = tmp.path().join("config");
        std::fs::create_dir(&config_dir)
            .map_err(|e| DemoError::Io(format!("cannot create {}", config_dir.display()), e))?;
        let (backend_stop, _) = watch::channel(false);
        Ok(Demo {
            tmp: Some(tmp),
            config_dir,
            ledger: Arc::new(Ledger::default()),
            serve: None,
            backend_stop,
            backends: Vec::new(),
            plane: None,
            traffic: None,
            service_port: 0,
            proxy_latest: ProxyView::default(),
            proxy_start: Vec::new(),
            proxy_end: Vec::new(),
            clocks: Vec::new(),
            mirror_json: None,
            running: None,
        })
    }

    fn plane_name(&self) -> &'static str {
        self.plane.as_ref().map_or("the data plane", Plane::name)
    }

    /// Start everything, then play the three steps.
    async fn play(&mut self, cfg: &DemoConfig, view: &mut View) -> Result<(), DemoError> {
        let step_length = cfg.duration / STEPS.len() as u32;
        view.line(&format!(
            "shadowplane demo: the calc walkthrough in {} steps of {:.1}s (Ctrl-C stops it)",
            STEPS.len(),
            step_length.as_secs_f64()
        ));

        // Backends on ports the OS picks.
        let mut ports = [0u16; 3];
        for (i, version) in VERSIONS.iter().enumerate() {
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(|e| DemoError::Io(format!("cannot listen for backend {version}"), e))?;
            ports[i] = listener
                .local_addr()
                .map_err(|e| DemoError::Io(format!("backend {version}'s address"), e))?
                .port();
            let mut bcfg =
                BackendConfig::new(*version, SocketAddr::from(([127, 0, 0, 1], ports[i])));
            bcfg.algorithm = if i == 2 {
                Algorithm::PollardRho
            } else {
                Algorithm::TrialDivision
            };
            bcfg.drain_timeout = Duration::from_secs(1);
            let task = tokio::spawn(backend::serve_on_observed(
                listener,
                bcfg,
                self.ledger.observer(i),
                plane::until_true(self.backend_stop.subscribe()),
            ));
            self.backends.push((version, task));
        }
        // The data plane's listener: the ServiceEntry's port (free now; the proxy binds it).
        self.service_port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| DemoError::Io("cannot find a free port for the service".into(), e))?
            .port();

        // Step 1's files, then serve on the folder.
        story::write_atomic(
            &self.config_dir,
            story::SERVICE_ENTRY_FILE,
            &story::service_entry(self.service_port, ports),
        )
        .map_err(|e| DemoError::Io("cannot write the ServiceEntry".into(), e))?;
        story::apply(&self.config_dir, &STEPS[0])
            .map_err(|e| DemoError::Io("cannot write the baseline rules".into(), e))?;
        let mut serve_cfg = ServeConfig::new(vec![self.config_dir.clone()]);
        serve_cfg.xds_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        serve_cfg.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        serve_cfg.options.bind_address = "127.0.0.1".to_string();
        serve_cfg.phase_timeout = Duration::from_secs(2);
        serve_cfg.drain_timeout = Duration::from_secs(1);
        let serve = crate::app::start(serve_cfg).await?;
        let (xds, serve_admin) = (serve.xds_addr(), serve.admin_addr());
        self.serve = Some(serve);

        let plane = match &cfg.data_plane {
            DataPlaneChoice::Forwarder => Plane::Forwarder(ForwarderPlane::start(xds).await?),
            DataPlaneChoice::Envoy(bin) => {
                let dir = self
                    .tmp
                    .as_ref()
                    .map(|t| t.path().to_path_buf())
                    .unwrap_or_else(std::env::temp_dir);
                Plane::Envoy(EnvoyPlane::start(bin, &dir, xds).await?)
            }
        };
        view.line(&format!(
            "running: serve (xDS {xds}, admin http://{serve_admin}), backends v1 :{} and v2 :{} (trial division), v3 :{} (Pollard's rho), {} listening on 127.0.0.1:{}",
            ports[0],
            ports[1],
            ports[2],
            plane.label(),
            self.service_port
        ));
        view.line(&format!(
            "config folder (watched by serve): {}",
            self.config_dir.display()
        ));
        self.plane = Some(plane);

        let target = SocketAddr::from(([127, 0, 0, 1], self.service_port));
        self.traffic = Some(Traffic::start(
            target,
            cfg.workers,
            cfg.period,
            self.ledger.clone(),
        ));
        view.line(&format!(
            "traffic: {} users in a loop, GET /factor/<n> with Host: {}, one request in four from a Mobile user-agent",
            cfg.workers,
            traffic::HOST
        ));

        for (i, step) in STEPS.iter().enumerate() {
            let started = Instant::now();
            let before = if i == 0 {
                None
            } else {
                let before = group_versions(serve_admin).await?;
                story::apply(&self.config_dir, step).map_err(|e| {
                    DemoError::Io(format!("cannot write the {} rules", step.name), e)
                })?;
                Some(before)
            };
            view.line(&format!(
                "\nstep {}/{} {}: wrote {} (examples/calc/{}/, verbatim): {}",
                i + 1,
                STEPS.len(),
                step.name,
                step.files
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", "),
                step.name,
                step.explain
            ));
            self.wait_applied(serve_admin, before.as_ref(), target, step.name)
                .await?;
            let applied_in = started.elapsed();
            view.line(&format!(
                "  {} acknowledged the new rules {:.2}s after the files were written",
                self.plane_name(),
                applied_in.as_secs_f64()
            ));
            self.run_step(i, step_length, applied_in, view).await?;
            self.end_step().await;
            let rows = ledger::rows(&self.ledger.backend_records(), Some(i));
            view.line(&format!(
                "step {}/{} {} done: {}",
                i + 1,
                STEPS.len(),
                step.name,
                view::step_counts(&rows)
            ));
        }
        Ok(())
    }

    /// Wait until serve has read the new files (its snapshot version moved from `before`),
    /// and every connected proxy has acknowledged everything; on the first step, until a
    /// request through the listener is answered.
    async fn wait_applied(
        &mut self,
        serve_admin: SocketAddr,
        before: Option<&BTreeMap<String, serde_json::Value>>,
        target: SocketAddr,
        step: &str,
    ) -> Result<(), DemoError> {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut last;
        loop {
            if let Some(p) = self.plane.as_mut() {
                p.check_alive()?;
            }
            match converged(serve_admin, before).await {
                Ok(()) => {
                    if before.is_some() || probe(target).await.is_ok() {
                        // The forwarder applies a table right after ACKing it; give it a moment.
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        return Ok(());
                    }
                    last = "the listener does not answer yet".into();
                }
                Err(Stuck::Nacked(why)) => {
                    return Err(DemoError::Apply(format!(
                        "{} rejected the {step} rules: {why}",
                        self.plane_name()
                    )))
                }
                Err(Stuck::Waiting(why)) => last = why,
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Apply(format!(
                    "{} did not take the {step} rules within {APPLY_TIMEOUT:?} ({last})",
                    self.plane_name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Read the data plane's figures (keeping the last known ones of vanished clusters).
    async fn scrape(&mut self) -> Result<(), DemoError> {
        let Some(plane) = self.plane.as_mut() else {
            return Ok(());
        };
        plane.check_alive()?;
        let (admin, path) = (plane.admin(), plane.metrics_path());
        if let Ok((200, text)) = client::get_text(admin, path).await {
            let mut view = metrics::parse(&text, self.service_port);
            view.merge_missing(&self.proxy_latest);
            self.proxy_latest = view;
        }
        Ok(())
    }

    /// Run step `i`'s traffic for `length`, refreshing the view.
    async fn run_step(
        &mut self,
        i: usize,
        length: Duration,
        applied_in: Duration,
        view: &mut View,
    ) -> Result<(), DemoError> {
        self.scrape().await?;
        self.proxy_start.push(self.proxy_latest.clone());
        self.clocks.push(StepClock {
            ran: Duration::ZERO,
            applied_in: Some(applied_in),
        });
        self.ledger.set_step(i);
        let started = Instant::now();
        self.running = Some((i, started));
        if let Some(t) = &self.traffic {
            t.set(Phase::Run(i));
        }
        let tick = if view.is_live() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        loop {
            let left = length.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(tick)).await;
            self.scrape().await?;
            let elapsed = started.elapsed().min(length);
            if elapsed < length || view.is_live() {
                let frame = self.frame(i, elapsed, length);
                view.frame(&frame);
            }
        }
        Ok(())
    }

    fn frame(&self, i: usize, elapsed: Duration, length: Duration) -> Frame<'static> {
        let records = self.ledger.backend_records();
        let sent = self.proxy_latest.minus(&self.proxy_start[i]);
        Frame {
            step: i,
            steps: STEPS.len(),
            name: STEPS[i].name,
            elapsed,
            length,
            rows: ledger::rows(&records, Some(i)),
            proxy_sent: sent.versions.map(|c| c.map(|c| c.requests)),
            users: ledger::users(&self.ledger.user_records(), Some(i)),
            plane: self.plane_name(),
        }
    }

    /// Pause the traffic and let the step's last answers (and mirrored copies) land, then take
    /// the step's closing figures.
    async fn end_step(&mut self) {
        let Some((i, started)) = self.running.take() else {
            return;
        };
        if let Some(t) = &self.traffic {
            t.set(Phase::Pause);
        }
        if let Some(c) = self.clocks.get_mut(i) {
            c.ran = started.elapsed();
        }
        let deadline = Instant::now() + traffic::USER_TIMEOUT + Duration::from_secs(1);
        while self.ledger.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Mirrored copies finish after the user's answer: wait until the backends are quiet.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = self.ledger.backend_count();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.ledger.backend_count();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        let _ = self.scrape().await;
        self.proxy_end.push(self.proxy_latest.clone());
        if STEPS[i].name == "mirror" {
            if let Some(p) = &self.plane {
                self.mirror_json = p.mirror_comparison().await;
            }
        }
    }

    fn summary(&self, interrupted: bool) -> Summary {
        let records = self.ledger.backend_records();
        let users = self.ledger.user_records();
        let steps: Vec<StepSummary> = self
            .proxy_start
            .iter()
            .enumerate()
            .map(|(i, start)| {
                let end = self.proxy_end.get(i).unwrap_or(&self.proxy_latest);
                let sent = end.minus(start);
                StepSummary {
                    name: STEPS[i].name,
                    ran: self.clocks.get(i).map_or(Duration::ZERO, |c| c.ran),
                    rows: ledger::rows(&records, Some(i)),
                    proxy_sent: sent.versions.map(|c| c.map(|c| c.requests)),
                }
            })
            .collect();
        let mirror = STEPS.iter().position(|s| s.name == "mirror");
        let ran_mirror = mirror.filter(|m| *m < self.proxy_start.len());
        let (comparison, paired, proxy_time) = match ran_mirror {
            None => (None, Paired::default(), None),
            Some(m) => {
                let end = self.proxy_end.get(m).unwrap_or(&self.proxy_latest);
                let proxy = end.minus(&self.proxy_start[m]);
                let (pairs, paired) = pairs(&records, m);
                let rows = ledger::rows(&records, Some(m));
                let errors = |v: usize| {
                    let p = proxy.versions[v].as_ref();
                    Errors {
                        requests: rows[v].received.max(p.map_or(0, |c| c.requests as u64)),
                        errors: rows[v].errors.max(p.map_or(0, |c| c.errors_5xx as u64)),
                    }
                };
                let comparison = verdict::compare(&pairs, errors(0), errors(2));
                let proxy_time = match (&proxy.versions[0], &proxy.versions[2]) {
                    (Some(a), Some(b)) if a.time.count() > 0.0 && b.time.count() > 0.0 => {
                        Some((a.time.quantiles(), b.time.quantiles()))
                    }
                    _ => None,
                };
                (Some(comparison), paired, proxy_time)
            }
        };
        Summary {
            plane: self.plane_name().to_string(),
            interrupted,
            steps,
            users: ledger::users(&users, None),
            comparison,
            paired,
            proxy_time,
            mirror_pairs: self.mirror_json.as_ref().map(MirrorPairs::from_json),
        }
    }

    /// Stop everything in order (traffic, data plane, serve, backends) and remove the folder.
    async fn shutdown(&mut self) {
        if let Some(t) = self.traffic.take() {
            t.stop().await;
        }
        if let Some(p) = self.plane.take() {
            p.shutdown().await;
        }
        if let Some(s) = self.serve.take() {
            if let Err(e) = s.shutdown().await {
                tracing::warn!(error = %e, "serve did not stop cleanly");
            }
        }
        let _ = self.backend_stop.send(true);
        for (name, task) in self.backends.drain(..) {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(backend = name, error = %e, "backend failed"),
                Err(e) => tracing::warn!(backend = name, error = %e, "backend task failed"),
            }
        }
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.path().to_path_buf();
            if let Err(e) = tmp.close() {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the temporary folder");
            }
        }
    }
}

/// The (v1, v3) pairs of step `step`: v1's answer to a user and v3's to the mirrored copy of
/// the same request (same `x-request-id`), compared on calculation time; with both sides'
/// calculation-time and service-time quantiles over those pairs.
fn pairs(records: &[ledger::BackendRecord], step: usize) -> (Vec<Pair>, Paired) {
    let v1: BTreeMap<&str, &ledger::BackendRecord> = records
        .iter()
        .filter(|r| r.step == step && r.version == 0 && !r.shadow)
        .filter_map(|r| r.request_id.as_deref().map(|id| (id, r)))
        .collect();
    let matched: Vec<(&ledger::BackendRecord, &ledger::BackendRecord)> = records
        .iter()
        .filter(|r| r.step == step && r.version == 2 && r.shadow)
        .filter_map(|v3| Some((*v1.get(v3.request_id.as_deref()?)?, v3)))
        .collect();
    let pairs: Vec<Pair> = matched
        .iter()
        .filter_map(|(v1, v3)| {
            Some(Pair {
                v1_us: v1.compute_us?,
                v3_us: v3.compute_us?,
                same_answer: match (&v1.factors, &v3.factors) {
                    (Some(a), Some(b)) => Some(a == b),
                    _ => None,
                },
            })
        })
        .collect();
    let quantiles =
        |f: &dyn Fn(&(&ledger::BackendRecord, &ledger::BackendRecord)) -> Option<f64>| {
            Quantiles::of_us(&matched.iter().filter_map(f).collect::<Vec<_>>())
        };
    let paired = Paired {
        calculation: (
            quantiles(&|(a, _)| a.compute_us),
            quantiles(&|(_, b)| b.compute_us),
        ),
        service: (
            quantiles(&|(a, _)| Some(a.service_us)),
            quantiles(&|(_, b)| Some(b.service_us)),
        ),
    };
    (pairs, paired)
}

/// A request through the data plane's listener (`/healthz`, answered by v1, not counted).
async fn probe(target: SocketAddr) -> Result<(), String> {
    let mut conn = client::Conn::open(target, Duration::from_secs(1)).await?;
    let answer = conn
        .send(
            http::Method::GET,
            "/healthz",
            &[("host", traffic::HOST)],
            Duration::from_secs(2),
        )
        .await?;
    if answer.status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("the listener answered {}", answer.status))
    }
}

/// Each snapshot group's current version on serve's `/debug/config`.
async fn group_versions(
    serve_admin: SocketAddr,
) -> Result<BTreeMap<String, serde_json::Value>, DemoError> {
    let config = client::get_json(serve_admin, "/debug/config")
        .await
        .map_err(|e| DemoError::Apply(format!("cannot read serve's /debug/config: {e}")))?;
    Ok(config["groups"]
        .as_object()
        .map(|groups| {
            groups
                .iter()
                .map(|(name, g)| (name.clone(), g["version"].clone()))
                .collect()
        })
        .unwrap_or_default())
}

enum Stuck {
    Waiting(String),
    Nacked(String),
}

/// Every connected proxy is on its group's final snapshot (past `before` when given), with
/// every type acknowledged.
async fn converged(
    serve_admin: SocketAddr,
    before: Option<&BTreeMap<String, serde_json::Value>>,
) -> Result<(), Stuck> {
    let config = client::get_json(serve_admin, "/debug/config")
        .await
        .map_err(Stuck::Waiting)?;
    let proxies = client::get_json(serve_admin, "/debug/proxies")
        .await
        .map_err(Stuck::Waiting)?;
    let list = proxies["proxies"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return Err(Stuck::Waiting("no proxy connected yet".into()));
    }
    for p in &list {
        let group_name = p["group"].as_str().unwrap_or_default();
        let group = &config["groups"][group_name];
        if group["version"].is_null() || group["version"] != group["target_version"] {
            return Err(Stuck::Waiting(format!(
                "serve is still pushing group {group_name} in phases"
            )));
        }
        if before.is_some_and(|b| b.get(group_name) == Some(&group["version"])) {
            return Err(Stuck::Waiting(
                "serve has not read the new files yet".into(),
            ));
        }
        let types = p["types"].as_array().cloned().unwrap_or_default();
        let mut synced = 0;
        for t in &types {
            match t["sync"].as_str() {
                Some("SYNCED") => synced += 1,
                Some("NOT SENT") => {}
                Some("NACKED") => {
                    return Err(Stuck::Nacked(
                        t["last_nack"]["message"]
                            .as_str()
                            .or_else(|| t["last_nack"].as_str())
                            .unwrap_or("see serve's /debug/errors")
                            .to_string(),
                    ))
                }
                other => {
                    return Err(Stuck::Waiting(format!(
                        "{} is {}",
                        t["type_url"].as_str().unwrap_or("a type"),
                        other.unwrap_or("unknown")
                    )))
                }
            }
        }
        if synced == 0 {
            return Err(Stuck::Waiting("nothing acknowledged yet".into()));
        }
    }
    Ok(())
}
