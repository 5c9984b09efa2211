//! `shadowplane demo`: the calc walkthrough end to end (see [`shadowplane::demo`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use shadowplane::demo::{self, plane::DataPlaneChoice, DemoConfig};

pub(super) const AFTER_HELP: &str = "\
Starts, on 127.0.0.1 and free ports: serve on a temporary config folder, three demo backends
(v1 and v2 factor by trial division, v3 by Pollard's rho), a data plane fed by serve over xDS
(the built-in forwarder, or Envoy with --envoy) and a loop of users asking GET /factor/<n>
(one in four from a Mobile user-agent). Then it plays the calc walkthrough, rewriting the
YAML files exactly as examples/calc/ holds them, each step for a third of --duration:

  1. baseline  Mobile user-agents go to v2, everyone else to v1
  2. mirror    v1's requests are also mirrored to v3; v3's answers are thrown away
  3. reset     back to the baseline rules

A live table (one plain line a second when stdout is not a terminal) shows per version the
requests received, how many were mirrored copies, errors, the service time (p50/p90/p99)
and what the data plane sent, and how many users got an answer from v3 (always 0). The
summary answers \"is v3 better than v1?\" from the mirror step: the same requests answered by
both, their calculation times compared pair by pair (sign test, median ratio with a 98%
interval), error rates and whether the factors agree.

Exit status: 0 when the story ran (and no user got an answer from v3), 1 when a user did,
130 after Ctrl-C or SIGTERM (everything is stopped, the temporary folder removed and the
summary so far printed, as for any interrupted command), 2 when it cannot start (no Envoy
at the given path, a port problem).

Examples:
  shadowplane demo                      # the forwarder, 30 s
  shadowplane demo --duration 12        # three steps of 4 s
  shadowplane demo --envoy              # a real Envoy from PATH or .venv/bin/envoy
  shadowplane demo --envoy /usr/local/bin/envoy";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The whole story in seconds (each of the three steps gets a third); at least 3.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub duration: Duration,

    /// Use a real Envoy as the data plane: the binary at PATH; without PATH, $ENVOY_BIN, `envoy`
    /// on PATH, then .venv/bin/envoy (where scripts/test.sh installs it).
    #[arg(long, value_name = "PATH", num_args = 0..=1, conflicts_with = "forwarder")]
    pub envoy: Option<Option<PathBuf>>,

    /// Use the built-in forwarder as the data plane (the default).
    #[arg(long)]
    pub forwarder: bool,
}

/// `30`, `30s` or `7.5`: seconds, at least [`demo::MIN_DURATION`].
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let raw = s.trim().strip_suffix('s').unwrap_or(s.trim());
    let secs: f64 = raw
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds; use e.g. 30"))?;
    let min = demo::MIN_DURATION.as_secs_f64();
    if !secs.is_finite() || secs < min {
        return Err(format!(
            "{s} seconds is too short; use at least {min} (a second per step)"
        ));
    }
    if secs > 86_400.0 {
        return Err(format!("{s} seconds is more than a day; use at most 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl DemoArgs {
    /// The data plane the flags ask for (`Err`: `--envoy` without a path and no Envoy found).
    pub fn data_plane(&self) -> anyhow::Result<DataPlaneChoice> {
        match &self.envoy {
            None => Ok(DataPlaneChoice::Forwarder),
            Some(Some(path)) => Ok(DataPlaneChoice::Envoy(path.clone())),
            Some(None) => demo::plane::find_envoy()
                .map(DataPlaneChoice::Envoy)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--envoy: no envoy found ($ENVOY_BIN, envoy on PATH, .venv/bin/envoy); \
                         pass --envoy PATH, or run without --envoy to use the built-in forwarder"
                    )
                }),
        }
    }
}

pub(super) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let data_plane = args.data_plane()?;
    let live = std::io::stdout().is_terminal();
    let cfg = DemoConfig::new(args.duration, data_plane, live);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shadowplane-demo")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(demo::run(
        cfg,
        Box::new(std::io::stdout()),
        shadowplane::app::shutdown_signal(),
    ));
    // A factorization still running on the blocking pool is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let outcome = result?;
    Ok(if outcome.interrupted {
        ExitCode::from(130)
    } else if outcome.users_from_v3 > 0 {
        eprintln!(
            "error: {} users got an answer from v3, which should only have seen mirrored copies",
            outcome.users_from_v3
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DemoArgs,
    }

    #[test]
    fn flags_pick_the_data_plane_and_duration() {
        let w = Wrapper::parse_from(["demo"]);
        assert_eq!(w.args.duration, Duration::from_secs(30));
        assert_eq!(
            w.args.data_plane().expect("default"),
            DataPlaneChoice::Forwarder
        );
        let w = Wrapper::parse_from(["demo", "--forwarder", "--duration", "7.5s"]);
        assert_eq!(w.args.duration, Duration::from_millis(7500));
        assert_eq!(
            w.args.data_plane().expect("forwarder"),
            DataPlaneChoice::Forwarder
        );
        let w = Wrapper::parse_from(["demo", "--envoy", "/opt/envoy"]);
        assert_eq!(
            w.args.data_plane().expect("given"),
            DataPlaneChoice::Envoy(PathBuf::from("/opt/envoy"))
        );
        let w = Wrapper::parse_from(["demo", "--envoy"]);
        assert_eq!(w.args.envoy, Some(None));
        assert!(Wrapper::try_parse_from(["demo", "--envoy", "--forwarder"]).is_err());
        assert!(Wrapper::try_parse_from(["demo", "--duration", "2"]).is_err());
        assert!(Wrapper::try_parse_from(["demo", "--duration", "soon"]).is_err());
    }
}
