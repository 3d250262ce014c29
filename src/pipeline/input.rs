//! Where a program's media comes from, up to the switch (decoded programs) or the tees
//! (passthrough).
//!
//! ```text
//! each publisher (or pulled stream), a bin "ingest-<n>", attached and detached live:
//!   source (appsrc | rtmp2src) ─ decodebin ─ video: queue ─ videorate ─ videoscale ─
//!   videoconvert ─ capsfilter ─► ghost "video" ─► video-switch (priority 0)
//!                                audio: queue ─ audioconvert ─ audiorate ─ audioresample ─
//!   capsfilter ─► ghost "audio" ─► audio-switch (priority 0)
//! passthrough: source "ingest" ─ flvdemux ─ h264parse ─ tee "video-tee-source"
//!                                         └ aacparse ─ tee "audio-tee"
//! ```
//!
//! Owns the sources, the ingest bins (their building, their quiet end, their detaching) and
//! the dating of a publisher's stream by its arrival. It must not touch the switch beyond the
//! pads its own branches hold, nor anything after the switch or the tees.

use std::sync::{Arc, Mutex};

use gst::prelude::*;

use super::bus::INGEST_ENDED;
use super::ladder::SOURCE_RENDITION;
use super::switch::{self, link_to_switch, Switch, PUBLISHER_PRIORITY};
use super::{add_elements, capsfilter, drop_data, link_chain, make, PipelineError};
use crate::config::ProgramSettings;

/// Pushed FLV the program may have queued; past it the publisher is dropped.
const DEFAULT_INGEST_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Audio timestamp jitter tolerated before audiorate fills or drops samples.
const DEFAULT_AUDIO_TOLERANCE_NS: u64 = 40_000_000;
/// The start of an ingest bin's name (`ingest-<n>`).
const INGEST_BIN_PREFIX: &str = "ingest-";

/// Where the program's input comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A byte stream pushed into an appsrc: FLV from our RTMP server, MPEG-TS from our SRT
    /// listener.
    Push(Container),
    /// An external server: `rtmp://` pulled with `rtmp2src`, `srt://` called with `srtsrc`.
    Pull(String),
}

/// What a source's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// FLV, as RTMP carries it.
    Flv,
    /// MPEG-TS, as SRT carries it.
    MpegTs,
}

impl Source {
    pub fn container(&self) -> Container {
        match self {
            Source::Push(container) => *container,
            Source::Pull(url) if url.starts_with("srt://") => Container::MpegTs,
            Source::Pull(_) => Container::Flv,
        }
    }
}

impl Container {
    fn caps(self) -> gst::Caps {
        match self {
            Container::Flv => gst::Caps::builder("video/x-flv").build(),
            Container::MpegTs => gst::Caps::builder("video/mpegts")
                .field("systemstream", true)
                .field("packetsize", 188i32)
                .build(),
        }
    }

    /// The demuxer of a passthrough relay.
    fn demuxer(self) -> &'static str {
        match self {
            Container::Flv => "flvdemux",
            Container::MpegTs => "tsdemux",
        }
    }
}

/// When the publisher's first frame reached our RTMP server, and its timestamp there: the
/// program dates the stream by it (see [`connect_demuxed_pads`]).
#[derive(Debug, Default)]
pub struct Arrival(std::sync::OnceLock<(u64, gst::ClockTime)>);

impl Arrival {
    /// Notes the first frame's FLV timestamp (ms) and the clock time now; later calls do
    /// nothing.
    pub fn mark(&self, timestamp_ms: u32) {
        self.0.get_or_init(|| {
            (
                u64::from(timestamp_ms) * 1_000_000,
                gst::SystemClock::obtain().time(),
            )
        });
    }

    fn get(&self) -> Option<(u64, gst::ClockTime)> {
        self.0.get().copied()
    }
}

/// A publisher's (or pulled stream's) decoding branch, feeding the switches.
pub struct IngestBranch {
    bin: gst::Bin,
    /// The appsrc our RTMP server pushes FLV into, for push sources.
    pub appsrc: Option<gst_app::AppSrc>,
    /// Marked when the publisher's first picture reaches our RTMP server.
    pub arrival: Arc<Arrival>,
    /// The switch pads it feeds.
    switch_pads: Vec<(gst::Element, gst::Pad)>,
}

impl IngestBranch {
    /// Its bin's name (`ingest-<n>`), as bus messages from inside it carry in their path.
    pub fn name(&self) -> String {
        self.bin.name().to_string()
    }

    /// Sets the priority of its switch pads (lower is preferred): a caster whose turn ended
    /// steps down to [`switch::OUTGOING_PRIORITY`] while the next one starts.
    pub fn set_priority(&self, priority: u32) {
        for (_, pad) in &self.switch_pads {
            pad.set_property("priority", priority);
        }
    }

    /// The frames its rate adapter dropped and duplicated to hold the program's frame rate.
    pub fn frames_dropped_and_duplicated(&self) -> Option<(u64, u64)> {
        let rate = self.bin.by_name("video-rate")?;
        Some((
            rate.property::<u64>("drop"),
            rate.property::<u64>("duplicate"),
        ))
    }
}

/// The name of the ingest branch `element` (a bus message's source) belongs to, if any:
/// messages from a branch already detached are its last words, not the program's trouble.
pub fn ingest_branch_of(element: &gst::Object) -> Option<String> {
    let mut current = Some(element.clone());
    while let Some(object) = current {
        let name = object.name();
        if object.is::<gst::Bin>() && name.starts_with(INGEST_BIN_PREFIX) {
            return Some(name.to_string());
        }
        current = object.parent();
    }
    None
}

/// The element that produces a source's FLV, and its appsrc when we push into it.
pub(super) fn source_element(
    source: &Source,
    name: &str,
) -> Result<(gst::Element, Option<gst_app::AppSrc>), PipelineError> {
    Ok(match source {
        Source::Push(container) => {
            let appsrc = gst_app::AppSrc::builder()
                .name(name)
                .caps(&container.caps())
                .is_live(true)
                .format(gst::Format::Bytes)
                .stream_type(gst_app::AppStreamType::Stream)
                .max_bytes(DEFAULT_INGEST_MAX_BYTES)
                .block(false)
                .build();
            (appsrc.clone().upcast::<gst::Element>(), Some(appsrc))
        }
        Source::Pull(url) if source.container() == Container::MpegTs => {
            let src = make("srtsrc", name)?;
            src.set_property("uri", url);
            // A lost link is the relay's to retry, with its backoff and the slate on air.
            src.set_property("auto-reconnect", false);
            // srtsrc dates its packets by the clock; the MPEG-TS inside carries the stream's
            // own times, which the demuxer reads, as for a pushed stream.
            if let Some(pad) = src.static_pad("src") {
                pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
                    if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
                        let buffer = buffer.make_mut();
                        buffer.set_pts(gst::ClockTime::NONE);
                        buffer.set_dts(gst::ClockTime::NONE);
                    }
                    gst::PadProbeReturn::Ok
                });
            }
            (src, None)
        }
        Source::Pull(url) => {
            let src = make("rtmp2src", name)?;
            src.set_property("location", url);
            (src, None)
        }
    })
}

/// Builds ingest bin `ingest-<number>` for `source`, adds it to the running `pipeline`,
/// links it to `switch` as the preferred input and starts it. The switch takes it as soon
/// as its first frame arrives.
pub(super) fn attach(
    pipeline: &gst::Pipeline,
    number: u32,
    source: &Source,
    p: &ProgramSettings,
    switch: &Switch,
) -> Result<IngestBranch, PipelineError> {
    let bin = gst::Bin::with_name(&format!("{INGEST_BIN_PREFIX}{number}"));
    // Its decodebin prerolls on its own: a publisher that never sends a picture must not
    // leave the running program waiting on it.
    bin.set_property("async-handling", true);
    let (source_el, appsrc) = source_element(source, "source")?;
    let decode = make("decodebin", "decode")?;
    if let Some(bin) = decode.downcast_ref::<gst::Bin>() {
        bin.connect_element_added(|_, element| no_demuxer_latency(element));
    }
    let video_in = make("queue", "video-in")?;
    let video_rate = make("videorate", "video-rate")?;
    let video_scale = make("videoscale", "video-scale")?;
    let video_convert = make("videoconvert", "video-convert")?;
    let video_caps = capsfilter("video-caps", switch::program_video_caps(p))?;
    let audio_in = make("queue", "audio-in")?;
    let audio_convert = make("audioconvert", "audio-convert")?;
    // FLV timestamps are whole milliseconds: make the audio timeline continuous again.
    let audio_rate = make("audiorate", "audio-rate")?;
    audio_rate.set_property("tolerance", DEFAULT_AUDIO_TOLERANCE_NS);
    let audio_resample = make("audioresample", "audio-resample")?;
    let audio_caps = capsfilter("audio-caps", switch::program_audio_caps(p))?;
    let video_chain = [
        &video_in,
        &video_rate,
        &video_scale,
        &video_convert,
        &video_caps,
    ];
    let audio_chain = [
        &audio_in,
        &audio_convert,
        &audio_rate,
        &audio_resample,
        &audio_caps,
    ];
    let bin_error = || PipelineError::Link {
        from: bin.name().to_string(),
        to: pipeline.name().to_string(),
    };
    bin.add_many([&source_el, &decode])
        .map_err(|_| bin_error())?;
    bin.add_many(video_chain).map_err(|_| bin_error())?;
    bin.add_many(audio_chain).map_err(|_| bin_error())?;
    link_chain(&[&source_el, &decode])?;
    link_chain(&video_chain)?;
    link_chain(&audio_chain)?;
    let arrival = Arc::new(Arrival::default());
    connect_demuxed_pads(&decode, &video_in, &audio_in, &arrival);

    let mut ghosts = Vec::new();
    for (name, last) in [("video", &video_caps), ("audio", &audio_caps)] {
        let target = last.static_pad("src").ok_or_else(bin_error)?;
        let ghost = gst::GhostPad::builder_with_target(&target)
            .map_err(|_| bin_error())?
            .name(name)
            .build();
        bin.add_pad(&ghost).map_err(|_| bin_error())?;
        end_quietly(&ghost, &bin);
        ghosts.push(ghost);
    }
    pipeline.add(&bin).map_err(|_| bin_error())?;
    let mut switch_pads = Vec::new();
    for (ghost, switch) in ghosts.iter().zip([&switch.video, &switch.audio]) {
        match link_to_switch(ghost.upcast_ref(), switch, PUBLISHER_PRIORITY) {
            Ok(pad) => switch_pads.push((switch.clone(), pad)),
            Err(e) => {
                detach_branch(pipeline, &bin, switch_pads);
                return Err(e);
            }
        }
    }
    if bin.sync_state_with_parent().is_err() {
        detach_branch(pipeline, &bin, switch_pads);
        return Err(PipelineError::State {
            path: bin.path_string().to_string(),
            state: gst::State::Playing,
        });
    }
    tracing::info!(pipeline = %pipeline.name(), branch = %bin.name(), "input attached");
    Ok(IngestBranch {
        bin,
        appsrc,
        arrival,
        switch_pads,
    })
}

/// Detaches `branch` from the running `pipeline`, off the caller's thread: its switch pads
/// go (the switch falls back to the slate once its timeout passes) and its elements stop.
pub(super) fn detach(pipeline: &gst::Pipeline, branch: IngestBranch) {
    let pipeline = pipeline.clone();
    std::thread::spawn(move || detach_branch(&pipeline, &branch.bin, branch.switch_pads));
}

/// Drops the end of an ingest branch's stream at `pad` (it must not end the program), and
/// posts [`INGEST_ENDED`] so the relay can detach the branch.
fn end_quietly(pad: &gst::GhostPad, bin: &gst::Bin) {
    let bin = bin.downgrade();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let is_eos = matches!(info.event().map(|e| e.view()), Some(gst::EventView::Eos(_)));
        if !is_eos {
            return gst::PadProbeReturn::Ok;
        }
        if let Some(bin) = bin.upgrade() {
            let s = gst::Structure::builder(INGEST_ENDED)
                .field("branch", bin.name().as_str())
                .build();
            let _ = bin.post_message(gst::message::Element::builder(s).src(&bin).build());
        }
        gst::PadProbeReturn::Drop
    });
}

/// Releases an ingest branch's switch pads (which wakes any of its threads waiting in the
/// switch), then stops and removes the branch.
fn detach_branch(
    pipeline: &gst::Pipeline,
    bin: &gst::Bin,
    switch_pads: Vec<(gst::Element, gst::Pad)>,
) {
    // From now on its output goes nowhere, quietly: an unlinked pad would be an error.
    for ghost in bin.src_pads() {
        ghost.add_probe(
            gst::PadProbeType::BUFFER
                | gst::PadProbeType::BUFFER_LIST
                | gst::PadProbeType::EVENT_DOWNSTREAM,
            |_, info| drop_data(info),
        );
    }
    for (switch, pad) in switch_pads {
        switch.release_request_pad(&pad);
    }
    // Out of the pipeline before it stops: a state change of the pipeline in flight (its
    // decodebin may still be prerolling) would otherwise start it again.
    let _ = pipeline.remove(bin);
    if bin.set_state(gst::State::Null).is_err() {
        tracing::warn!(pipeline = %pipeline.name(), branch = %bin.name(), "input did not stop cleanly");
    }
    tracing::info!(pipeline = %pipeline.name(), branch = %bin.name(), "input detached");
}

/// A passthrough program's parsed streams: each feeds HLS and FLV branches.
pub struct Remuxed {
    /// `video-tee-source`: the publisher's H.264.
    pub video_tee: gst::Element,
    /// `audio-tee`: the publisher's AAC.
    pub audio_tee: gst::Element,
}

/// Passthrough: demux (FLV or MPEG-TS, as `container` says) and parse the publisher's H.264
/// and AAC from `ingest` (already in `pipeline`).
pub(super) fn build_remux(
    pipeline: &gst::Pipeline,
    ingest: &gst::Element,
    container: Container,
    arrival: &Arc<Arrival>,
) -> Result<Remuxed, PipelineError> {
    // No queue between the demuxer and the tees: every branch after a tee starts with a
    // queue of its own, so one more thread hand-over per buffer here would buy nothing (each
    // hand-over is a futex wake and a context switch, the bulk of a passthrough relay's CPU).
    let demux = make(container.demuxer(), "demux")?;
    no_demuxer_latency(&demux);
    let video_parse = make("h264parse", "video-parse")?;
    video_parse.set_property("config-interval", -1i32);
    let video_tee = make("tee", &format!("video-tee-{SOURCE_RENDITION}"))?;
    let audio_parse = make("aacparse", "audio-parse")?;
    let audio_tee = make("tee", "audio-tee")?;
    add_elements(
        pipeline,
        &[&demux, &video_parse, &video_tee, &audio_parse, &audio_tee],
    )?;
    link_chain(&[ingest, &demux])?;
    link_chain(&[&video_parse, &video_tee])?;
    link_chain(&[&audio_parse, &audio_tee])?;
    connect_demuxed_pads(&demux, &video_parse, &audio_parse, arrival);
    Ok(Remuxed {
        video_tee,
        audio_tee,
    })
}

/// Takes tsdemux's own latency (700 ms by default, for PCR-paced playback) off: the program
/// dates a stream by when it arrives and the SRT link has paced it already, so those 700 ms
/// only delayed the program by as much (livesync adds the latency upstream reports).
fn no_demuxer_latency(element: &gst::Element) {
    let is_tsdemux = element
        .factory()
        .is_some_and(|factory| factory.name() == "tsdemux");
    if is_tsdemux {
        element.set_property("latency", 0i32);
    }
}

/// Links a demuxer's (or decodebin's) pads as they appear: video to `video_sink`, audio to
/// `audio_sink` (decodebin's `video-in` and `audio-in` queues, or passthrough's parsers).
///
/// The publisher's timestamps start wherever its own clock was. On the first buffer, both
/// streams are shifted by one shared offset, so audio and video stay in sync, that dates
/// the stream by when its first frame reached our RTMP server (`arrival`): program-date-time
/// in HLS is then the time the relay received each picture, however long decoding took to
/// start. A pulled stream has no such mark; its first buffer is dated "now".
fn connect_demuxed_pads(
    decode: &gst::Element,
    video_sink: &gst::Element,
    audio_sink: &gst::Element,
    arrival: &Arc<Arrival>,
) {
    let video_sink = video_sink.downgrade();
    let audio_sink = audio_sink.downgrade();
    let offset: Arc<Mutex<Option<i64>>> = Arc::default();
    let arrival = arrival.clone();
    decode.connect_pad_added(move |decode, pad| {
        let offset = offset.clone();
        let arrival = arrival.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let shift = *offset
                .lock()
                .expect("offset lock poisoned")
                .get_or_insert_with(|| date_stream(pad, buffer, &arrival));
            pad.set_offset(shift);
            gst::PadProbeReturn::Remove
        });
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(kind) = caps.structure(0).map(|s| s.name().to_string()) else {
            return;
        };
        let target = if kind.starts_with("video/") {
            video_sink.upgrade()
        } else if kind.starts_with("audio/") {
            audio_sink.upgrade()
        } else {
            None
        };
        let Some(sinkpad) = target.and_then(|t| t.static_pad("sink")) else {
            tracing::debug!(element = %decode.path_string(), caps = %kind, "ignoring decoded stream");
            return;
        };
        if sinkpad.is_linked() {
            tracing::warn!(element = %decode.path_string(), caps = %kind, "ignoring a second stream of the same kind");
            return;
        }
        if let Err(e) = pad.link(&sinkpad) {
            tracing::error!(element = %decode.path_string(), caps = %kind, error = ?e, "cannot link decoded stream");
        }
    });
}

/// The offset that dates the stream: its first frame's timestamp maps to the running time
/// at which it arrived, or (without an arrival mark) `buffer` maps to now.
fn date_stream(pad: &gst::Pad, buffer: &gst::BufferRef, arrival: &Arrival) -> i64 {
    let base = pad.parent_element().and_then(|e| e.base_time());
    let Some(base) = base else { return 0 };
    let base = base.nseconds() as i64;
    match arrival.get() {
        // The marked frame's running time, not its timestamp: a queued caster's stream starts
        // at their held keyframe, seconds in, and the segment may start there.
        Some((timestamp, at)) => {
            let marked = gst::ClockTime::from_nseconds(timestamp);
            let running = running_time(pad, marked).unwrap_or(timestamp as i64);
            at.nseconds() as i64 - base - running
        }
        None => {
            let now = gst::SystemClock::obtain().time().nseconds() as i64;
            let running = buffer.pts().and_then(|pts| running_time(pad, pts));
            now - base - running.unwrap_or(0)
        }
    }
}

/// The running time of timestamp `pts` on `pad`, in nanoseconds.
fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<i64> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?.clone();
    let running = segment.to_running_time(pts)?;
    Some(running.nseconds() as i64)
}
