//! `shadowplane backend`: the two factoring algorithms agree, and the HTTP routes answer as
//! documented through a real server on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shadowplane::backend::factor::{is_prime, pollard_rho, trial_division};
use shadowplane::backend::{serve_on, Algorithm, BackendConfig, VERSION_HEADER};

/// `(n, its prime factors)`, checked against both algorithms.
const BOTH: &[(u64, &[u64])] = &[
    (0, &[]),
    (1, &[]),
    (2, &[2]),
    (3, &[3]),
    (4, &[2, 2]),
    (97, &[97]),
    (561, &[3, 11, 17]),
    (65_537, &[65_537]),
    (2_147_483_647, &[2_147_483_647]),
    // 3^40 and 65521^4: prime powers near the top of u64.
    (12_157_665_459_056_928_801, &[3; 40]),
    (18_429_861_372_428_076_481, &[65_521; 4]),
    (1 << 63, &[2; 63]),
    // 16777213 × 16777259, the primes around 2^24.
    (281_475_647_799_167, &[16_777_213, 16_777_259]),
    (u64::MAX, &[3, 5, 17, 257, 641, 65_537, 6_700_417]),
    (600_851_475_143, &[71, 839, 1_471, 6_857]),
];

/// Numbers whose trial division takes seconds to minutes (that is the demo's point): checked
/// against Pollard's rho only. Trial division's cost is about max(q, √p)/3.75 divisions for
/// the two largest prime factors p ≥ q, e.g. ~5.7·10⁸ for two 31-bit primes: seconds in a
/// release build, tens of seconds in a test build.
const RHO_ONLY: &[(u64, &[u64])] = &[
    // Semiprimes of two ~31-bit primes (62-bit n) and of the primes around 2^30.
    (4_611_685_975_477_714_963, &[2_147_483_629, 2_147_483_647]),
    (1_152_921_470_247_108_503, &[1_073_741_789, 1_073_741_827]),
    (999_999_943_999_999_559, &[999_999_937, 1_000_000_007]),
    // The largest 64-bit prime, 2^61 - 1, and the square of the largest 32-bit prime.
    (18_446_744_073_709_551_557, &[18_446_744_073_709_551_557]),
    ((1 << 61) - 1, &[(1 << 61) - 1]),
    (18_446_744_030_759_878_681, &[4_294_967_291, 4_294_967_291]),
    // 2147483647 × 2^2 × 3: a large prime with small cofactors.
    (25_769_803_764, &[2, 2, 3, 2_147_483_647]),
];

#[test]
fn both_algorithms_factor_the_table() {
    for &(n, expected) in BOTH {
        assert_eq!(trial_division(n), expected, "trial division of {n}");
        assert_eq!(pollard_rho(n), expected, "pollard rho of {n}");
    }
    for &(n, expected) in RHO_ONLY {
        assert_eq!(pollard_rho(n), expected, "pollard rho of {n}");
    }
    for &(n, expected) in BOTH.iter().chain(RHO_ONLY) {
        assert!(expected.iter().all(|&p| is_prime(p)), "{n}: {expected:?}");
        if n > 0 {
            let product = expected
                .iter()
                .try_fold(1u64, |acc, &p| acc.checked_mul(p))
                .expect("the product of n's factors fits in u64");
            assert_eq!(product, n, "the factors of {n} multiply back to it");
        }
    }
}

/// SplitMix64: a fixed, dependency-free sequence.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn both_algorithms_agree_on_2000_random_numbers() {
    let mut rng = SplitMix(0x5EED_F00D_FAC7_0125);
    let small_primes: Vec<u64> = (2..2000).filter(|&p| is_prime(p)).collect();
    for i in 0..2000 {
        let n = if i % 4 == 3 {
            // Smooth numbers up to 64 bits: many repeated small factors.
            let mut n = 1u64;
            loop {
                let p = small_primes[(rng.next() % small_primes.len() as u64) as usize];
                match n.checked_mul(p) {
                    Some(m) if rng.next() % 16 != 0 => n = m,
                    _ => break n,
                }
            }
        } else {
            // Any number of 1 to 38 bits (trial division stays fast in a test build).
            let bits = 1 + rng.next() % 38;
            rng.next() >> (64 - bits)
        };
        let t = trial_division(n);
        let r = pollard_rho(n);
        assert_eq!(t, r, "n = {n}");
        if n > 0 {
            assert_eq!(t.iter().product::<u64>(), n, "n = {n}: {t:?}");
        }
        assert!(t.iter().all(|&p| is_prime(p)), "n = {n}: {t:?}");
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "n = {n}: {t:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP, through a real server

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(name: &str, algorithm: Algorithm) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let mut cfg = BackendConfig::new(name, addr);
    cfg.algorithm = algorithm;
    cfg.drain_timeout = Duration::from_secs(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve_on(listener, cfg, async {
            let _ = stopped.await;
        })
        .await
        .expect("backend serves");
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("backend stops within 5s")
            .expect("backend task ends cleanly");
    }
}

struct Answer {
    status: StatusCode,
    version: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20s")
        .expect("HTTP exchange");
    let status = resp.status();
    let version = resp
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    Answer {
        status,
        version,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[tokio::test]
async fn factor_routes_answer_json_named_by_the_version() {
    let v1 = start("v1", Algorithm::TrialDivision).await;
    let v3 = start("v3", Algorithm::PollardRho).await;

    for (backend, name, algorithm) in [(&v1, "v1", "trial-division"), (&v3, "v3", "pollard-rho")] {
        for path in [
            "/factor/600851475143",
            "/factor?n=600851475143",
            "/factor?a=b&n=600851475143",
        ] {
            let a = call(backend.addr, Method::GET, path, &[], "").await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
            assert_eq!(a.version.as_deref(), Some(name));
            let v = a.json();
            assert_eq!(v["n"], 600_851_475_143u64);
            assert_eq!(v["factors"], serde_json::json!([71, 839, 1471, 6857]));
            assert_eq!(v["version"], name);
            assert_eq!(v["algorithm"], algorithm);
            assert!(v["elapsed_us"].is_u64(), "{v}");
        }
    }

    // The largest u64 in, its factors out, as JSON numbers.
    let a = call(
        v3.addr,
        Method::GET,
        "/factor/18446744073709551615",
        &[],
        "",
    )
    .await;
    assert_eq!(
        a.json()["factors"],
        serde_json::json!([3, 5, 17, 257, 641, 65537, 6700417])
    );
    let a = call(v3.addr, Method::GET, "/factor/4611685975477714963", &[], "").await;
    assert_eq!(
        a.json()["factors"],
        serde_json::json!([2147483629u64, 2147483647u64])
    );

    // Bad n: 400 with a JSON error that names the value, still from this version.
    for (path, needle) in [
        (
            "/factor/18446744073709551616",
            "larger than 18446744073709551615",
        ),
        ("/factor/twelve", "\\\"twelve\\\" is not a whole number"),
        ("/factor/0", "n 0 has no prime factorization"),
        ("/factor?m=3", "missing n"),
        ("/factor", "missing n"),
    ] {
        let a = call(v1.addr, Method::GET, path, &[], "").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
        assert_eq!(a.version.as_deref(), Some("v1"), "{path}");
        assert!(a.body.contains(needle), "{path}: {}", a.body);
        assert!(a.json()["error"].is_string(), "{path}");
    }

    v1.stop().await;
    v3.stop().await;
}

#[tokio::test]
async fn echo_routes_answer_like_httpbin() {
    let b = start("v2", Algorithm::TrialDivision).await;

    for code in [200u16, 204, 418, 500, 503] {
        let a = call(b.addr, Method::GET, &format!("/status/{code}"), &[], "").await;
        assert_eq!(a.status.as_u16(), code);
        assert_eq!(a.version.as_deref(), Some("v2"));
        assert_eq!(a.body, "");
    }
    let a = call(b.addr, Method::GET, "/status/700", &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = call(
        b.addr,
        Method::GET,
        "/headers",
        &[("user-agent", "Mozilla/5.0 (iPhone) Mobile"), ("x-a", "1")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["headers"]["user-agent"], "Mozilla/5.0 (iPhone) Mobile");
    assert_eq!(v["headers"]["x-a"], "1");
    assert_eq!(v["headers"]["host"], b.addr.to_string());

    let a = call(
        b.addr,
        Method::POST,
        "/anything/deep/path?x=1&x=2&y=a%20b",
        &[("x-request-id", "req-42"), ("content-type", "text/plain")],
        "body text",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.version.as_deref(), Some("v2"));
    let v = a.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/anything/deep/path");
    assert_eq!(v["query"], "x=1&x=2&y=a%20b");
    assert_eq!(
        v["args"],
        serde_json::json!({"x": ["1", "2"], "y": ["a b"]})
    );
    assert_eq!(v["body"], "body text");
    assert_eq!(v["request_id"], "req-42");
    assert_eq!(v["headers"]["content-type"], "text/plain");
    assert_eq!(v["version"], "v2");

    let a = call(b.addr, Method::GET, "/anything", &[], "").await;
    assert_eq!(a.json()["path"], "/anything");

    let a = call(b.addr, Method::GET, "/healthz", &[], "").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok\n"));
    let a = call(b.addr, Method::GET, "/missing", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.version.as_deref(), Some("v2"));

    b.stop().await;
}

#[tokio::test]
async fn a_busy_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = shadowplane::backend::serve(BackendConfig::new("v1", addr), std::future::pending())
        .await
        .expect_err("the port is taken");
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("--listen"), "{msg}");
}
