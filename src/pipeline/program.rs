//! A relay's main pipeline: the *program*.
//!
//! ```text
//! slate:  appsrc "slate" (one RGBA picture) ─ videoconvert ─ imagefreeze (live) ─ capsfilter ─┐
//! silence: audiotestsrc "silence" (live) ─ capsfilter ───────────────────────────────────┐   │
//! each publisher (or pulled stream), a bin "ingest-<n>", attached and detached live:     │   │
//!   source (appsrc | rtmp2src) ─ decodebin ─ video: queue ─ videorate ─ videoscale ─     │   │
//!   videoconvert ─ capsfilter ─► "video"    audio: queue ─ audioconvert ─ audiorate ─    │   │
//!   audioresample ─ capsfilter ─► "audio"                                                │   │
//! fallbackswitch "video-switch" (publisher priority 0, slate 1) ─ livesync "video-sync" ◄┼───┘
//!   ─ identity "overlay" (blends the overlay, see [`super::overlay`]) ─ tee "program-tee"  │
//! program-tee ─ the thumbnail (a JPEG every 2 s, see [`super::thumbnail`])               │
//! fallbackswitch "audio-switch" (publisher 0, silence 1) ─ livesync "audio-sync" ◄───────┘
//!   ─ audioconvert ─ avenc_aac "aac" ─ aacparse ─ tee "audio-tee"
//! program-tee ─ per rendition r: queue ─ [videoscale ─ capsfilter] ─ x264enc "enc-<r>"
//!          ─ h264parse ─ tee "video-tee-<r>"
//! video-tee-<r>, audio-tee ─ queues (+ h264parse: byte-stream) ─ hlssink3 "hls-<r>"
//! per FLV encode e: video (the top rendition's video-tee, or an encoder of its own on
//!   program-tee) and audio-tee ─ queues ─ flvmux "flv-<e>" ─ appsink "flv-<e>-feed" ─ Fanout
//! ```
//!
//! The parts are built elsewhere: the slate, switches and syncs by [`super::switch`], the
//! ingest bins (and passthrough's demuxer) by [`super::input`], the encoders, HLS and FLV
//! branches by [`super::encode`], all as the [`super::ladder`] describes them. This module
//! puts them together into one pipeline, and owns what changes while it runs: attaching and
//! detaching publishers, adding and removing destinations' FLV streams. It must not decide
//! policy (when to attach, retry or tear down: the relay actor does) nor interpret the bus
//! ([`super::bus`] does).
//!
//! A passthrough relay (no decoding) has no switch, no slate and no encoders: its one source
//! goes `flvdemux` ─ h264parse ─ tee "video-tee-source" and aacparse ─ tee "audio-tee", then
//! the same HLS and FLV branches, and the program ends with the publisher.
//!
//! Each destination's [`FeedSlot`] on a [`Fanout`] hands FLV buffers to that destination's
//! own pipeline, so a destination that fails or hangs never blocks HLS or another destination.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;

use super::bus::Segment;
use super::encode::{AudioEncoder, FlvBranch, HlsAudioBranch, HlsBranch, VideoEncoder};
use super::fanout::{Fanout, FeedSlot};
use super::input::{self, Arrival, IngestBranch, Source};
use super::ladder::{self, Encode, Rendition, Variant, SOURCE_RENDITION};
use super::overlay::OverlaySlot;
use super::record::{self, RecordBranch, RecordParams};
use super::switch::{self, Switch};
use super::thumbnail::{self, ThumbnailSlot};
use super::{add_elements, link_chain, link_tee, make, unlink_tee_pad, PipelineError};
use crate::config::{HlsSettings, ProgramSettings};
use crate::relay::spec::SegmentFormat;

/// How long removing a branch waits for its tee pads to go idle.
const DEFAULT_UNLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the program's pictures come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Decoded: the slate (this picture, at the program's size) until a publisher or pulled
    /// stream is attached with [`Program::attach`], and whenever it stops.
    Switched(image::RgbaImage),
    /// One source's H.264 and AAC, remuxed without decoding (passthrough).
    Remux(Source),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ProgramParams {
    pub relay_id: String,
    pub input: Input,
    pub program: ProgramSettings,
    pub hls: HlsSettings,
    /// Every rendition, the top (first) one feeding destinations that share its encode.
    /// When remuxing, only the top one's name is used: the publisher's stream is the one
    /// rendition.
    pub renditions: Vec<Rendition>,
    /// The relay's HLS directory; each rendition writes into a sub-directory of its name.
    pub hls_dir: PathBuf,
    /// Segments earlier programs of this relay wrote: part of segment names, so a name is
    /// never reused for other media.
    pub sequence_base: u64,
    /// MPEG-TS or fMP4 segments.
    pub hls_format: SegmentFormat,
    /// Segments are kept for the DVR ([`super::dvr`] deletes them), not by hlssink3's count.
    pub keep_segments: bool,
    /// The score overlay, for relays that have one.
    pub overlay: Option<Arc<OverlaySlot>>,
    /// Where a decoded program's thumbnail goes.
    pub thumbnail: Option<Arc<ThumbnailSlot>>,
    /// What the program records, if anything.
    pub record: Option<RecordParams>,
    /// The system-clock time the program's timeline starts at: when it was asked for, before
    /// anything arrives (a publisher's stream is dated against it by its arrival).
    pub epoch: gst::ClockTime,
    /// Marked by the RTMP server when the first frame arrives (remuxed push relays).
    pub arrival: Arc<Arrival>,
}

/// A built (not yet playing) program pipeline.
pub struct Program {
    pub pipeline: gst::Pipeline,
    /// The appsrc the RTMP server pushes into, for remuxed push sources.
    pub ingest: Option<gst_app::AppSrc>,
    /// The slate and the switches, for decoded programs.
    switch: Option<Switch>,
    ingests_built: u32,
    /// Encoded video frames so far (the top rendition's): the program's progress.
    pub frames: Arc<AtomicU64>,
    /// Program frames the top encoder could not keep up with and dropped (decoded programs).
    pub frames_dropped: Arc<AtomicU64>,
    /// The timestamps of the last encoded video and audio buffers, in ns (`u64::MAX` before
    /// the first): their difference is the program's A/V offset.
    pub last_pts: [Arc<AtomicU64>; 2],
    program: ProgramSettings,
    /// The top rendition's encode; destinations asking for it share its encoder.
    top: Encode,
    /// Every rendition's encode and video tee: a destination asking for a lower rung's
    /// encode taps that rung's encoder instead of adding one.
    rungs: HashMap<Encode, gst::Element>,
    program_tee: Option<gst::Element>,
    audio_tee: gst::Element,
    /// The FLV streams, by encode, with the destinations each one feeds.
    flv: HashMap<Encode, FlvStream>,
    /// Where each destination is fed from, and its place on that stream's fan-out.
    routes: HashMap<String, (Encode, Arc<FeedSlot>)>,
    branches_built: u32,
    /// The file being recorded, and what the next one needs.
    /// The file being written, if any.
    recording: Option<RecordBranch>,
    /// What the program records, if anything.
    record: Option<RecordParams>,
    records_built: u32,
}

/// One FLV mux and the destinations it feeds. The top rendition's has no branch of its own
/// (it lives as long as the program); the others own an encoder that goes with them.
struct FlvStream {
    fanout: Arc<Fanout>,
    branch: Option<Branch>,
}

/// An FLV stream added to a running pipeline: its encoder (none when it taps a rendition's),
/// its FLV elements, and the tee pads that feed them.
struct Branch {
    encoder: Option<VideoEncoder>,
    flv: FlvBranch,
    tee_pads: Vec<(gst::Element, gst::Pad)>,
}

impl Branch {
    /// Its elements in stream order, encoder first.
    fn elements(&self) -> Vec<&gst::Element> {
        let encoder = self.encoder.iter().flat_map(VideoEncoder::elements);
        encoder.chain(self.flv.elements()).collect()
    }
}

/// What the outputs hang off: a video tee per rendition and the audio tee.
struct Core {
    /// Each rendition with its video tee, in the order of `renditions` (the top one first).
    rungs: Vec<(Rendition, gst::Element)>,
    audio_tee: gst::Element,
    /// Decoded programs: where encoders of destinations' own take the program's pictures.
    program_tee: Option<gst::Element>,
    /// Decoded programs: the slate and the switches.
    switch: Option<Switch>,
    /// Remuxed push programs: the appsrc the RTMP server pushes into.
    ingest: Option<gst_app::AppSrc>,
}

/// Builds the program pipeline. Nothing runs until the caller sets it to `Playing`.
pub fn build(params: &ProgramParams) -> Result<Program, PipelineError> {
    let pipeline = gst::Pipeline::with_name(&format!("relay-{}", params.relay_id));
    // Running time 0 is the epoch, not the moment the pipeline reached Playing: building it
    // takes a while, and the publisher's first frames wait for us meanwhile.
    pipeline.use_clock(Some(&gst::SystemClock::obtain()));
    pipeline.set_start_time(gst::ClockTime::NONE);
    pipeline.set_base_time(params.epoch);

    let core = match &params.input {
        Input::Switched(slate) => build_decoded(&pipeline, params, slate)?,
        Input::Remux(source) => build_remuxed(&pipeline, params, source)?,
    };

    for (r, video_tee) in &core.rungs {
        HlsBranch::add_to(&pipeline, video_tee, &core.audio_tee, r, params)?;
    }
    if params.hls_format == SegmentFormat::Fmp4 {
        HlsAudioBranch::add_to(&pipeline, &core.audio_tee, params)?;
    }
    let (top_rendition, top_tee) = &core.rungs[0];
    let recording = match &params.record {
        Some(record) => Some(record::start(
            &pipeline,
            top_tee,
            &core.audio_tee,
            record,
            1,
        )?),
        None => None,
    };
    let top = top_rendition.encode(&params.program);
    let fanout = Arc::new(Fanout::default());
    let flv = FlvBranch::new(&top_rendition.name, &fanout)?;
    add_elements(&pipeline, &flv.elements())?;
    flv.link()?;
    link_tee(top_tee, &flv.video_queue)?;
    link_tee(&core.audio_tee, &flv.audio_queue)?;

    let frames = count_buffers(top_tee);
    let frames_dropped = count_overruns(&pipeline, &format!("enc-q-{}", top_rendition.name));
    let last_pts = [last_pts(top_tee), last_pts(&core.audio_tee)];
    let mut flv = HashMap::new();
    flv.insert(
        top,
        FlvStream {
            fanout,
            branch: None,
        },
    );
    Ok(Program {
        pipeline,
        ingest: core.ingest,
        switch: core.switch,
        ingests_built: 0,
        frames,
        frames_dropped,
        last_pts,
        program: params.program.clone(),
        top,
        rungs: core
            .rungs
            .into_iter()
            .map(|(r, tee)| (r.encode(&params.program), tee))
            .collect(),
        program_tee: core.program_tee,
        audio_tee: core.audio_tee,
        flv,
        routes: HashMap::new(),
        branches_built: 0,
        recording,
        record: params.record.clone(),
        records_built: 1,
    })
}

/// The slate, the silence, the switches and the live syncs, then the overlay, the program
/// tee with one encoder per rendition, and the audio encode. Publishers attach later
/// ([`Program::attach`]).
fn build_decoded(
    pipeline: &gst::Pipeline,
    params: &ProgramParams,
    slate: &image::RgbaImage,
) -> Result<Core, PipelineError> {
    let p = &params.program;
    let switch = switch::build(pipeline, p, slate)?;
    let overlay = match &params.overlay {
        Some(slot) => super::overlay::element(slot)?,
        None => {
            let identity = make("identity", "overlay")?;
            identity.set_property("silent", true);
            identity
        }
    };
    let program_tee = make("tee", "program-tee")?;
    add_elements(pipeline, &[&overlay, &program_tee])?;
    link_chain(&[&switch.video_sync, &overlay, &program_tee])?;
    if let Some(slot) = &params.thumbnail {
        thumbnail::add_to(pipeline, &program_tee, p, slot)?;
    }
    let audio = AudioEncoder::add_to(pipeline, p)?;
    link_chain(&[&switch.audio_sync, &audio.convert])?;

    // The top rendition encodes in a thread of its own, the others one after the other in
    // the thread that feeds the program tee: two encodes at a time on two cores, where one
    // thread each had three or more x264s contend for the cores (ffmpeg runs them all in
    // turn in one thread; BENCHMARKS.md, comparison 2).
    let mut rungs = Vec::new();
    for (i, r) in params.renditions.iter().enumerate() {
        let encoder = VideoEncoder::new(&r.name, &r.encode(p), p, i == 0)?;
        encoder.add_to(pipeline, &program_tee)?;
        rungs.push((r.clone(), encoder.tee));
    }
    Ok(Core {
        rungs,
        audio_tee: audio.tee,
        program_tee: Some(program_tee),
        switch: Some(switch),
        ingest: None,
    })
}

/// Passthrough: the source and its demuxer, up to the tees of the publisher's own streams,
/// the one rendition (the top one's name).
fn build_remuxed(
    pipeline: &gst::Pipeline,
    params: &ProgramParams,
    source: &Source,
) -> Result<Core, PipelineError> {
    let (source_el, ingest) = input::source_element(source, "ingest")?;
    add_elements(pipeline, &[&source_el])?;
    let remuxed = input::build_remux(pipeline, &source_el, source.container(), &params.arrival)?;
    Ok(Core {
        rungs: vec![(params.renditions[0].clone(), remuxed.video_tee)],
        audio_tee: remuxed.audio_tee,
        program_tee: None,
        switch: None,
        ingest,
    })
}

impl Program {
    /// Feeds destination `id`, which wants `encode` (`None`: the top rendition's). An
    /// encode no stream has yet gets an encoder and FLV mux of its own, added to the running
    /// pipeline without touching the rest.
    pub fn add_destination(
        &mut self,
        id: &str,
        encode: Option<Encode>,
    ) -> Result<(), PipelineError> {
        self.remove_destination(id);
        let encode = encode.unwrap_or(self.top);
        if !self.flv.contains_key(&encode) {
            let stream = self.add_flv_stream(&encode)?;
            self.flv.insert(encode, stream);
        }
        let slot = self.flv[&encode].fanout.add(id);
        self.routes.insert(id.to_owned(), (encode, slot));
        Ok(())
    }

    /// Destination `id`'s feed, where its push pipeline attaches.
    pub fn feed(&self, id: &str) -> Option<Arc<FeedSlot>> {
        self.routes.get(id).map(|(_, slot)| slot.clone())
    }

    /// Stops feeding destination `id`. An encoder that no destination uses any more is
    /// unlinked (when its tee pads are idle) and dropped, off the caller's thread.
    pub fn remove_destination(&mut self, id: &str) {
        let Some((encode, _)) = self.routes.remove(id) else {
            return;
        };
        let Some(stream) = self.flv.get(&encode) else {
            return;
        };
        if stream.fanout.remove(id) || stream.branch.is_none() {
            return;
        }
        let Some(branch) = self.flv.remove(&encode).and_then(|s| s.branch) else {
            return;
        };
        let pipeline = self.pipeline.clone();
        std::thread::spawn(move || remove_branch(&pipeline, branch));
    }

    /// Attaches a publisher (or pulled stream) to a decoded program's switches, on the
    /// running pipeline. The switch takes it as soon as its first frame arrives.
    pub fn attach(&mut self, source: &Source) -> Result<IngestBranch, PipelineError> {
        let Some(switch) = &self.switch else {
            return Err(PipelineError::Link {
                from: "a publisher".to_owned(),
                to: "a passthrough program (it has one source, built with it)".to_owned(),
            });
        };
        self.ingests_built += 1;
        input::attach(
            &self.pipeline,
            self.ingests_built,
            source,
            &self.program,
            switch,
        )
    }

    /// Detaches an input: its switch pads go (the switch falls back to the slate once its
    /// timeout passes) and its elements stop, off the caller's thread.
    pub fn detach(&self, branch: IngestBranch) {
        input::detach(&self.pipeline, branch);
    }

    /// See [`Switch::hold_for_handover`]; a passthrough program has no switch.
    pub fn hold_for_handover(&self, hold: bool) {
        if let Some(switch) = &self.switch {
            switch.hold_for_handover(hold);
        }
    }

    /// Starts the recording's next file and ends the current one, with no frame between
    /// them; nothing for a program that does not record.
    pub fn split_recording(&mut self) -> Result<(), PipelineError> {
        let Some(params) = self.record.clone() else {
            return Ok(());
        };
        let top_tee = self
            .rungs
            .get(&self.top)
            .ok_or_else(|| PipelineError::Link {
                from: "the top rendition".to_owned(),
                to: "a recording".to_owned(),
            })?;
        self.records_built += 1;
        let next = record::start(
            &self.pipeline,
            top_tee,
            &self.audio_tee,
            &params,
            self.records_built,
        )?;
        if let Some(old) = self.recording.replace(next) {
            record::end(&self.pipeline, old);
        }
        Ok(())
    }

    /// Ends recording branch `number` if it is the file being written (it failed): the
    /// program goes on without a recording until [`Program::split_recording`] starts one.
    /// Returns whether it was.
    pub fn drop_recording(&mut self, number: u32) -> bool {
        if self.recording.as_ref().map(|r| r.number) != Some(number) {
            return false;
        }
        if let Some(branch) = self.recording.take() {
            record::end(&self.pipeline, branch);
        }
        if let Some(params) = &self.record {
            params.recording.clear();
        }
        true
    }

    /// Whether it records and has no file open (the last one failed).
    pub fn recording_stopped(&self) -> bool {
        self.record.is_some() && self.recording.is_none()
    }

    /// Shows `picture` (at the program's size) whenever no publisher is on.
    pub fn set_slate(&self, picture: &image::RgbaImage) {
        if let Some(switch) = &self.switch {
            switch.show_slate(picture);
        }
    }

    /// Ends the program's stream so every sink finishes (final playlists are written): at the
    /// live syncs for a decoded program (an attached publisher's end never passes its
    /// switch), or at the sources for a remuxed one. The bus then carries EOS.
    pub fn end(&self) {
        match &self.switch {
            Some(switch) => switch.end(),
            None => {
                self.pipeline.send_event(gst::event::Eos::new());
            }
        }
    }

    /// A new FLV stream for `encode`, on the running pipeline: a tap on the rendition that
    /// has that encode, or else an encoder of its own on the program tee.
    fn add_flv_stream(&mut self, encode: &Encode) -> Result<FlvStream, PipelineError> {
        // Numbered: a branch being removed may still hold its names.
        self.branches_built += 1;
        let name = format!("{}-{}", encode.label(), self.branches_built);
        let (encoder, video_source) = match self.rungs.get(encode) {
            Some(rung_tee) => (None, rung_tee.clone()),
            None => {
                let Some(program_tee) = self.program_tee.clone() else {
                    return Err(PipelineError::Link {
                        from: "the publisher's stream (passthrough)".to_owned(),
                        to: format!("an encode of its own ({})", encode.label()),
                    });
                };
                (
                    Some(VideoEncoder::new(&name, encode, &self.program, true)?),
                    program_tee,
                )
            }
        };
        let fanout = Arc::new(Fanout::default());
        let flv = FlvBranch::new(&name, &fanout)?;
        let mut branch = Branch {
            encoder,
            flv,
            tee_pads: Vec::new(),
        };
        add_elements(&self.pipeline, &branch.elements())?;
        branch.flv.link()?;
        if let Some(encoder) = &branch.encoder {
            link_chain(&encoder.elements())?;
            link_tee(&encoder.tee, &branch.flv.video_queue)?;
        }
        // Playing before it is fed, so the tees never push into a stopped element.
        for el in branch.elements().into_iter().rev() {
            let _ = el.sync_state_with_parent();
        }
        let first = match &branch.encoder {
            Some(encoder) => encoder.input(),
            None => &branch.flv.video_queue,
        };
        branch.tee_pads = vec![
            (video_source.clone(), link_tee(&video_source, first)?),
            (
                self.audio_tee.clone(),
                link_tee(&self.audio_tee, &branch.flv.audio_queue)?,
            ),
        ];
        let kind = if branch.encoder.is_none() {
            "tap"
        } else {
            "encoder"
        };
        tracing::info!(pipeline = %self.pipeline.name(), encode = %encode.label(), kind, "destination stream added");
        Ok(FlvStream {
            fanout,
            branch: Some(branch),
        })
    }
}

/// Unlinks a branch from its tees once their pads are idle, then drops its elements.
fn remove_branch(pipeline: &gst::Pipeline, branch: Branch) {
    for (tee, pad) in &branch.tee_pads {
        if !unlink_tee_pad(tee, pad, DEFAULT_UNLINK_TIMEOUT) {
            tracing::warn!(pipeline = %pipeline.name(), pad = %pad.name(), "tee pad never went idle; unlinked it anyway");
        }
    }
    for el in branch.elements() {
        let _ = el.set_state(gst::State::Null);
        let _ = pipeline.remove(el);
    }
    tracing::info!(pipeline = %pipeline.name(), "destination stream removed");
}

/// Counts buffers entering `element`.
fn count_buffers(element: &gst::Element) -> Arc<AtomicU64> {
    let counter = Arc::new(AtomicU64::new(0));
    if let Some(pad) = element.static_pad("sink") {
        let c = counter.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    counter
}

/// Counts the frames queue `name` of `pipeline` drops when full (it is leaky; none without it).
fn count_overruns(pipeline: &gst::Pipeline, name: &str) -> Arc<AtomicU64> {
    let counter = Arc::new(AtomicU64::new(0));
    if let Some(queue) = pipeline.by_name(name) {
        let c = counter.clone();
        queue.connect("overrun", false, move |_| {
            c.fetch_add(1, Ordering::Relaxed);
            None
        });
    }
    counter
}

/// Keeps the running time of the last buffer into `element` (encoders shift their
/// timestamps within their own segments, so only running times compare).
fn last_pts(element: &gst::Element) -> Arc<AtomicU64> {
    let last = Arc::new(AtomicU64::new(u64::MAX));
    if let Some(pad) = element.static_pad("sink") {
        let l = last.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
                return gst::PadProbeReturn::Ok;
            };
            let running = pad.sticky_event::<gst::event::Segment>(0).and_then(|e| {
                e.segment()
                    .downcast_ref::<gst::ClockTime>()?
                    .to_running_time(pts)
            });
            if let Some(running) = running {
                l.store(running.nseconds(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
    last
}

/// A passthrough relay's variant, from the publisher's H.264 caps and the size of its first
/// `segment`. `None` until both are known.
pub fn source_variant(pipeline: &gst::Pipeline, segment: &Segment) -> Option<Variant> {
    // fMP4's audio segments are not the video's size.
    let rendition = segment.location.parent()?.file_name()?;
    if rendition != SOURCE_RENDITION {
        return None;
    }
    let tee = pipeline.by_name(&format!("video-tee-{SOURCE_RENDITION}"))?;
    let caps = tee.static_pad("sink")?.current_caps()?;
    let s = caps.structure(0)?;
    let (width, height) = (s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?);
    let fps = s
        .get::<gst::Fraction>("framerate")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(0.0, |f| f64::from(f.numer()) / f64::from(f.denom()));
    // avcC holds the SPS's own profile, constraint flags and level; h264parse's names do not
    // carry the flags.
    let named = || ladder::avc1(s.get::<&str>("profile").ok()?, s.get::<&str>("level").ok()?);
    let from_avcc = s.get::<gst::Buffer>("codec_data").ok().and_then(|b| {
        let map = b.map_readable().ok()?;
        let sps = map.get(1..4)?;
        Some(format!("avc1.{:02x}{:02x}{:02x}", sps[0], sps[1], sps[2]))
    });
    let codecs = format!("{},mp4a.40.2", from_avcc.or_else(named)?);
    let bytes = std::fs::metadata(&segment.location).ok()?.len();
    let seconds = segment.duration.seconds_f64();
    if seconds <= 0.0 {
        return None;
    }
    let average = (bytes as f64 * 8.0 / seconds) as u64;
    Some(Variant {
        name: SOURCE_RENDITION.to_owned(),
        width: width as u32,
        height: height as u32,
        fps,
        codecs,
        // One segment is a small sample of a stream whose encoder we do not control.
        average: average * 6 / 5,
        peak: average * 3 / 2,
    })
}

/// Writes `text` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<(), PipelineError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| PipelineError::Io {
            path: path.display().to_string(),
            source,
        })
}
