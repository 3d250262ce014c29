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
//!   ─ overlaycomposition "overlay" (identity without an overlay) ─ tee "program-tee"     │
//! fallbackswitch "audio-switch" (publisher 0, silence 1) ─ livesync "audio-sync" ◄───────┘
//!   ─ audioconvert ─ avenc_aac "aac" ─ aacparse ─ tee "audio-tee"
//! program-tee ─ per rendition r: queue ─ [videoscale ─ capsfilter] ─ x264enc "enc-<r>"
//!          ─ h264parse ─ tee "video-tee-<r>"
//! video-tee-<r>, audio-tee ─ queues (+ h264parse: byte-stream) ─ hlssink3 "hls-<r>"
//! per FLV encode e: video (the top rendition's video-tee, or an encoder of its own on
//!   program-tee) and audio-tee ─ queues ─ flvmux "flv-<e>" ─ appsink "flv-<e>-feed" ─ Fanout
//! ```
//!
//! The switches and the live syncs are what keep the program on air: when the publisher's
//! pictures stop for [`DEFAULT_INPUT_TIMEOUT`], the switch takes the slate; when they come
//! back, it takes them again. The syncs give everything downstream one segment, one clock
//! and no holes (they repeat the last frame or play silence), so encoders, HLS and every RTMP
//! session carry on as if nothing happened.
//!
//! A passthrough relay (no decoding) has no switch, no slate and no encoders: its one source
//! goes `flvdemux` ─ h264parse ─ tee "video-tee-source" and aacparse ─ tee "audio-tee", then
//! the same HLS and FLV branches, and the program ends with the publisher.
//!
//! Every rendition's encoder sees the same frames from the same tee with the same GOP and no
//! scenecut, so keyframes (and therefore segment boundaries) line up across renditions.
//! Each destination's [`FeedSlot`] on a [`Fanout`] hands FLV buffers to that destination's
//! own pipeline, so a destination that fails or hangs never blocks HLS or another destination.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;

use super::bus::{Segment, INGEST_ENDED, INPUT_SWITCHED};
use super::fanout::{self, Fanout, FeedSlot};
use super::ladder::{self, Encode, Rendition, Variant, SOURCE_RENDITION};
use super::overlay::OverlaySlot;
use super::{link_chain, link_tee, make, PipelineError};
use crate::config::{HlsSettings, ProgramSettings};

/// Pushed FLV the program may have queued; past it the publisher is dropped.
const DEFAULT_INGEST_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Audio timestamp jitter tolerated before audiorate fills or drops samples.
const DEFAULT_AUDIO_TOLERANCE_NS: u64 = 40_000_000;
/// How long flvmux waits for the later of audio and video before writing a tag.
const DEFAULT_FLV_LATENCY_NS: u64 = 500_000_000;
/// Segments kept on disk beyond the playlist window, for players still fetching them.
const DEFAULT_EXTRA_SEGMENT_FILES: u32 = 4;
/// How long removing a branch waits for its tee pads to go idle.
const DEFAULT_UNLINK_TIMEOUT: Duration = Duration::from_secs(2);
/// The publisher's pictures may stop this long before the switch takes the slate.
pub const DEFAULT_INPUT_TIMEOUT: Duration = Duration::from_millis(400);
/// How late a publisher's decoded frame may reach the switch (its dating is by arrival at
/// our RTMP server), before it counts as lost: demuxing, decoding and scaling must fit.
pub const DEFAULT_INPUT_LATENCY: Duration = Duration::from_millis(300);
/// Slack between the switch, which sends each frame when its latency is up, and the live
/// sync after it, which would otherwise fill in for frames at the same moment they arrive.
const DEFAULT_SYNC_SLACK: Duration = Duration::from_millis(100);

/// Where the program's input comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An FLV byte stream pushed by our RTMP server into an appsrc.
    Push,
    /// An external RTMP server, pulled with `rtmp2src`.
    Pull(String),
}

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
    /// The score overlay, for relays that have one.
    pub overlay: Option<Arc<OverlaySlot>>,
    /// The system-clock time the program's timeline starts at: when it was asked for, before
    /// anything arrives. See [`connect_demuxed_pads`].
    pub epoch: gst::ClockTime,
    /// Marked by the RTMP server when the first frame arrives (remuxed push relays).
    pub arrival: Arc<Arrival>,
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
}

/// The inputs of a decoded program: the slate's source and the two switches.
struct Switch {
    slate: gst_app::AppSrc,
    video: gst::Element,
    audio: gst::Element,
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
        if object.is::<gst::Bin>() && name.starts_with("ingest-") {
            return Some(name.to_string());
        }
        current = object.parent();
    }
    None
}

/// One FLV mux and the destinations it feeds. The top rendition's has no branch of its own
/// (it lives as long as the program); the others own an encoder that goes with them.
struct FlvStream {
    fanout: Arc<Fanout>,
    branch: Option<Branch>,
}

/// Elements added to a running pipeline, and the tee pads that feed them.
struct Branch {
    elements: Vec<gst::Element>,
    tee_pads: Vec<(gst::Element, gst::Pad)>,
}

/// Builds the program pipeline. Nothing runs until the caller sets it to `Playing`.
pub fn build(params: &ProgramParams) -> Result<Program, PipelineError> {
    let pipeline = gst::Pipeline::with_name(&format!("relay-{}", params.relay_id));
    // Running time 0 is the epoch, not the moment the pipeline reached Playing: building it
    // takes a while, and the publisher's first frames wait for us meanwhile.
    pipeline.use_clock(Some(&gst::SystemClock::obtain()));
    pipeline.set_start_time(gst::ClockTime::NONE);
    pipeline.set_base_time(params.epoch);

    // Each rendition's video tee, in the order of `renditions`.
    let (renditions, video_tees, program_tee, audio_tee, switch, ingest) = match &params.input {
        Input::Switched(slate) => {
            let (program_tee, audio_tee, switch) = build_program(&pipeline, params, slate)?;
            // The top rendition encodes in a thread of its own, the others one after the
            // other in the thread that feeds the program tee: two encodes at a time on two
            // cores, where one thread each had three or more x264s contend for the cores
            // (ffmpeg runs them all in turn in one thread; BENCHMARKS.md, comparison 2).
            let mut video_tees = Vec::new();
            for (i, r) in params.renditions.iter().enumerate() {
                video_tees.push(add_encoder(
                    &pipeline,
                    &program_tee,
                    &r.name,
                    &r.encode(&params.program),
                    &params.program,
                    i == 0,
                )?);
            }
            let all = &params.renditions[..];
            (
                all,
                video_tees,
                Some(program_tee),
                audio_tee,
                Some(switch),
                None,
            )
        }
        Input::Remux(source) => {
            let (source_el, ingest) = source_element(source, "ingest")?;
            add(&pipeline, &[&source_el])?;
            let (video_tee, audio_tee) = build_remux(&pipeline, &source_el, &params.arrival)?;
            let top = &params.renditions[..1];
            (top, vec![video_tee], None, audio_tee, None, ingest)
        }
    };

    for (r, video_tee) in renditions.iter().zip(&video_tees) {
        add_hls(&pipeline, video_tee, &audio_tee, r, params)?;
    }
    let top_rendition = &renditions[0];
    let top = top_rendition.encode(&params.program);
    let top_tee = &video_tees[0];
    let fanout = Arc::new(Fanout::default());
    let flv = flv_elements(&top_rendition.name, &fanout)?;
    add(&pipeline, &flv.iter().collect::<Vec<_>>())?;
    link_flv(&flv)?;
    link_tee(top_tee, &flv[0])?;
    link_tee(&audio_tee, &flv[3])?;

    let frames = count_buffers(top_tee);
    let last_pts = [last_pts(top_tee), last_pts(&audio_tee)];
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
        ingest,
        switch,
        ingests_built: 0,
        frames,
        last_pts,
        program: params.program.clone(),
        top,
        rungs: renditions
            .iter()
            .map(|r| r.encode(&params.program))
            .zip(video_tees)
            .collect(),
        program_tee,
        audio_tee,
        flv,
        routes: HashMap::new(),
        branches_built: 0,
    })
}

/// The element that produces a source's FLV, and its appsrc when we push into it.
fn source_element(
    source: &Source,
    name: &str,
) -> Result<(gst::Element, Option<gst_app::AppSrc>), PipelineError> {
    Ok(match source {
        Source::Push => {
            let appsrc = gst_app::AppSrc::builder()
                .name(name)
                .caps(&gst::Caps::builder("video/x-flv").build())
                .is_live(true)
                .format(gst::Format::Bytes)
                .stream_type(gst_app::AppStreamType::Stream)
                .max_bytes(DEFAULT_INGEST_MAX_BYTES)
                .block(false)
                .build();
            (appsrc.clone().upcast::<gst::Element>(), Some(appsrc))
        }
        Source::Pull(url) => {
            let src = make("rtmp2src", name)?;
            src.set_property("location", url);
            (src, None)
        }
    })
}

/// The raw video every input is normalised to before the switch: identical caps on both
/// sides, so switching never renegotiates anything downstream.
fn program_video_caps(p: &ProgramSettings) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", p.width as i32)
        .field("height", p.height as i32)
        .field("framerate", gst::Fraction::new(p.fps as i32, 1))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .field("interlace-mode", "progressive")
        .field("colorimetry", "bt709")
        .field("chroma-site", "mpeg2")
        .build()
}

/// The raw audio every input is normalised to before the switch.
fn program_audio_caps(p: &ProgramSettings) -> gst::Caps {
    let caps = gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("layout", "interleaved")
        .field("rate", p.audio_rate as i32)
        .field("channels", p.audio_channels as i32);
    // Decoders name stereo's positions; the silence must too, or a switch changes the caps.
    match p.audio_channels {
        2 => caps.field("channel-mask", gst::Bitmask::new(0x3)).build(),
        _ => caps.build(),
    }
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
        let bin = gst::Bin::with_name(&format!("ingest-{}", self.ingests_built));
        // Its decodebin prerolls on its own: a publisher that never sends a picture must not
        // leave the running program waiting on it.
        bin.set_property("async-handling", true);
        let (source_el, appsrc) = source_element(source, "source")?;
        let decode = make("decodebin", "decode")?;
        let video_in = make("queue", "video-in")?;
        let video_rate = make("videorate", "video-rate")?;
        let video_scale = make("videoscale", "video-scale")?;
        let video_convert = make("videoconvert", "video-convert")?;
        let video_caps = capsfilter("video-caps", program_video_caps(&self.program))?;
        let audio_in = make("queue", "audio-in")?;
        let audio_convert = make("audioconvert", "audio-convert")?;
        // FLV timestamps are whole milliseconds: make the audio timeline continuous again.
        let audio_rate = make("audiorate", "audio-rate")?;
        audio_rate.set_property("tolerance", DEFAULT_AUDIO_TOLERANCE_NS);
        let audio_resample = make("audioresample", "audio-resample")?;
        let audio_caps = capsfilter("audio-caps", program_audio_caps(&self.program))?;
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
            to: self.pipeline.name().to_string(),
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
        self.pipeline.add(&bin).map_err(|_| bin_error())?;
        let mut switch_pads = Vec::new();
        for (ghost, switch) in ghosts.iter().zip([&switch.video, &switch.audio]) {
            match link_pad_to_switch(ghost.upcast_ref(), switch, 0) {
                Ok(pad) => switch_pads.push((switch.clone(), pad)),
                Err(e) => {
                    detach_branch(&self.pipeline, &bin, switch_pads);
                    return Err(e);
                }
            }
        }
        if bin.sync_state_with_parent().is_err() {
            detach_branch(&self.pipeline, &bin, switch_pads);
            return Err(PipelineError::State {
                path: bin.path_string().to_string(),
                state: gst::State::Playing,
            });
        }
        tracing::info!(pipeline = %self.pipeline.name(), branch = %bin.name(), "input attached");
        Ok(IngestBranch {
            bin,
            appsrc,
            arrival,
            switch_pads,
        })
    }

    /// Detaches an input: its switch pads go (the switch falls back to the slate once its
    /// timeout passes) and its elements stop, off the caller's thread.
    pub fn detach(&self, branch: IngestBranch) {
        let pipeline = self.pipeline.clone();
        std::thread::spawn(move || detach_branch(&pipeline, &branch.bin, branch.switch_pads));
    }

    /// Shows `picture` (at the program's size) whenever no publisher is on.
    pub fn set_slate(&self, picture: &image::RgbaImage) {
        if let Some(switch) = &self.switch {
            show_slate(&switch.slate, picture);
        }
    }

    /// Ends the program's stream so every sink finishes (final playlists are written): at the
    /// live syncs for a decoded program (an attached publisher's end never passes its
    /// switch), or at the sources for a remuxed one. The bus then carries EOS.
    pub fn end(&self) {
        match &self.switch {
            Some(_) => {
                for name in ["video-sync", "audio-sync"] {
                    if let Some(pad) = self
                        .pipeline
                        .by_name(name)
                        .and_then(|sync| sync.static_pad("sink"))
                    {
                        pad.send_event(gst::event::Eos::new());
                    }
                }
            }
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
            Some(rung_tee) => (Vec::new(), rung_tee.clone()),
            None => {
                let Some(program_tee) = self.program_tee.clone() else {
                    return Err(PipelineError::Link {
                        from: "the publisher's stream (passthrough)".to_owned(),
                        to: format!("an encode of its own ({})", encode.label()),
                    });
                };
                (
                    encoder_elements(&name, encode, &self.program, true)?,
                    program_tee,
                )
            }
        };
        let fanout = Arc::new(Fanout::default());
        let flv = flv_elements(&name, &fanout)?;
        add(
            &self.pipeline,
            &encoder.iter().chain(&flv).collect::<Vec<_>>(),
        )?;
        link_flv(&flv)?;
        if let Some(tee) = encoder.last() {
            link_chain(&encoder.iter().collect::<Vec<_>>())?;
            link_tee(tee, &flv[0])?;
        }
        // Playing before it is fed, so the tees never push into a stopped element.
        for el in encoder.iter().chain(&flv).rev() {
            let _ = el.sync_state_with_parent();
        }
        let first = encoder.first().unwrap_or(&flv[0]);
        let tee_pads = vec![
            (video_source.clone(), link_tee(&video_source, first)?),
            (self.audio_tee.clone(), link_tee(&self.audio_tee, &flv[3])?),
        ];
        let kind = if encoder.is_empty() { "tap" } else { "encoder" };
        tracing::info!(pipeline = %self.pipeline.name(), encode = %encode.label(), kind, "destination stream added");
        Ok(FlvStream {
            fanout,
            branch: Some(Branch {
                elements: encoder.into_iter().chain(flv).collect(),
                tee_pads,
            }),
        })
    }
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
            |_, _| gst::PadProbeReturn::Drop,
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

/// Unlinks a branch from its tees once their pads are idle, then drops its elements.
fn remove_branch(pipeline: &gst::Pipeline, branch: Branch) {
    for (tee, pad) in branch.tee_pads {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
            if let Some(peer) = pad.peer() {
                let _ = pad.unlink(&peer);
            }
            let _ = done_tx.send(());
            gst::PadProbeReturn::Remove
        });
        if done_rx.recv_timeout(DEFAULT_UNLINK_TIMEOUT).is_err() {
            tracing::warn!(pipeline = %pipeline.name(), pad = %pad.name(), "tee pad never went idle; unlinking it anyway");
            if let Some(peer) = pad.peer() {
                let _ = pad.unlink(&peer);
            }
        }
        tee.release_request_pad(&pad);
    }
    for el in &branch.elements {
        let _ = el.set_state(gst::State::Null);
        let _ = pipeline.remove(el);
    }
    tracing::info!(pipeline = %pipeline.name(), "destination stream removed");
}

/// The slate, the silence, the switches, the live syncs, the overlay and the audio encode:
/// returns the program tee, the audio tee and the inputs' handles. Publishers attach later
/// ([`Program::attach`]).
fn build_program(
    pipeline: &gst::Pipeline,
    params: &ProgramParams,
    slate: &image::RgbaImage,
) -> Result<(gst::Element, gst::Element, Switch), PipelineError> {
    let p = &params.program;
    let slate_src = gst_app::AppSrc::builder()
        .name("slate")
        .caps(
            &gst::Caps::builder("video/x-raw")
                .field("format", "RGBA")
                .field("width", slate.width() as i32)
                .field("height", slate.height() as i32)
                .field("framerate", gst::Fraction::new(0, 1))
                .build(),
        )
        .format(gst::Format::Time)
        .build();
    let slate_convert = make("videoconvert", "slate-convert")?;
    let slate_scale = make("videoscale", "slate-scale")?;
    let freeze = make("imagefreeze", "slate-freeze")?;
    freeze.set_property("is-live", true);
    freeze.set_property("allow-replace", true);
    let slate_caps = capsfilter("slate-caps", program_video_caps(p))?;
    // Queues give the live sources room for the switch's latency.
    let slate_q = make("queue", "slate-q")?;
    let video_switch = make_switch("video-switch")?;
    let video_sync = make_sync("video-sync")?;
    let overlay = match &params.overlay {
        Some(slot) => super::overlay::element(slot)?,
        None => {
            let identity = make("identity", "overlay")?;
            identity.set_property("silent", true);
            identity
        }
    };
    let program_tee = make("tee", "program-tee")?;

    let silence = make("audiotestsrc", "silence")?;
    silence.set_property("is-live", true);
    silence.set_property_from_str("wave", "silence");
    let silence_caps = capsfilter("silence-caps", program_audio_caps(p))?;
    let silence_q = make("queue", "silence-q")?;
    let audio_switch = make_switch("audio-switch")?;
    let audio_sync = make_sync("audio-sync")?;
    let audio_convert = make("audioconvert", "audio-convert")?;
    let aac = make("avenc_aac", "aac")?;
    aac.set_property_from_str("bitrate", &(u64::from(p.audio_kbps) * 1000).to_string());
    let audio_parse = make("aacparse", "audio-parse")?;
    let audio_tee = make("tee", "audio-tee")?;

    let slate_el = slate_src.clone().upcast::<gst::Element>();
    let slate_chain = [
        &slate_el,
        &slate_convert,
        &slate_scale,
        &freeze,
        &slate_caps,
        &slate_q,
    ];
    let video_chain = [&video_switch, &video_sync, &overlay, &program_tee];
    let silence_chain = [&silence, &silence_caps, &silence_q];
    let audio_chain = [
        &audio_switch,
        &audio_sync,
        &audio_convert,
        &aac,
        &audio_parse,
        &audio_tee,
    ];
    for chain in [&slate_chain[..], &video_chain, &silence_chain, &audio_chain] {
        add(pipeline, chain)?;
        link_chain(chain)?;
    }
    // Lowest priority: the switch falls back to these, and starts on them.
    link_switch(&slate_q, &video_switch, 1)?;
    link_switch(&silence_q, &audio_switch, 1)?;
    report_switches(&video_switch);
    one_stream(&video_sync);
    one_stream(&audio_sync);

    let switch = Switch {
        slate: slate_src,
        video: video_switch,
        audio: audio_switch,
    };
    show_slate(&switch.slate, slate);
    Ok((program_tee, audio_tee, switch))
}

/// A `fallbackswitch` that prefers priority 0 and falls back after [`DEFAULT_INPUT_TIMEOUT`].
fn make_switch(name: &str) -> Result<gst::Element, PipelineError> {
    let switch = make("fallbackswitch", name)?;
    switch.set_property("timeout", DEFAULT_INPUT_TIMEOUT.as_nanos() as u64);
    switch.set_property(
        "min-upstream-latency",
        DEFAULT_INPUT_LATENCY.as_nanos() as u64,
    );
    // Start on the slate at once instead of waiting for a publisher that may never come.
    switch.set_property("immediate-fallback", true);
    Ok(switch)
}

/// A `livesync` that gives downstream one segment and no holes.
fn make_sync(name: &str) -> Result<gst::Element, PipelineError> {
    let sync = make("livesync", name)?;
    sync.set_property("single-segment", true);
    sync.set_property("latency", DEFAULT_SYNC_SLACK.as_nanos() as u64);
    Ok(sync)
}

/// Links `src`'s `src` pad to a new pad of `switch` with `priority` (0 is preferred); returns
/// the switch's pad.
fn link_switch(
    src: &gst::Element,
    switch: &gst::Element,
    priority: u32,
) -> Result<gst::Pad, PipelineError> {
    let srcpad = src.static_pad("src").ok_or_else(|| PipelineError::Link {
        from: src.name().to_string(),
        to: switch.name().to_string(),
    })?;
    link_pad_to_switch(&srcpad, switch, priority)
}

fn link_pad_to_switch(
    srcpad: &gst::Pad,
    switch: &gst::Element,
    priority: u32,
) -> Result<gst::Pad, PipelineError> {
    let error = || PipelineError::Link {
        from: srcpad.path_string().to_string(),
        to: switch.name().to_string(),
    };
    let sinkpad = switch.request_pad_simple("sink_%u").ok_or_else(error)?;
    sinkpad.set_property("priority", priority);
    srcpad.link(&sinkpad).map_err(|_| error())?;
    Ok(sinkpad)
}

/// Keeps what leaves a live sync one stream: a switch re-sends the new input's stream
/// start and caps, and the encoders and muxers downstream would start afresh on them (a
/// short segment, a new GOP). A later stream start is replaced by the first one, and caps
/// equal to the last ones by that very event, which the pad then knows it already sent.
/// (Dropping sticky events in a probe trips a GStreamer 1.22 assertion.)
fn one_stream(sync: &gst::Element) {
    let Some(pad) = sync.static_pad("src") else {
        return;
    };
    let sent: Mutex<(Option<gst::Event>, Option<gst::Event>)> = Mutex::default();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(event)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let mut sent = sent.lock().expect("event memory lock poisoned");
        let (first_start, last_caps) = &mut *sent;
        let replacement = match event.view() {
            gst::EventView::StreamStart(_) => match first_start {
                Some(first) => Some(first.clone()),
                None => {
                    *first_start = Some(event.clone());
                    None
                }
            },
            gst::EventView::Caps(c) => match last_caps {
                Some(last) if caps_of(last) == Some(c.caps()) => Some(last.clone()),
                _ => {
                    *last_caps = Some(event.clone());
                    None
                }
            },
            _ => None,
        };
        if let Some(event) = replacement {
            info.data = Some(gst::PadProbeData::Event(event));
        }
        gst::PadProbeReturn::Ok
    });
}

fn caps_of(event: &gst::Event) -> Option<&gst::CapsRef> {
    match event.view() {
        gst::EventView::Caps(c) => Some(c.caps()),
        _ => None,
    }
}

/// Posts [`INPUT_SWITCHED`] on the bus whenever the video switch changes input.
fn report_switches(switch: &gst::Element) {
    switch.connect_notify(Some("active-pad"), |switch, _| {
        let slate = switch
            .property::<Option<gst::Pad>>("active-pad")
            .is_some_and(|pad| pad.property::<u32>("priority") > 0);
        let s = gst::Structure::builder(INPUT_SWITCHED)
            .field("slate", slate)
            .build();
        let _ = switch.post_message(gst::message::Element::builder(s).src(switch).build());
    });
}

/// Hands the slate a new picture; the switch shows it whenever no publisher is on.
fn show_slate(slate: &gst_app::AppSrc, picture: &image::RgbaImage) {
    let buffer = gst::Buffer::from_mut_slice(picture.as_raw().clone());
    if let Err(e) = slate.push_buffer(buffer) {
        tracing::debug!(element = %slate.path_string(), error = ?e, "slate not taken");
    }
}

/// Passthrough: demux and parse the publisher's H.264 and AAC. Returns the video tee
/// (`video-tee-source`) and the audio tee.
fn build_remux(
    pipeline: &gst::Pipeline,
    ingest: &gst::Element,
    arrival: &Arc<Arrival>,
) -> Result<(gst::Element, gst::Element), PipelineError> {
    // No queue between the demuxer and the tees: every branch after a tee starts with a
    // queue of its own, so one more thread hand-over per buffer here would buy nothing (each
    // hand-over is a futex wake and a context switch, the bulk of a passthrough relay's CPU).
    let demux = make("flvdemux", "demux")?;
    let video_parse = make("h264parse", "video-parse")?;
    video_parse.set_property("config-interval", -1i32);
    let video_tee = make("tee", &format!("video-tee-{SOURCE_RENDITION}"))?;
    let audio_parse = make("aacparse", "audio-parse")?;
    let audio_tee = make("tee", "audio-tee")?;
    add(
        pipeline,
        &[&demux, &video_parse, &video_tee, &audio_parse, &audio_tee],
    )?;
    link_chain(&[ingest, &demux])?;
    link_chain(&[&video_parse, &video_tee])?;
    link_chain(&[&audio_parse, &audio_tee])?;
    connect_demuxed_pads(&demux, &video_parse, &audio_parse, arrival);
    Ok((video_tee, audio_tee))
}

/// [queue] ─ [videoscale ─ capsfilter] ─ x264enc ─ capsfilter ─ h264parse ─ tee
/// "video-tee-<name>", named after `name`; the last element is the tee. With `own_thread`,
/// the queue "enc-q-<name>" gives the encode a streaming thread of its own; without, it runs
/// in the thread that feeds the program tee.
fn encoder_elements(
    name: &str,
    encode: &Encode,
    p: &ProgramSettings,
    own_thread: bool,
) -> Result<Vec<gst::Element>, PipelineError> {
    let mut chain = Vec::new();
    if own_thread {
        chain.push(make("queue", &format!("enc-q-{name}"))?);
    }
    if (encode.width, encode.height) != (p.width, p.height) {
        let scale = make("videoscale", &format!("scale-{name}"))?;
        let caps = capsfilter(
            &format!("size-{name}"),
            gst::Caps::builder("video/x-raw")
                .field("width", encode.width as i32)
                .field("height", encode.height as i32)
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        )?;
        chain.extend([scale, caps]);
    }
    let encoder = make_x264(&format!("enc-{name}"), p, encode)?;
    let encoded = capsfilter(
        &format!("enc-caps-{name}"),
        gst::Caps::builder("video/x-h264")
            .field("profile", "high")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
    )?;
    let parse = make("h264parse", &format!("parse-{name}"))?;
    parse.set_property("config-interval", -1i32);
    let tee = make("tee", &format!("video-tee-{name}"))?;
    chain.extend([encoder, encoded, parse, tee]);
    Ok(chain)
}

/// Adds an encoder for `encode` on `program_tee`; returns its output tee.
fn add_encoder(
    pipeline: &gst::Pipeline,
    program_tee: &gst::Element,
    name: &str,
    encode: &Encode,
    p: &ProgramSettings,
    own_thread: bool,
) -> Result<gst::Element, PipelineError> {
    let chain = encoder_elements(name, encode, p, own_thread)?;
    add(pipeline, &chain.iter().collect::<Vec<_>>())?;
    link_chain(&chain.iter().collect::<Vec<_>>())?;
    link_tee(program_tee, &chain[0])?;
    Ok(chain.last().expect("encoder chain").clone())
}

/// One rendition's HLS sink, fed from its video tee and the shared audio tee.
fn add_hls(
    pipeline: &gst::Pipeline,
    video_tee: &gst::Element,
    audio_tee: &gst::Element,
    r: &Rendition,
    params: &ProgramParams,
) -> Result<(), PipelineError> {
    let dir = params.hls_dir.join(&r.name);
    std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let hls = make("hlssink3", &format!("hls-{}", r.name))?;
    let pattern = format!("segment{}-%05d.ts", params.sequence_base);
    hls.set_property("location", dir.join(pattern).display().to_string());
    hls.set_property(
        "playlist-location",
        dir.join("index.m3u8").display().to_string(),
    );
    hls.set_property("target-duration", params.hls.segment_seconds);
    hls.set_property("playlist-length", params.hls.playlist_length);
    hls.set_property(
        "max-files",
        params.hls.playlist_length + DEFAULT_EXTRA_SEGMENT_FILES,
    );
    hls.set_property("enable-program-date-time", true);
    // Our encoders already place a keyframe every GOP, and segments are whole GOPs. Asking for
    // more by time would add a second keyframe a frame away from the GOP's whenever a switch
    // shifts the timeline by a few milliseconds: a one-frame segment.
    hls.set_property("send-keyframe-requests", false);
    let video_q = make("queue", &format!("hls-video-q-{}", r.name))?;
    // Each branch converts the H.264 stream format it needs (byte-stream for TS, avc for FLV).
    let video_parse = make("h264parse", &format!("hls-video-parse-{}", r.name))?;
    let audio_q = make("queue", &format!("hls-audio-q-{}", r.name))?;
    add(pipeline, &[&hls, &video_q, &video_parse, &audio_q])?;
    link_tee(video_tee, &video_q)?;
    link_chain(&[&video_q, &video_parse])?;
    link_request(&video_parse, &hls, "video")?;
    link_tee(audio_tee, &audio_q)?;
    link_request(&audio_q, &hls, "audio")?;
    Ok(())
}

/// video queue ─ h264parse (avc) ─ flvmux ← audio queue; flvmux ─ appsink → `fanout`.
/// In order: video queue, parse, mux, audio queue, appsink.
fn flv_elements(name: &str, fanout: &Arc<Fanout>) -> Result<Vec<gst::Element>, PipelineError> {
    let video_q = make("queue", &format!("flv-video-q-{name}"))?;
    let parse = make("h264parse", &format!("flv-video-parse-{name}"))?;
    let mux = make("flvmux", &format!("flv-{name}"))?;
    mux.set_property("streamable", true);
    // A live aggregator: give it time to see both streams so FLV tags stay in DTS order.
    mux.set_property("latency", DEFAULT_FLV_LATENCY_NS);
    let audio_q = make("queue", &format!("flv-audio-q-{name}"))?;
    let sink = fanout::appsink(&format!("flv-{name}-feed"), fanout);
    Ok(vec![video_q, parse, mux, audio_q, sink])
}

/// Links the elements of [`flv_elements`] among themselves; their queues' inputs stay free.
fn link_flv(elements: &[gst::Element]) -> Result<(), PipelineError> {
    let [video_q, parse, mux, audio_q, sink] = elements else {
        unreachable!("flv elements come from flv_elements");
    };
    link_chain(&[video_q, parse])?;
    link_request(parse, mux, "video")?;
    link_request(audio_q, mux, "audio")?;
    link_chain(&[mux, sink])
}

fn capsfilter(name: &str, caps: gst::Caps) -> Result<gst::Element, PipelineError> {
    let filter = make("capsfilter", name)?;
    filter.set_property("caps", caps);
    Ok(filter)
}

fn add(pipeline: &gst::Pipeline, elements: &[&gst::Element]) -> Result<(), PipelineError> {
    pipeline
        .add_many(elements.iter().copied())
        .map_err(|_| PipelineError::Link {
            from: pipeline.name().to_string(),
            to: elements
                .iter()
                .map(|e| e.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
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
        Some((timestamp, at)) => at.nseconds() as i64 - base - timestamp as i64,
        None => {
            let now = gst::SystemClock::obtain().time().nseconds() as i64;
            now - base - running_time(pad, buffer).unwrap_or(0)
        }
    }
}

/// `buffer`'s running time on `pad`, in nanoseconds.
fn running_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<i64> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = event.segment().downcast_ref::<gst::ClockTime>()?.clone();
    let running = segment.to_running_time(buffer.pts()?)?;
    Some(running.nseconds() as i64)
}

fn link_request(
    src: &gst::Element,
    sink: &gst::Element,
    pad_name: &str,
) -> Result<(), PipelineError> {
    let error = || PipelineError::Link {
        from: src.name().to_string(),
        to: format!("{}:{pad_name}", sink.name()),
    };
    let sinkpad = sink.request_pad_simple(pad_name).ok_or_else(error)?;
    let srcpad = src.static_pad("src").ok_or_else(error)?;
    srcpad.link(&sinkpad).map_err(|_| error())?;
    Ok(())
}

/// An x264 encoder with the program's broadcast settings: fixed GOP, no scenecut, zero
/// latency, CBR with a VBV buffer. Identical across renditions so keyframes line up.
fn make_x264(
    name: &str,
    p: &ProgramSettings,
    encode: &Encode,
) -> Result<gst::Element, PipelineError> {
    let enc = make("x264enc", name)?;
    enc.set_property("bitrate", encode.video_kbps);
    enc.set_property("key-int-max", encode.gop_frames);
    enc.set_property_from_str("tune", "zerolatency");
    enc.set_property_from_str("speed-preset", &p.x264_preset);
    enc.set_property("vbv-buf-capacity", 1000u32);
    enc.set_property("option-string", "scenecut=0:force-cfr=1");
    Ok(enc)
}

/// A passthrough relay's variant, from the publisher's H.264 caps and the size of its first
/// `segment`. `None` until both are known.
pub fn source_variant(pipeline: &gst::Pipeline, segment: &Segment) -> Option<Variant> {
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
