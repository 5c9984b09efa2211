//! With `--kubernetes`: the diagnostics of each applied (or rejected) config about Kubernetes
//! objects are posted as Kubernetes Events on those objects
//! ([`crate::config_source::kubernetes::events`]). Logging and `/debug/errors` already show
//! them; this only adds the Events.
//!
//! The hook is the app's config state: every apply or rejection stores a new
//! [`ConfigState`], and this task looks for a new one a few times a second, so nothing in
//! the reload path waits on the API server.

use std::sync::Arc;
use std::time::Duration;

use shadowplane_translator::Diagnostic;
use tokio::task::JoinHandle;

use super::{App, ConfigState, Problem};
use crate::config_source::kubernetes::events::EventPoster;
use crate::config_source::KubeSource;

/// How often the config state is looked at.
const POLL: Duration = Duration::from_millis(200);

/// The diagnostics of the latest reading: the rejected one's if it was rejected, else the
/// served one's. `None` for a reading that could not be read at all.
fn latest_diagnostics(state: &ConfigState) -> Option<Vec<Diagnostic>> {
    match (&state.rejected, &state.served) {
        (Some(r), _) => match &r.problem {
            Problem::Diagnostics(d) => Some(d.clone()),
            Problem::Read(_) | Problem::Snapshot(_) => None,
        },
        (None, Some(s)) => Some(s.translation.diagnostics.clone()),
        (None, None) => None,
    }
}

/// Post Events for the diagnostics of every new config state, until aborted.
pub(super) fn spawn(app: Arc<App>, kube: &KubeSource) -> JoinHandle<()> {
    let mut poster = EventPoster::new(kube.client(), kube.references());
    tokio::spawn(async move {
        let mut seen: Option<Arc<ConfigState>> = None;
        loop {
            let state = app.state.load_full();
            if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &state)) {
                if let Some(diagnostics) = latest_diagnostics(&state) {
                    poster.post(&diagnostics).await;
                }
                seen = Some(state);
            }
            tokio::time::sleep(POLL).await;
        }
    })
}
