//! The daemon: checks GStreamer, builds the registry and the configured relays, restores the
//! relays saved in the data dir, runs the RTMP and HTTP servers until shutdown, then stops
//! every relay.
//!
//! Under systemd it reports readiness once the listeners are bound and the relays are back,
//! then a status line and watchdog pings ([`crate::notify`]).
//!
//! Owns start-up order and shutdown. Listeners are passed in already bound, so tests can bind
//! `127.0.0.1:0` and read the ports back; nothing is accepted on them before the saved relays
//! are back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api;
use crate::config::Config;
use crate::ingest;
use crate::notify::Notifier;
use crate::pipeline::{self, PipelineError};
use crate::relay::registry::{Origin, Registry, RegistryError};
use crate::relay::store::{Store, StoreError};
use crate::relay::{RelayContext, RelayError, RelayPhase};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("GStreamer elements missing: {}; install the packages listed in the README", .0.join(", "))]
    MissingElements(Vec<&'static str>),
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("relay from the config: {0}")]
    Relay(#[from] RegistryError),
    #[error("relay from the config: {0}")]
    Start(#[from] RelayError),
    #[error("saved relays: {0}; the daemon will not start without them: fix the file, or move it away to start without the relays it holds")]
    State(#[from] StoreError),
}

/// Runs the daemon on bound listeners until `shutdown` completes.
pub async fn run(
    config: Config,
    api_listener: TcpListener,
    rtmp_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    pipeline::init()?;
    let missing = pipeline::missing_elements();
    if !missing.is_empty() {
        return Err(DaemonError::MissingElements(missing));
    }
    let hls_root = config.server.data_dir.join("hls");
    std::fs::create_dir_all(&hls_root).map_err(|source| DaemonError::DataDir {
        path: hls_root.display().to_string(),
        source,
    })?;
    let hls_root = std::fs::canonicalize(&hls_root).map_err(|source| DaemonError::DataDir {
        path: hls_root.display().to_string(),
        source,
    })?;

    // A state file that cannot be read stops the start here, before any relay runs.
    let store = Store::new(&config.server.data_dir);
    let saved = store.load()?;

    let registry = Arc::new(Registry::new(
        RelayContext {
            program: config.program.clone(),
            hls: config.hls.clone(),
            hls_root: hls_root.clone(),
            slates: Default::default(),
        },
        Some(store),
    ));
    for spec in config.relays {
        let id = spec.id.clone();
        let handle = registry.create(spec, Origin::Config)?;
        handle.start().await?;
        info!(relay = %id, "relay from the config started");
    }
    registry.restore(saved).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let rtmp_addr = rtmp_listener.local_addr().ok();
    let api_addr = api_listener.local_addr().ok();
    let ingest_task = tokio::spawn(ingest::serve(
        rtmp_listener,
        registry.clone(),
        stop_rx.clone(),
    ));
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api::serve(
        api_listener,
        registry.clone(),
        hls_root,
        async move {
            let _ = api_stop.changed().await;
        },
    ));
    info!(api = ?api_addr, rtmp = ?rtmp_addr, "scorecast ready");
    let notifier = match Notifier::from_env() {
        Ok(notifier) => notifier.map(Arc::new),
        Err(e) => {
            warn!(error = %e, "NOTIFY_SOCKET is set but cannot be used; systemd is not told");
            None
        }
    };
    let notify_task = notifier.clone().map(|notifier| {
        let registry = registry.clone();
        tokio::spawn(async move {
            let status = relay_count(&registry).await;
            notifier.send(&format!("READY=1\nSTATUS={status}"));
            let answers = registry.clone();
            notifier
                .keep_up(
                    || relay_count(&registry),
                    |within| relays_answer(&answers, within),
                )
                .await;
        })
    });

    shutdown.await;
    info!("shutting down");
    if let Some(notifier) = &notifier {
        notifier.send("STOPPING=1\nSTATUS=stopping");
    }
    if let Some(task) = notify_task {
        task.abort();
    }
    let _ = stop_tx.send(true);
    registry.shutdown_all().await;
    if let Err(e) = ingest_task.await {
        error!(error = %e, "rtmp server task failed");
    }
    if let Err(e) = api_task.await {
        error!(error = %e, "api server task failed");
    }
    info!("stopped");
    Ok(())
}

/// The status line systemd shows: "3 relays, 2 live".
async fn relay_count(registry: &Registry) -> String {
    let handles = registry.list();
    let mut live = 0;
    for handle in &handles {
        if let Ok(status) = handle.status().await {
            live += usize::from(matches!(status.phase, RelayPhase::Live));
        }
    }
    let relays = handles.len();
    let noun = if relays == 1 { "relay" } else { "relays" };
    format!("{relays} {noun}, {live} live")
}

/// Progress for the watchdog: the runtime runs (this is called), and every relay's actor,
/// which also handles its pipelines' bus messages, answers within `within`.
async fn relays_answer(registry: &Registry, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    for handle in registry.list() {
        match tokio::time::timeout_at(deadline, handle.status()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("relay {}: {e}", handle.id())),
            Err(_) => return Err(format!("relay {} did not answer", handle.id())),
        }
    }
    Ok(())
}
