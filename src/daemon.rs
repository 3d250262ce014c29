//! The daemon: checks GStreamer, builds the registry and the configured relays, restores the
//! relays saved in the data dir, runs the RTMP and HTTP servers until shutdown, then stops
//! every relay.
//!
//! Under systemd it reports readiness once the listeners are bound and the relays are back,
//! then a status line and watchdog pings ([`crate::notify`]).
//!
//! Owns the settings it runs with ([`load_config`]: the file and the command line over it),
//! start-up order and shutdown. Listeners are passed in already bound, so tests can bind
//! `127.0.0.1:0` and read the ports back; nothing is accepted on them before the saved relays
//! are back.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api;
use crate::api::auth::{self, Auth, TokenError};
use crate::api::tls::{Tls, TlsError, TlsFiles};
use crate::compat::CompatSettings;
use crate::config::{AuthSettings, Config, ConfigError, LogFormat};
use crate::events::EventBus;
use crate::ingest;
use crate::notify::Notifier;
use crate::pipeline::{self, PipelineError};
use crate::relay::registry::{Origin, Registry, RegistryError};
use crate::relay::spec::RelaySpec;
use crate::relay::store::{Store, StoreError};
use crate::relay::{RelayContext, RelayError, RelayPhase};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("GStreamer elements missing: {}; scripts/deps installs them on Debian 12", .0.join(", "))]
    MissingElements(Vec<&'static str>),
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the API would listen on {0}, beyond this machine, with no token: add [[auth.tokens]] to the config, or set auth.allow_open = true to serve it open")]
    OpenApi(std::net::SocketAddr),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("compat.listen: cannot listen on {addr}: {source}")]
    CompatListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server.destinations_ca_file {path}: {reason}")]
    DestinationsCa { path: String, reason: String },
    #[error("server.srt_listen: cannot listen on {addr}: {source}")]
    SrtListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("relay from the config: {0}")]
    Relay(#[from] RegistryError),
    #[error("relay from the config: {0}")]
    Start(#[from] RelayError),
    #[error("saved relays: {0}; the daemon will not start without them: fix the file, or move it away to start without the relays it holds")]
    State(#[from] StoreError),
}

/// What `scorecast run`'s flags set over the config file; `None` keeps the file's value.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    pub rtmp_listen: Option<SocketAddr>,
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log lines as plain text or as JSON objects (overrides `server.log_format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The settings the daemon runs with: the config file at `path` (the built-in defaults
/// without one), with `overrides` over it.
pub fn load_config(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let server = &mut config.server;
    if let Some(addr) = overrides.api_listen {
        server.api_listen = addr;
    }
    if let Some(addr) = overrides.rtmp_listen {
        server.rtmp_listen = addr;
    }
    if let Some(dir) = overrides.data_dir {
        server.data_dir = dir;
    }
    if let Some(format) = overrides.log_format {
        server.log_format = format;
    }
    Ok(config)
}

/// Whether the API at `addr` would be open beyond this machine: no token, and not
/// `auth.allow_open`.
fn open_beyond_loopback(addr: SocketAddr, auth: &AuthSettings) -> bool {
    !addr.ip().is_loopback() && auth.tokens.is_empty() && !auth.allow_open
}

/// The first of the API's listener and the compatible routes' own (`compat.listen`, held to
/// the same rule) that `auth` would leave open beyond this machine.
fn open_listener(
    api: Option<SocketAddr>,
    compat: &CompatSettings,
    auth: &AuthSettings,
) -> Option<SocketAddr> {
    api.into_iter()
        .chain(compat.listen)
        .find(|addr| open_beyond_loopback(*addr, auth))
}

/// Runs the daemon on bound listeners until `shutdown` completes. With `config_path`, SIGHUP
/// reloads the relays and the API's tokens from that file.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    api_listener: TcpListener,
    rtmp_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let api_addr = api_listener.local_addr().ok();
    if let Some(addr) = open_listener(api_addr, &config.compat, &config.auth) {
        return Err(DaemonError::OpenApi(addr));
    }
    // Token files and credentials are read before anything starts: one missing stops it.
    let credentials = auth::credentials_directory();
    let auth = Auth::new(auth::Rules::load(&config.auth, credentials.as_deref())?);
    let tls = config.server.tls_files().map(Tls::new).transpose()?;
    pipeline::init()?;
    let missing = pipeline::missing_elements();
    if !missing.is_empty() {
        return Err(DaemonError::MissingElements(missing));
    }
    if let Some(ca_file) = &config.server.destinations_ca_file {
        let dir = config.server.data_dir.join("tls");
        pipeline::output::trust_destination_cas(ca_file, &dir).map_err(|reason| {
            DaemonError::DestinationsCa {
                path: ca_file.display().to_string(),
                reason,
            }
        })?;
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

    // The old service's port, when the config names it: bound before anything starts.
    let compat_listener = match config.compat.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::CompatListen { addr, source })?,
        ),
        None => None,
    };
    let compat_addr = compat_listener.as_ref().and_then(|l| l.local_addr().ok());
    let srt_listener = match config.server.srt_listen {
        Some(addr) => {
            let latency = std::time::Duration::from_millis(config.server.srt_latency_ms);
            Some(
                ingest::srt::bind(addr, latency)
                    .await
                    .map_err(|source| DaemonError::SrtListen { addr, source })?,
            )
        }
        None => None,
    };

    // A state file that cannot be read stops the start here, before any relay runs.
    let store = Store::new(&config.server.data_dir);
    let saved = store.load()?;

    let events = Arc::new(EventBus::new(config.server.max_event_streams));
    let registry = Arc::new(
        Registry::new(
            RelayContext {
                program: config.program.clone(),
                hls: config.hls.clone(),
                hls_root: hls_root.clone(),
                slates: Default::default(),
                events: events.clone(),
                queues_dir: Some(config.server.data_dir.join("queues")),
                recordings_root: Some(config.server.data_dir.join("recordings")),
                record: config.record.clone(),
                graphics_dir: Some(config.server.data_dir.join("graphics")),
            },
            Some(store),
        )
        .with_limits(config.limits),
    );
    // The config's relays as last applied: a reload compares the file against these.
    let mut applied = BTreeMap::new();
    for spec in &config.relays {
        let handle = registry.create(spec.clone(), Origin::Config)?;
        handle.start().await?;
        info!(relay = %spec.id, "relay from the config started");
        applied.insert(spec.id.clone(), spec.clone());
    }
    registry.restore(saved).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let rtmp_addr = rtmp_listener.local_addr().ok();
    let ingest_task = tokio::spawn(ingest::serve(
        rtmp_listener,
        registry.clone(),
        config.ingest.clone(),
        stop_rx.clone(),
    ));
    let srt_task = srt_listener.map(|(listener, incoming)| {
        let serving = ingest::srt::serve(
            incoming,
            registry.clone(),
            config.ingest.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            // The listener's socket lives as long as it serves.
            let _listener = listener;
            serving.await;
        })
    });
    let shared = api::Shared {
        registry: registry.clone(),
        hls_root,
        recordings_root: config.server.data_dir.join("recordings"),
        auth: Arc::new(auth.clone()),
        browsers: Arc::new(api::browsers::Browsers::new(&config.server)),
        compat: Arc::new(config.compat.clone()),
    };
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.changed().await;
    };
    let listener = |socket| api::server::Listener {
        socket,
        limits: config.server.http_limits(),
        tls: tls.clone(),
    };
    let compat_task = compat_listener.map(|socket| {
        tokio::spawn(api::serve(
            listener(socket),
            shared.clone(),
            api::Which::Compat,
            stopped(stop_rx.clone()),
        ))
    });
    let api_task = tokio::spawn(api::serve(
        listener(api_listener),
        shared,
        api::Which::All,
        stopped(stop_rx.clone()),
    ));
    info!(api = ?api_addr, tls = tls.is_some(), rtmp = ?rtmp_addr, srt = ?config.server.srt_listen, compat = ?compat_addr, "scorecast ready");
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
            notifier
                .keep_up(
                    || relay_count(&registry),
                    |within| relays_answer(&registry, within),
                )
                .await;
        })
    });

    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(e) => {
            warn!(error = %e, "cannot install the SIGHUP handler; the config cannot be reloaded");
            None
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = async { hangups.as_mut()?.recv().await } => match &config_path {
                Some(path) => {
                    let running = Running {
                        registry: &registry,
                        auth: &auth,
                        tls: tls.as_ref(),
                        api_addr,
                        config: &config,
                    };
                    reload(&running, path, &mut applied).await;
                }
                None => warn!("SIGHUP: the daemon runs on built-in defaults, with no config file to reload"),
            },
        }
    }
    info!("shutting down");
    // Live event streams end first: the API's graceful stop waits for open responses.
    events.close();
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
    if let Some(task) = srt_task {
        let _ = task.await;
    }
    if let Some(task) = compat_task {
        if let Err(e) = task.await {
            error!(error = %e, "compat server task failed");
        }
    }
    info!("stopped");
    Ok(())
}

/// Reads the API's certificate and key again (a renewal replaces the files in place); on an
/// error the certificate in force stays. Turning TLS on or off, or other files, wait for a
/// restart.
fn reload_tls(running: Option<&Tls>, wanted: Option<TlsFiles>) {
    if running.map(Tls::files) != wanted.as_ref() {
        warn!("server.tls_cert or server.tls_key changed in the config; the change takes effect at the next start");
    }
    let Some(tls) = running else { return };
    match tls.reload() {
        Ok(()) => info!("tls certificate reloaded"),
        Err(e) => error!(error = %e, "tls certificate not reloaded; the one in force stays"),
    }
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

/// Progress for the watchdog: the runtime runs (this is called), and every relay's actor
/// answers within `within`, each after a message has gone round its program's bus, and each
/// decoded program has encoded frames since the last check.
async fn relays_answer(registry: &Registry, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    for handle in registry.list() {
        match tokio::time::timeout_at(deadline, handle.ping()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => return Err(format!("relay {}: {why}", handle.id())),
            Ok(Err(e)) => return Err(format!("relay {}: {e}", handle.id())),
            Err(_) => return Err(format!("relay {} did not answer", handle.id())),
        }
    }
    Ok(())
}

/// What a reload acts on.
struct Running<'a> {
    registry: &'a Registry,
    /// The API's tokens, shared with its filters.
    auth: &'a Auth,
    /// The API's certificate, when it serves TLS.
    tls: Option<&'a Tls>,
    api_addr: Option<SocketAddr>,
    /// The config the daemon started with.
    config: &'a Config,
}

/// Applies the config file again (SIGHUP). The `[auth]` section is re-read, token files and
/// credentials included, and swapped in whole under the running API. Relays added to the file
/// are made and started, relays removed from it are deleted, and relays whose spec changed
/// get it (their program is rebuilt); the others are not touched. A file that does not load,
/// or whose tokens cannot be read, changes nothing. Program, HLS and server settings take
/// effect at the next start.
async fn reload(running: &Running<'_>, path: &Path, applied: &mut BTreeMap<String, RelaySpec>) {
    info!(config = %path.display(), "SIGHUP: reloading the config");
    let not_reloaded = |why: &dyn std::fmt::Display| {
        error!(error = %why, "config not reloaded; every relay and token stays as it was");
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return not_reloaded(&e),
    };
    let rules = match auth::Rules::load(&config.auth, auth::credentials_directory().as_deref()) {
        Ok(rules) => rules,
        Err(e) => return not_reloaded(&e),
    };
    if let Some(addr) = open_listener(running.api_addr, &running.config.compat, &config.auth) {
        return not_reloaded(&DaemonError::OpenApi(addr));
    }
    let count = rules.len();
    running.auth.set(rules);
    info!(count, "tokens reloaded");
    reload_tls(running.tls, config.server.tls_files());
    let registry = running.registry;
    let running = running.config;
    if config.program != running.program || config.hls != running.hls {
        warn!("program and hls settings changed in the config; they take effect at the next start");
    }
    if config.compat != running.compat {
        warn!("[compat] changed in the config; it takes effect at the next start");
    }
    let wanted: BTreeMap<String, RelaySpec> = config
        .relays
        .into_iter()
        .map(|spec| (spec.id.clone(), spec))
        .collect();
    let (mut added, mut changed, mut removed) = (0, 0, 0);
    let gone: Vec<String> = applied
        .keys()
        .filter(|id| !wanted.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        match registry.remove(&id).await {
            Ok(()) | Err(RegistryError::NotFound(_)) => {
                info!(relay = %id, "relay gone from the config: deleted");
                applied.remove(&id);
                removed += 1;
            }
            Err(e) => error!(relay = %id, error = %e, "relay gone from the config but not deleted"),
        }
    }
    for (id, spec) in wanted {
        match applied.get(&id) {
            Some(old) if *old == spec => {}
            Some(_) => match registry.replace(spec.clone()).await {
                Ok(_) => {
                    info!(relay = %id, "relay changed in the config: rebuilt with its new spec");
                    applied.insert(id, spec);
                    changed += 1;
                }
                Err(e) => {
                    error!(relay = %id, error = %e, "relay changed in the config but not applied; it keeps its old spec")
                }
            },
            None if registry.origin(&id) == Some(Origin::Api) => {
                warn!(relay = %id, "relay added to the config skipped: a relay made over the API has its id");
            }
            None => match registry.create(spec.clone(), Origin::Config) {
                Ok(handle) => {
                    applied.insert(id.clone(), spec);
                    added += 1;
                    match handle.start().await {
                        Ok(_) => info!(relay = %id, "relay added to the config: started"),
                        Err(e) => {
                            error!(relay = %id, error = %e, "relay added to the config but cannot start")
                        }
                    }
                }
                Err(e) => error!(relay = %id, error = %e, "relay added to the config but not made"),
            },
        }
    }
    info!(added, changed, removed, "config reloaded");
}
