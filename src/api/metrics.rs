//! `GET /metrics`: the relays and their destinations in the Prometheus text format (0.0.4),
//! made from the same views the JSON API serves.

use std::fmt::Write;

use super::wire::{RelayView, ScoreView};
use crate::relay::RelayCounters;

/// The media type Prometheus asks for.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const RELAY_STATES: [&str; 5] = ["stopped", "waiting", "starting", "live", "retrying"];
const OUTPUT_STATES: [&str; 5] = ["stopped", "connecting", "live", "retrying", "failed"];

/// One metric family: its samples, written after its `HELP` and `TYPE` lines.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// One relay as `/metrics` reads it: its view, its score when it has one, and its counters.
pub struct Scraped {
    pub relay: RelayView,
    pub score: Option<ScoreView>,
    pub counters: RelayCounters,
}

/// The exposition of every relay.
pub fn render(relays: &[Scraped]) -> String {
    let mut count = Family::new("scorecast_relays", "gauge", "Relays defined.");
    count.add(Vec::new(), relays.len() as f64);
    let mut state = Family::new(
        "scorecast_relay_state",
        "gauge",
        "1 for the state the relay is in, 0 for the others.",
    );
    let mut uptime = Family::new(
        "scorecast_relay_uptime_seconds",
        "gauge",
        "Seconds since the relay was started, while it runs.",
    );
    let mut publisher = Family::new(
        "scorecast_relay_publisher_connected",
        "gauge",
        "1 while a publisher is connected (or a pulled stream is attached).",
    );
    let mut slate = Family::new(
        "scorecast_relay_slate_active",
        "gauge",
        "1 while the program shows the slate instead of the input.",
    );
    let mut frames = Family::new(
        "scorecast_relay_frames_encoded_total",
        "counter",
        "Frames the relay's program has encoded (since its program was last built).",
    );
    let mut frames_dropped = Family::new(
        "scorecast_relay_frames_dropped_total",
        "counter",
        "Program frames the encoder dropped because the CPU could not keep up (since the \
         program was last built).",
    );
    let mut relay_retry = Family::new(
        "scorecast_relay_retry_attempt",
        "gauge",
        "The rebuild attempt a retrying relay waits for; 0 otherwise.",
    );
    let mut overlay_age = Family::new(
        "scorecast_relay_overlay_data_age_seconds",
        "gauge",
        "Seconds since the scoreboard on screen was last confirmed by its source.",
    );
    let mut overlay_stale = Family::new(
        "scorecast_relay_overlay_stale",
        "gauge",
        "1 while the overlay marks its scoreboard as stale.",
    );
    let mut state_seconds = Family::new(
        "scorecast_relay_state_seconds_total",
        "counter",
        "Seconds the relay has spent in each state since it was made.",
    );
    let mut ingest_bytes = Family::new(
        "scorecast_relay_ingest_bytes_total",
        "counter",
        "Bytes its publishers have pushed; rate() gives the ingest bitrate.",
    );
    let mut dropped = Family::new(
        "scorecast_relay_input_frames_dropped_total",
        "counter",
        "Input frames dropped to hold the program's frame rate (restarts with each input).",
    );
    let mut duplicated = Family::new(
        "scorecast_relay_input_frames_duplicated_total",
        "counter",
        "Input frames repeated to hold the program's frame rate (restarts with each input).",
    );
    let mut av_offset = Family::new(
        "scorecast_relay_av_offset_seconds",
        "gauge",
        "The last encoded video timestamp minus the last encoded audio one: steady within a \
         frame or two; a trend is drift.",
    );
    let mut srt_rtt = Family::new(
        "scorecast_relay_srt_rtt_seconds",
        "gauge",
        "An SRT publisher's smoothed round-trip time, when the SRT stack measures it.",
    );
    let mut srt_lost = Family::new(
        "scorecast_relay_srt_packets_lost_total",
        "counter",
        "Packets that went missing on an SRT publisher's link (recovered or dropped), since it connected.",
    );
    let mut srt_retransmitted = Family::new(
        "scorecast_relay_srt_packets_retransmitted_total",
        "counter",
        "Packets that came again after being asked for, since the SRT publisher connected.",
    );
    let mut srt_dropped = Family::new(
        "scorecast_relay_srt_packets_dropped_total",
        "counter",
        "Packets that came too late to play, since the SRT publisher connected.",
    );
    let mut output_state = Family::new(
        "scorecast_output_state",
        "gauge",
        "1 for the state the destination is in, 0 for the others.",
    );
    let mut bytes = Family::new(
        "scorecast_output_bytes_sent_total",
        "counter",
        "Bytes sent to the destination in its current session (resets when it reconnects).",
    );
    let mut output_retry = Family::new(
        "scorecast_output_retry_attempt",
        "gauge",
        "The attempt a retrying destination waits for; 0 otherwise.",
    );
    let mut output_uptime = Family::new(
        "scorecast_output_uptime_seconds",
        "gauge",
        "Seconds since the destination went live, while it is.",
    );

    for Scraped {
        relay,
        score,
        counters,
    } in relays
    {
        let id = || vec![("relay", relay.id.clone())];
        for name in RELAY_STATES {
            let mut labels = id();
            labels.push(("state", name.to_owned()));
            state.add(labels, flag(relay.state == name));
        }
        if let Some(seconds) = relay.uptime {
            uptime.add(id(), seconds);
        }
        publisher.add(id(), flag(relay.publisher.is_some()));
        if let Some(link) = relay.publisher.as_ref().and_then(|p| p.srt.as_ref()) {
            if let Some(rtt) = link.rtt_ms {
                srt_rtt.add(id(), rtt / 1000.0);
            }
            srt_lost.add(id(), link.packets_lost as f64);
            srt_retransmitted.add(id(), link.packets_retransmitted as f64);
            srt_dropped.add(id(), link.packets_dropped as f64);
        }
        let showing = relay.on_air.as_ref().map(|on_air| on_air.showing);
        slate.add(id(), flag(showing == Some("slate")));
        frames.add(id(), relay.frames_encoded as f64);
        frames_dropped.add(id(), relay.frames_dropped as f64);
        relay_retry.add(id(), relay.retry.as_ref().map_or(0.0, |r| r.attempt.into()));
        if let Some(score) = score.as_ref().filter(|s| s.overlay) {
            if let Some(age) = score.age {
                overlay_age.add(id(), age);
            }
            overlay_stale.add(id(), flag(score.stale));
        }
        for (name, seconds) in &counters.state_seconds {
            let mut labels = id();
            labels.push(("state", (*name).to_owned()));
            state_seconds.add(labels, *seconds);
        }
        ingest_bytes.add(id(), counters.bytes_in as f64);
        if let Some((drop, dup)) = counters.input_frames {
            dropped.add(id(), drop as f64);
            duplicated.add(id(), dup as f64);
        }
        if let Some(offset) = counters.av_offset {
            av_offset.add(id(), offset);
        }
        for output in &relay.outputs {
            let ids = || {
                vec![
                    ("relay", relay.id.clone()),
                    ("output", output.spec.id.clone()),
                ]
            };
            for name in OUTPUT_STATES {
                let mut labels = ids();
                labels.push(("state", name.to_owned()));
                output_state.add(labels, flag(output.state == name));
            }
            bytes.add(ids(), output.bytes_sent as f64);
            output_retry.add(
                ids(),
                output.retry.as_ref().map_or(0.0, |r| r.attempt.into()),
            );
            if let Some(seconds) = output.uptime {
                output_uptime.add(ids(), seconds);
            }
        }
    }

    let mut out = String::new();
    for family in [
        count,
        state,
        uptime,
        publisher,
        slate,
        frames,
        frames_dropped,
        relay_retry,
        overlay_age,
        overlay_stale,
        state_seconds,
        ingest_bytes,
        dropped,
        duplicated,
        av_offset,
        srt_rtt,
        srt_lost,
        srt_retransmitted,
        srt_dropped,
        output_state,
        bytes,
        output_retry,
        output_uptime,
    ] {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
