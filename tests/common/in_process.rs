//! The daemon in the test's own process: `daemon::run` on listeners the test bound on port 0,
//! with a runtime and a thread of its own as `main` gives it (so a test that blocks its own
//! runtime, on ffprobe say, does not hold the daemon up), logging to `daemon.log` in its
//! directory in the format the binary writes there.
//!
//! The log: a test process has one global subscriber, installed by the first daemon with the
//! daemon's own `telemetry::try_init`, and GStreamer's log is routed into it once (a second
//! route would write every GStreamer line twice). It writes to the running daemon's file, as do
//! GLib's own warnings, which the binary writes to stderr and so to its log. Under nextest
//! every test has a process of its own; under `cargo test` a binary's tests share one, so its
//! in-process daemons take turns, and each log holds its own daemon's lines only.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::glib;
use scorecast::config::LogFormat;
use scorecast::daemon::{self, DaemonError, Overrides};
use tokio::sync::{oneshot, OwnedMutexGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use super::{wait_for, LOG_FILTER, STOP_TIMEOUT};

/// `daemon::run` on a thread of its own; stopped (and waited for) when dropped.
pub struct InProcess {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
    /// Dropped last: the log is redirected only once the daemon has ended.
    _log: LogTurn,
}

impl InProcess {
    /// Starts `daemon::run` with `dir/scorecast.toml` and `dir/data`, as the binary's flags
    /// would set them, on `api` and `rtmp`.
    pub async fn start(
        dir: &Path,
        api: std::net::TcpListener,
        rtmp: std::net::TcpListener,
    ) -> Self {
        let config_path = dir.join("scorecast.toml");
        let overrides = Overrides {
            api_listen: api.local_addr().ok(),
            rtmp_listen: rtmp.local_addr().ok(),
            data_dir: Some(dir.join("data")),
            log_format: None,
        };
        let config = daemon::load_config(Some(&config_path), overrides)
            .unwrap_or_else(|e| panic!("the test's config does not load: {e}"));
        let log = LogTurn::take(config.server.log_format, &dir.join("daemon.log")).await;
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("scorecast".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("a runtime for the daemon");
                runtime.block_on(async move {
                    let api = tokio_listener(api);
                    let rtmp = tokio_listener(rtmp);
                    // A dropped sender stops it too.
                    let stopped = async move {
                        let _ = stop.await;
                    };
                    daemon::run(config, Some(config_path), api, rtmp, stopped).await
                })
            })
            .expect("a thread for the daemon");
        Self {
            shutdown: Some(shutdown),
            thread: Some(thread),
            _log: log,
        }
    }

    /// Whether `daemon::run` has returned.
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// What `daemon::run` returned, once it has: its error in words.
    pub fn outcome(&mut self) -> Result<(), String> {
        let thread = self.thread.take().expect("the daemon is joined once");
        match thread.join() {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the daemon's thread panicked".to_owned()),
        }
    }

    /// Completes the shutdown future, as SIGTERM does in `main`, and waits for `daemon::run`
    /// to return.
    pub async fn stop(mut self) -> Result<(), String> {
        drop(self.shutdown.take());
        wait_for("daemon::run to return", STOP_TIMEOUT, || {
            let ended = self.ended();
            async move { ended.then_some(()) }
        })
        .await;
        self.outcome()
    }
}

impl Drop for InProcess {
    /// A test that ends without `stop`: the daemon stops all the same, before its directory
    /// goes and before the next in-process daemon takes the log.
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        drop(self.shutdown.take());
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while !self.ended() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.ended() {
            eprintln!("daemon::run did not return within {STOP_TIMEOUT:?} of its shutdown");
        } else if let Err(e) = self.outcome() {
            eprintln!("daemon::run ended with: {e}");
        }
    }
}

fn tokio_listener(listener: std::net::TcpListener) -> tokio::net::TcpListener {
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    tokio::net::TcpListener::from_std(listener).expect("a listener on the daemon's runtime")
}

/// The file the test process's log goes to: the running daemon's `daemon.log`, or stderr
/// between daemons.
static LOG_FILE: Mutex<Option<Arc<File>>> = Mutex::new(None);

/// One in-process daemon at a time in a test process, as the log has one file at a time.
static TURN: LazyLock<Arc<tokio::sync::Mutex<()>>> = LazyLock::new(Default::default);

/// This daemon's turn: the log goes to its file until it is dropped.
struct LogTurn {
    _turn: OwnedMutexGuard<()>,
}

impl LogTurn {
    async fn take(format: LogFormat, path: &Path) -> Self {
        let turn = TURN.clone().lock_owned().await;
        install_log(format);
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        *LOG_FILE.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(file));
        Self { _turn: turn }
    }
}

impl Drop for LogTurn {
    fn drop(&mut self) {
        *LOG_FILE.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Installs the process's subscriber and GStreamer's route into it, once; every daemon of the
/// process must log in the same `format`. GLib's own warnings and criticals ("Trying to dispose
/// element …") are not GStreamer's log: the binary's GLib writes them to stderr, which its log
/// file holds, so here they are written to the same file, as GLib formats them there.
fn install_log(format: LogFormat) {
    static INSTALLED: OnceLock<LogFormat> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        scorecast::telemetry::try_init(format, EnvFilter::new(LOG_FILTER), false, LogFile)
            .expect("no other subscriber in a test process");
        scorecast::telemetry::route_gstreamer_log();
        glib::log_set_writer_func(|level, fields| {
            // What GLib's default writer drops, unless G_MESSAGES_DEBUG asks for it.
            if !matches!(level, glib::LogLevel::Info | glib::LogLevel::Debug) {
                let line = glib::log_writer_format_fields(level, fields, false);
                let _ = writeln!(LogFile.make_writer(), "{line}");
            }
            glib::LogWriterOutput::Handled
        });
        format
    });
    assert_eq!(
        installed, format,
        "the in-process daemons of one test process share one log format"
    );
}

/// Writes each log line to [`LOG_FILE`].
struct LogFile;

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(
            LOG_FILE
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

struct LogWriter(Option<Arc<File>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(file) => (&**file).write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &self.0 {
            Some(file) => (&**file).flush(),
            None => std::io::stderr().flush(),
        }
    }
}
