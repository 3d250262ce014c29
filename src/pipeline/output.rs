//! One destination's own pipeline.
//!
//! ```text
//! RTMP(S): appsrc "feed" (FLV from one of the program's FLV muxes, via a FeedSlot)
//!            ─ rtmp2sink "out-<id>"
//! SRT:     appsrc "feed" ─ flvdemux ─ queue + h264parse, queue + aacparse ─ mpegtsmux
//!            ─ srtsink "out-<id>"
//! ```
//!
//! An SRT destination takes MPEG-TS: the same FLV is demuxed and muxed again here, so the
//! program and its fan-out stay one FLV per encode whatever the destinations speak. SRT
//! runs as a caller, with the URL's own options (`passphrase`, `latency`, `streamid`, …);
//! srtsink's own reconnecting is off, so a lost link is a failure that the relay's
//! per-destination backoff retries like any other.
//!
//! Kept apart from the program so that its failure, or an `rtmp2sink` that hangs on a network
//! timeout, touches nothing else: the relay actor can abandon it.

use std::path::Path;

use gio::prelude::*;
use gst::prelude::*;

use super::{add_elements, link_chain, make, PipelineError};

/// FLV the destination may queue before the oldest is dropped.
const DEFAULT_FEED_MAX_BYTES: u64 = 8 * 1024 * 1024;

pub struct OutputPipeline {
    pub pipeline: gst::Pipeline,
    pub feed: gst_app::AppSrc,
    sink: gst::Element,
}

/// Builds (does not start) the pipeline that pushes to `url`.
pub fn build(relay_id: &str, output_id: &str, url: &str) -> Result<OutputPipeline, PipelineError> {
    let pipeline = gst::Pipeline::with_name(&format!("relay-{relay_id}-out-{output_id}"));
    let feed = gst_app::AppSrc::builder()
        .name("feed")
        .is_live(true)
        .format(gst::Format::Time)
        .max_bytes(DEFAULT_FEED_MAX_BYTES)
        .block(false)
        .build();
    feed.set_property_from_str("leaky-type", "downstream");
    let name = format!("out-{output_id}");
    let feed_el = feed.clone().upcast::<gst::Element>();
    let sink = if url.starts_with("srt://") {
        let sink = make("srtsink", &name)?;
        sink.set_property("uri", url);
        sink.set_property("auto-reconnect", false);
        sink.set_property("wait-for-connection", false);
        sink.set_property("sync", false);
        let demux = make("flvdemux", "demux")?;
        let mux = make("mpegtsmux", "mux")?;
        // Seven TS packets per SRT message (1316 bytes), as every SRT receiver expects.
        mux.set_property("alignment", 7i32);
        let video = make("h264parse", "video-parse")?;
        video.set_property("config-interval", -1i32);
        let audio = make("aacparse", "audio-parse")?;
        // A queue per stream: the demuxer pushes both from one thread, and mpegtsmux holds
        // one stream while it waits for the other, so without them the thread blocks on the
        // stream that is ahead and never brings the one the muxer waits for.
        let video_in = make("queue", "video-in")?;
        let audio_in = make("queue", "audio-in")?;
        add_elements(
            &pipeline,
            &[
                &feed_el, &demux, &video_in, &video, &audio_in, &audio, &mux, &sink,
            ],
        )?;
        link_chain(&[&feed_el, &demux])?;
        link_chain(&[&video_in, &video])?;
        link_chain(&[&audio_in, &audio])?;
        link_chain(&[&mux, &sink])?;
        for parse in [&video, &audio] {
            parse.link(&mux).map_err(|_| PipelineError::Link {
                from: parse.name().to_string(),
                to: mux.name().to_string(),
            })?;
        }
        demux.connect_pad_added(move |_, pad| {
            let queue = if pad.name().starts_with("video") {
                &video_in
            } else {
                &audio_in
            };
            if let Some(sink_pad) = queue.static_pad("sink") {
                let _ = pad.link(&sink_pad);
            }
        });
        sink
    } else {
        let sink = make("rtmp2sink", &name)?;
        sink.set_property("location", url);
        sink.set_property("sync", false);
        add_elements(&pipeline, &[&feed_el, &sink])?;
        link_chain(&[&feed_el, &sink])?;
        sink
    };
    Ok(OutputPipeline {
        pipeline,
        feed,
        sink,
    })
}

impl OutputPipeline {
    /// Whether this destination demuxes the FLV it is fed (and so wants its headers in band).
    pub fn demuxes(&self) -> bool {
        self.sink.factory().is_some_and(|f| f.name() == "srtsink")
    }

    /// Bytes written to the destination so far, from the sink's statistics.
    pub fn bytes_sent(&self) -> u64 {
        // srtsink warns in the log when asked before its socket is connected, which it is
        // once the pipeline plays.
        if self.demuxes() && self.pipeline.current_state() != gst::State::Playing {
            return 0;
        }
        let stats = self.sink.property::<gst::Structure>("stats");
        // rtmp2sink counts `out-bytes-total` (a u64); srtsink `bytes-sent-total` (its
        // integer type has varied between releases).
        ["out-bytes-total", "bytes-sent-total", "bytes-sent"]
            .iter()
            .find_map(|field| {
                let value = stats.value(*field).ok()?;
                value
                    .get::<u64>()
                    .ok()
                    .or_else(|| value.get::<i64>().ok().map(|v| v.max(0) as u64))
            })
            .unwrap_or(0)
    }
}

/// The system's CA bundle on Debian, which GIO trusts by default.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Makes RTMPS destinations trust the CA certificates in `ca_file` (PEM) besides the
/// system's. rtmp2sink has no setting of its own for this: its TLS connections use GIO's
/// default database, which becomes the system bundle plus `ca_file`, written together to
/// `dir/destinations-ca.pem`. Process-wide: called once, at start-up.
pub fn trust_destination_cas(ca_file: &Path, dir: &Path) -> Result<(), String> {
    let extra = std::fs::read_to_string(ca_file).map_err(|e| format!("cannot read it: {e}"))?;
    if !extra.contains("-----BEGIN CERTIFICATE-----") {
        return Err("it holds no PEM certificate".to_owned());
    }
    let system = std::fs::read_to_string(SYSTEM_CA_BUNDLE).unwrap_or_default();
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let combined = dir.join("destinations-ca.pem");
    std::fs::write(&combined, format!("{system}\n{extra}"))
        .map_err(|e| format!("cannot write {}: {e}", combined.display()))?;
    let database = gio::TlsFileDatabase::new(&combined).map_err(|e| e.to_string())?;
    gio::TlsBackend::default().set_default_database(Some(&database));
    Ok(())
}
