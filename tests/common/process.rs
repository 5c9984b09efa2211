//! The `shadowplane` binary run as a child process by a test: its stderr is collected line by
//! line (for the startup line and for failure messages), SIGTERM and a bounded wait for its
//! exit code, and a kill on drop if the test did not stop it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running `shadowplane <subcommand>`, killed on drop if still running.
pub struct ShadowplaneProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// For messages: `serve`, `forward`, ...
    what: String,
}

impl ShadowplaneProcess {
    /// `shadowplane` (this package's binary) with stdin closed and `RUST_LOG` unset; add the
    /// arguments and environment, then [`ShadowplaneProcess::spawn`] it.
    pub fn command() -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowplane"));
        cmd.env_remove("RUST_LOG").stdin(Stdio::null());
        cmd
    }

    /// Start `cmd` (from [`ShadowplaneProcess::command`]) with stdout discarded and stderr
    /// collected. Panics if it cannot be started.
    pub fn spawn(mut cmd: Command) -> ShadowplaneProcess {
        let what = cmd
            .get_args()
            .next()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_else(|| "shadowplane".to_string());
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start shadowplane {what}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        ShadowplaneProcess {
            child,
            stderr,
            reader: Some(reader),
            what,
        }
    }

    /// `shadowplane <args>` as [`ShadowplaneProcess::command`] makes it.
    pub fn start(args: &[&str]) -> ShadowplaneProcess {
        let mut cmd = Self::command();
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last `lines` lines of stderr, headed for a failure message.
    pub fn tail(&self, lines: usize) -> String {
        let err = self.stderr();
        let all: Vec<&str> = err.lines().collect();
        format!(
            "--- {} stderr (tail) ---\n{}",
            self.what,
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Panic with its stderr if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early ({status}); stderr:\n{}",
                self.what,
                self.stderr()
            );
        }
    }

    /// Wait (bounded) for the first stderr line containing `needle` and return it. Panics with
    /// the stderr if the process exits or `timeout` passes first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no stderr line with {needle:?} after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait (bounded) for the process to exit and for its stderr to be read; its exit code.
    /// Panics if it is still running after `timeout` or was killed by a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status
                    .code()
                    .unwrap_or_else(|| panic!("{} killed by a signal: {status}", self.what));
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {timeout:?} later; stderr:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ShadowplaneProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
