//! The seed's "loop mode": a few workers sending `GET /factor/<n>` with `Host: calcbackendsvc`
//! through the data plane, one request in four with a Mobile user-agent, and recording which
//! version answered each user.
//!
//! The numbers come from a fixed-seed mix, so every run asks the same questions: a quarter are
//! small (microseconds for both algorithms) and the rest products of two primes of 18 to 24
//! bits, where trial division (v1, v2) takes from a fraction of a millisecond to tens of
//! milliseconds and Pollard's rho (v3) stays in the tens of microseconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Conn;
use super::ledger::{factors_of, Ledger, UserRecord, VERSIONS};
use crate::backend::{factor, VERSION_HEADER};

/// The Host users send, as the VirtualService names the service.
pub const HOST: &str = "calcbackendsvc";
pub const DESKTOP: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
pub const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
/// The seed of the number mix.
pub const SEED: u64 = 0x5eed_ca1c;
/// How long a user waits for an answer.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A random prime of `bits` bits.
fn prime(rng: &mut StdRng, bits: u32) -> u64 {
    loop {
        let candidate = rng.random_range(1u64 << (bits - 1)..1u64 << bits) | 1;
        if factor::is_prime(candidate) {
            return candidate;
        }
    }
}

/// `count` numbers from the fixed-seed mix: a quarter below a million, two thirds products of
/// two primes of 18-22 bits, the rest of 23-24 bits (the slow tail of trial division).
pub fn numbers(count: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(SEED);
    (0..count)
        .map(|_| {
            let roll: f64 = rng.random();
            if roll < 0.25 {
                rng.random_range(2..1_000_000)
            } else {
                let range = if roll < 0.25 + 0.67 { 18..=22 } else { 23..=24 };
                let (a, b) = (rng.random_range(range.clone()), rng.random_range(range));
                prime(&mut rng, a) * prime(&mut rng, b)
            }
        })
        .collect()
}

/// What the workers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Send requests; the answers belong to this step.
    Run(usize),
    /// Send nothing (a step's rules are being applied).
    Pause,
    /// Finish the request in flight and end.
    Stop,
}

/// The running loop.
pub struct Traffic {
    control: watch::Sender<Phase>,
    workers: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Start `workers` workers, each sending one request every `period` (when running) to the
    /// data plane's listener `target`. They start paused.
    pub fn start(
        target: SocketAddr,
        workers: usize,
        period: Duration,
        ledger: Arc<Ledger>,
    ) -> Traffic {
        let (control, rx) = watch::channel(Phase::Pause);
        let numbers: Arc<Vec<u64>> = Arc::new(numbers(512));
        let counter = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|id| {
                tokio::spawn(worker(
                    id,
                    target,
                    period,
                    numbers.clone(),
                    counter.clone(),
                    ledger.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        Traffic { control, workers }
    }

    pub fn set(&self, phase: Phase) {
        let _ = self.control.send(phase);
    }

    /// Stop the workers: each finishes its request (within a second) or abandons it.
    pub async fn stop(self) {
        let _ = self.control.send(Phase::Stop);
        for mut w in self.workers {
            if tokio::time::timeout(Duration::from_secs(1), &mut w)
                .await
                .is_err()
            {
                w.abort();
                let _ = w.await;
            }
        }
    }
}

async fn worker(
    id: usize,
    target: SocketAddr,
    period: Duration,
    numbers: Arc<Vec<u64>>,
    counter: Arc<AtomicU64>,
    ledger: Arc<Ledger>,
    mut control: watch::Receiver<Phase>,
) {
    let mut rng = StdRng::seed_from_u64(SEED ^ (id as u64 + 1));
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let phase = *control.borrow_and_update();
        let step = match phase {
            Phase::Stop => return,
            Phase::Pause => {
                if control.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Phase::Run(step) => step,
        };
        tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        // Counted in flight before the phase is checked again, so that once the controller
        // has paused and seen nothing in flight, no request of the old step starts.
        ledger.in_flight.fetch_add(1, Ordering::SeqCst);
        if *control.borrow() != Phase::Run(step) {
            ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let n = numbers[rng.random_range(0..numbers.len())];
        let mobile = counter.fetch_add(1, Ordering::Relaxed) % 4 == 3;
        let record = ask(&mut conn, target, n, mobile, step).await;
        ledger.record_user(record);
        ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One user request; a broken connection is replaced on the next one.
async fn ask(
    conn: &mut Option<Conn>,
    target: SocketAddr,
    n: u64,
    mobile: bool,
    step: usize,
) -> UserRecord {
    let failed = UserRecord {
        step,
        version: None,
        status: None,
        correct: false,
    };
    if !conn.as_ref().is_some_and(Conn::is_usable) {
        match Conn::open(target, USER_TIMEOUT).await {
            Ok(c) => *conn = Some(c),
            Err(_) => {
                *conn = None;
                return failed;
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return failed;
    };
    let user_agent = if mobile { MOBILE } else { DESKTOP };
    let path = format!("/factor/{n}");
    let answer = match c
        .send(
            Method::GET,
            &path,
            &[("host", HOST), ("user-agent", user_agent)],
            USER_TIMEOUT,
        )
        .await
    {
        Ok(a) => a,
        Err(_) => {
            *conn = None;
            return failed;
        }
    };
    let version = answer
        .headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| VERSIONS.iter().position(|known| *known == v));
    let correct = answer.status == http::StatusCode::OK
        && factors_of(&answer.body).is_some_and(|f| {
            f.iter()
                .try_fold(1u64, |acc, p| acc.checked_mul(*p))
                .is_some_and(|product| product == n)
        });
    UserRecord {
        step,
        version,
        status: Some(answer.status.as_u16()),
        correct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_fixed_and_varied() {
        let a = numbers(300);
        assert_eq!(a, numbers(300), "same seed, same numbers");
        let small = a.iter().filter(|n| **n < 1_000_000).count();
        assert!((50..=100).contains(&small), "{small} small numbers");
        let semiprimes = a
            .iter()
            .filter(|n| **n >= 1 << 34)
            .filter(|n| factor::pollard_rho(**n).len() == 2)
            .count();
        assert!(semiprimes >= 200, "{semiprimes} large semiprimes");
        assert!(a.iter().all(|n| *n >= 2 && *n < 1 << 48));
    }
}
