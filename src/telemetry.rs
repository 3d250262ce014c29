//! Logging: `tracing` set-up, and GStreamer's own debug log routed into `tracing`.
//!
//! Owns the global subscriber. It must not decide what is logged elsewhere; modules log with
//! fields and this module only formats and filters.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How often one GStreamer warning or error (by category, file and line) reaches the log: an
/// element repeating itself every second (fmp4mux does, on every live timeout) says it once a
/// minute, with how many times it said it meanwhile.
const GST_REPEAT_EVERY: Duration = Duration::from_secs(60);
/// Places remembered for [`GST_REPEAT_EVERY`]; past this the memory starts again.
const GST_REPEAT_PLACES: usize = 1024;

/// Holds back repeats of one message place within [`GST_REPEAT_EVERY`].
#[derive(Default)]
struct Repeats {
    /// (category, file, line) → when it was last logged, and how often since.
    seen: HashMap<(String, String, u32), (Instant, u64)>,
}

impl Repeats {
    /// `Some(times held back since last logged)` when this place may log now.
    fn pass(&mut self, place: (String, String, u32), now: Instant) -> Option<u64> {
        if self.seen.len() >= GST_REPEAT_PLACES {
            self.seen.clear();
        }
        match self.seen.get_mut(&place) {
            Some((last, held)) if now.duration_since(*last) < GST_REPEAT_EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.seen.insert(place, (now, 0));
                Some(0)
            }
        }
    }
}

/// Routes GStreamer's debug log into `tracing`, under the `gstreamer` target. Warnings and
/// errors from one place are rate-limited ([`GST_REPEAT_EVERY`]).
///
/// GStreamer only produces messages at the levels enabled by `GST_DEBUG`; warnings and errors
/// are enabled by default so element failures reach the journal.
pub fn route_gstreamer_log() {
    if std::env::var_os("GST_DEBUG").is_none() {
        gst::log::set_default_threshold(gst::DebugLevel::Warning);
    }
    let repeats = Mutex::new(Repeats::default());
    gst::log::remove_default_log_function();
    gst::log::add_log_function(
        move |category, level, file, _function, line, object, message| {
            let object = object.map(|o| o.to_string()).unwrap_or_default();
            let category = category.name().to_string();
            let file = file.to_string();
            let loud = matches!(
                level,
                gst::DebugLevel::Error | gst::DebugLevel::Warning | gst::DebugLevel::Fixme
            );
            // How many times it was held back before this one, when it was (tracing leaves a
            // `None` field out).
            let mut held = None;
            if loud {
                let place = (category.clone(), file.clone(), line);
                let mut repeats = repeats.lock().unwrap_or_else(|e| e.into_inner());
                match repeats.pass(place, Instant::now()) {
                    Some(n) => held = (n > 0).then_some(n),
                    None => return,
                }
            }
            let message = message.get().map(|m| m.to_string()).unwrap_or_default();
            match level {
                gst::DebugLevel::Error => {
                    tracing::error!(target: "gstreamer", category, object, file, line, repeated = held, "{message}")
                }
                gst::DebugLevel::Warning | gst::DebugLevel::Fixme => {
                    tracing::warn!(target: "gstreamer", category, object, file, line, repeated = held, "{message}")
                }
                gst::DebugLevel::Info => {
                    tracing::info!(target: "gstreamer", category, object, "{message}")
                }
                gst::DebugLevel::Debug => {
                    tracing::debug!(target: "gstreamer", category, object, "{message}")
                }
                _ => tracing::trace!(target: "gstreamer", category, object, "{message}"),
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_gstreamer_warning_passes_once_a_minute_with_its_count() {
        let mut repeats = Repeats::default();
        let place = || ("fmp4mux".to_owned(), "imp.rs".to_owned(), 2763);
        let start = Instant::now();
        assert_eq!(repeats.pass(place(), start), Some(0));
        for s in 1..=59 {
            assert_eq!(repeats.pass(place(), start + Duration::from_secs(s)), None);
        }
        // Another place is not held back by this one.
        let other = ("aggregator".to_owned(), "gstaggregator.c".to_owned(), 2146);
        assert_eq!(repeats.pass(other, start), Some(0));
        assert_eq!(repeats.pass(place(), start + GST_REPEAT_EVERY), Some(59));
        assert_eq!(
            repeats.pass(place(), start + GST_REPEAT_EVERY + Duration::from_secs(1)),
            None
        );
    }
}
