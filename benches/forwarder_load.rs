//! A fixed-rate (open-loop) HTTP/1.1 load generator for `bench/forwarder.sh`: latency at a
//! given request rate, measured from when each request *should* have been sent, so a slow
//! proxy cannot hide its queueing (no coordinated omission, as wrk2 does it).
//!
//! ```text
//! cargo bench --bench forwarder_load -- --addr 127.0.0.2:18480 --host calcbackendsvc \
//!     --rate 8000 --duration 10s --warmup 2s --connections 64
//! ```
//!
//! Request `i` is due at `start + i / rate`. `--connections` keep-alive connections take the
//! due requests in order; a connection that is busy when a request falls due makes it wait,
//! and that wait counts in its latency (measured from the due time). When the connection was
//! free, latency is measured from the actual send instead: the timer's own lateness (tokio
//! timers have millisecond granularity) is the generator's, not the server's. Requests due during `--warmup` are sent but not
//! measured. Prints one JSON line: the rate asked for and achieved, counts, and the latency
//! percentiles in microseconds (exact: every sample is kept).
//!
//! One tokio thread: on a 2-core machine the generator should take as little from the proxy
//! under test as possible.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    headers: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: forwarder_load --addr IP:PORT --rate RPS [--host HOST] [--path /] \
         [--duration 10s] [--warmup 2s] [--connections 64] [--header 'name: value']..."
    );
    std::process::exit(2)
}

fn duration(s: &str) -> Duration {
    let (n, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (s, 1.0)
    };
    match n.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Duration::from_secs_f64(v * scale),
        _ => usage(),
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        host: String::new(),
        path: "/".to_string(),
        rate: 0.0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        connections: 64,
        headers: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` appends `--bench` to a harness-less bench's arguments.
        if flag == "--bench" {
            continue;
        }
        let Some(value) = it.next() else { usage() };
        match flag.as_str() {
            "--addr" => a.addr = value.parse().unwrap_or_else(|_| usage()),
            "--host" => a.host = value,
            "--path" => a.path = value,
            "--rate" => a.rate = value.parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = duration(&value),
            "--warmup" => a.warmup = duration(&value),
            "--connections" => a.connections = value.parse().unwrap_or_else(|_| usage()),
            "--header" => {
                let Some((k, v)) = value.split_once(':') else {
                    usage()
                };
                a.headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => usage(),
        }
    }
    if a.rate <= 0.0 || a.connections == 0 || a.duration.is_zero() {
        usage();
    }
    if a.host.is_empty() {
        a.host = a.addr.to_string();
    }
    a
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

fn request(a: &Args) -> hyper::Request<Empty<Bytes>> {
    let mut b = hyper::Request::builder()
        .method("GET")
        .uri(a.path.as_str())
        .header("host", a.host.as_str());
    for (k, v) in &a.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Empty::new())
        .unwrap_or_else(|e| panic!("bad request from the arguments: {e}"))
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    a: Arc<Args>,
    next: Arc<AtomicU64>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    interval: Duration,
    totals: Arc<Totals>,
    samples: Arc<Mutex<Vec<u64>>>,
) {
    let mut local: Vec<u64> = Vec::new();
    let mut sender: Option<Sender> = None;
    let mut free_since = start;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let measured_from = if free_since > due {
            due
        } else {
            Instant::now()
        };
        if sender.is_none() {
            sender = connect(a.addr).await;
        }
        let Some(s) = sender.as_mut() else {
            totals.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        totals.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
            s.ready().await.ok()?;
            let resp = s.send_request(request(&a)).await.ok()?;
            let status = resp.status();
            resp.into_body().collect().await.ok()?;
            Some(status)
        }
        .await;
        match outcome {
            Some(status) => {
                if status.is_success() {
                    totals.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    totals.non_2xx.fetch_add(1, Ordering::Relaxed);
                }
                if due >= measure_from {
                    let us = u64::try_from(measured_from.elapsed().as_micros()).unwrap_or(u64::MAX);
                    local.push(us);
                }
                free_since = Instant::now();
            }
            None => {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                sender = None;
                free_since = Instant::now();
            }
        }
    }
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(local);
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let args = Arc::new(parse_args());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let totals = Arc::new(Totals::default());
    let samples = Arc::new(Mutex::new(Vec::new()));
    let measured = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + args.warmup;
        let end = measure_from + args.duration;
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| {
                tokio::spawn(connection(
                    args.clone(),
                    next.clone(),
                    start,
                    measure_from,
                    end,
                    interval,
                    totals.clone(),
                    samples.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        // The measured window runs until the last measured answer came back.
        measure_from.elapsed()
    });
    let mut s = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    s.sort_unstable();
    let achieved = s.len() as f64 / measured.as_secs_f64();
    println!(
        "{{\"rate\":{:.0},\"achieved_rps\":{:.0},\"measured\":{},\"sent\":{},\"ok\":{},\"non_2xx\":{},\"errors\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        args.rate,
        achieved,
        s.len(),
        totals.sent.load(Ordering::Relaxed),
        totals.ok.load(Ordering::Relaxed),
        totals.non_2xx.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
        percentile(&s, 0.50),
        percentile(&s, 0.90),
        percentile(&s, 0.99),
        percentile(&s, 0.999),
        s.last().copied().unwrap_or(0),
    );
}
