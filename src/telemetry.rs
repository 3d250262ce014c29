//! Logging: `tracing` set-up, and GStreamer's own debug log routed into `tracing`.
//!
//! Owns the global subscriber. It must not decide what is logged elsewhere; modules log with
//! fields and this module only formats and filters.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,scorecast=info";

/// Installs the global subscriber on stdout, filtered by `RUST_LOG` (else [`DEFAULT_FILTER`]).
/// Colour only on a terminal, so journald gets plain text.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Ignore the error when a subscriber is already set (tests may initialise twice).
    let _ = try_init(
        format,
        filter,
        std::io::stdout().is_terminal(),
        std::io::stdout,
    );
}

/// Installs the global subscriber: the events `filter` lets through go to `writer`, each as a
/// line of text (coloured if `ansi`) or as one JSON object per line, for log shippers. Fails
/// when a global subscriber is set already.
pub fn try_init<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).finish().try_init(),
        LogFormat::Json => builder.json().with_ansi(false).finish().try_init(),
    }
}

/// Routes GStreamer's debug log into `tracing`, under the `gstreamer` target.
///
/// GStreamer only produces messages at the levels enabled by `GST_DEBUG`; warnings and errors
/// are enabled by default so element failures reach the journal.
pub fn route_gstreamer_log() {
    if std::env::var_os("GST_DEBUG").is_none() {
        gst::log::set_default_threshold(gst::DebugLevel::Warning);
    }
    gst::log::remove_default_log_function();
    gst::log::add_log_function(|category, level, file, _function, line, object, message| {
        let object = object.map(|o| o.to_string()).unwrap_or_default();
        let message = message.get().map(|m| m.to_string()).unwrap_or_default();
        let category = category.name().to_string();
        let file = file.to_string();
        match level {
            gst::DebugLevel::Error => {
                tracing::error!(target: "gstreamer", category, object, file, line, "{message}")
            }
            gst::DebugLevel::Warning | gst::DebugLevel::Fixme => {
                tracing::warn!(target: "gstreamer", category, object, file, line, "{message}")
            }
            gst::DebugLevel::Info => {
                tracing::info!(target: "gstreamer", category, object, "{message}")
            }
            gst::DebugLevel::Debug => {
                tracing::debug!(target: "gstreamer", category, object, "{message}")
            }
            _ => tracing::trace!(target: "gstreamer", category, object, "{message}"),
        }
    });
}
