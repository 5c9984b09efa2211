//! `shadowplane backend`: the demo backend (see [`shadowplane::backend`]).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use shadowplane::backend::{self, Algorithm, BackendConfig};

pub(super) const AFTER_HELP: &str = "\
Routes (every response carries `x-backend-version: <name>`; every request is logged at info):
  GET /factor/<n>, /factor?n=<n>  prime factors of n (1 to 18446744073709551615), as JSON:
                                  {\"n\":..,\"factors\":[..],\"version\":..,\"algorithm\":..,\"elapsed_us\":..}
                                  a bad n is a 400 with {\"error\":..}
  /status/<code>                  an empty response with that status (200-599)
  /headers                        the request headers (JSON)
  /anything[/...]                 an echo of the request: method, path, query, headers, body
  /healthz                        200 ok

Algorithms (same answers, different cost):
  trial-division  divides by every candidate up to the square root: microseconds for small or
                  smooth numbers, seconds for a product of two 31-bit primes, tens of seconds
                  for a 64-bit prime
  pollard-rho     Miller-Rabin and Brent's rho: about a millisecond for any 64-bit number
At most one factorization per CPU runs at a time; the others wait.

Examples:
  # The calc walkthrough's three versions (examples/calc/service-entry.yaml points here)
  shadowplane backend --name v1 --listen 127.0.0.1:9001
  shadowplane backend --name v2 --listen 127.0.0.1:9002
  shadowplane backend --name v3 --listen 127.0.0.1:9003 --algorithm pollard-rho

  curl -si 127.0.0.1:9001/factor/4611685975477714963   # slow: 2147483629 x 2147483647
  curl -si 127.0.0.1:9003/factor?n=4611685975477714963 # fast";

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// The instance name, sent in `x-backend-version` and in every answer (e.g. v1).
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// How /factor factors.
    #[arg(long, value_enum, default_value_t = AlgorithmArg::TrialDivision)]
    pub algorithm: AlgorithmArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// Slow on numbers with two large prime factors
    TrialDivision,
    /// Miller-Rabin and Brent's Pollard rho: fast on every 64-bit number
    PollardRho,
}

impl BackendArgs {
    pub fn to_config(&self) -> BackendConfig {
        let mut cfg = BackendConfig::new(self.name.clone(), self.listen);
        cfg.algorithm = match self.algorithm {
            AlgorithmArg::TrialDivision => Algorithm::TrialDivision,
            AlgorithmArg::PollardRho => Algorithm::PollardRho,
        };
        cfg
    }
}

/// Serve until SIGTERM or Ctrl-C. A port in use or a bad name is an `Err` (exit status 2).
pub(super) fn run(args: &BackendArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.to_config();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shadowplane-backend")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        eprintln!(
            "shadowplane: backend {} ({}) on http://{}/ (Ctrl-C or SIGTERM stops)",
            cfg.name, cfg.algorithm, cfg.listen
        );
        backend::serve(cfg, shadowplane::app::shutdown_signal())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BackendArgs,
    }

    #[test]
    fn flags_map_to_the_config() {
        let w = Wrapper::parse_from([
            "backend",
            "--name",
            "v3",
            "--listen",
            "0.0.0.0:8080",
            "--algorithm",
            "pollard-rho",
        ]);
        let cfg = w.args.to_config();
        assert_eq!(cfg.name, "v3");
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.algorithm, Algorithm::PollardRho);

        let w = Wrapper::parse_from(["backend", "--name", "v1"]);
        assert_eq!(w.args.to_config().algorithm, Algorithm::TrialDivision);
        assert!(
            Wrapper::try_parse_from(["backend", "--name", "v1", "--algorithm", "fast"]).is_err()
        );
    }
}
