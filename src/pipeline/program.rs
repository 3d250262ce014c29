//! A relay's main pipeline: the *program*.
//!
//! ```text
//! ingest (appsrc: FLV from our RTMP server | rtmp2src: pull) ─ decodebin "decode"
//!   video: queue "video-in" ─ videorate ─ videoscale ─ videoconvert ─ capsfilter "program-video"
//!          ─ overlaycomposition "overlay" (identity without an overlay) ─ tee "program-tee"
//!   program-tee ─ per rendition r: queue ─ [videoscale ─ capsfilter] ─ x264enc "enc-<r>"
//!          ─ h264parse ─ tee "video-tee-<r>"
//!   audio: queue "audio-in" ─ audioconvert ─ audiorate ─ audioresample ─ capsfilter "program-audio"
//!          ─ avenc_aac "aac" ─ aacparse ─ tee "audio-tee"
//! video-tee-<r>, audio-tee ─ queues (+ h264parse: byte-stream) ─ hlssink3 "hls-<r>"
//! per FLV encode e: video (the top rendition's video-tee, or an encoder of its own on
//!   program-tee) and audio-tee ─ queues ─ flvmux "flv-<e>" ─ appsink "flv-<e>-feed" ─ Fanout
//! ```
//!
//! A passthrough relay (no decoding) has no program-tee and no encoders: `flvdemux` ─
//! h264parse ─ tee "video-tee-source" and aacparse ─ tee "audio-tee", then the same HLS and
//! FLV branches.
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

use super::fanout::{self, Fanout, FeedSlot};
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

/// Where the program's input comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An FLV byte stream pushed by our RTMP server into an appsrc.
    Push,
    /// An external RTMP server, pulled with `rtmp2src`.
    Pull(String),
}

/// One HLS rendition: its name, frame size and video bitrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
}

impl Rendition {
    /// A rendition `height` pixels tall at the program's aspect ratio, or `None` when it would
    /// upscale.
    pub fn for_program(
        name: &str,
        height: u32,
        video_kbps: u32,
        program: &ProgramSettings,
    ) -> Option<Self> {
        if height > program.height {
            return None;
        }
        Some(Self {
            name: name.to_owned(),
            width: width_for(height, program),
            height,
            video_kbps,
        })
    }

    /// The encode that produces this rendition, with the program's GOP.
    pub fn encode(&self, p: &ProgramSettings) -> Encode {
        Encode {
            width: self.width,
            height: self.height,
            video_kbps: self.video_kbps,
            gop_frames: p.fps * p.gop_seconds,
        }
    }
}

/// The even frame width that keeps the program's aspect ratio at `height`.
pub fn width_for(height: u32, program: &ProgramSettings) -> u32 {
    (u64::from(program.width) * u64::from(height) / u64::from(program.height)) as u32 & !1
}

/// What an x264 encode is, as far as sharing it goes: destinations whose encodes are equal
/// share one encoder and one FLV mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encode {
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    pub gop_frames: u32,
}

impl Encode {
    /// A name for its elements: `1280x720-3000k-g60`.
    pub fn label(&self) -> String {
        format!(
            "{}x{}-{}k-g{}",
            self.width, self.height, self.video_kbps, self.gop_frames
        )
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ProgramParams {
    pub relay_id: String,
    pub source: Source,
    pub program: ProgramSettings,
    pub hls: HlsSettings,
    /// Decode, overlay and encode (`true`), or remux the publisher's stream (`false`).
    pub transcode: bool,
    /// Every rendition, the top (first) one feeding destinations that share its encode.
    /// Without transcoding, only the top one's name is used: the publisher's stream is the
    /// one rendition.
    pub renditions: Vec<Rendition>,
    /// The relay's HLS directory; each rendition writes into a sub-directory of its name.
    pub hls_dir: PathBuf,
    /// The score overlay, for relays that have one.
    pub overlay: Option<Arc<OverlaySlot>>,
    /// The system-clock time the program's timeline starts at: when it was asked for, before
    /// anything arrives. See [`connect_demuxed_pads`].
    pub epoch: gst::ClockTime,
    /// Marked by the RTMP server when the first frame arrives (push relays).
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

/// The name of a passthrough relay's one rendition.
pub const SOURCE_RENDITION: &str = "source";

/// A built (not yet playing) program pipeline.
pub struct Program {
    pub pipeline: gst::Pipeline,
    /// The appsrc the RTMP server pushes into, for push sources.
    pub ingest: Option<gst_app::AppSrc>,
    /// Encoded video frames so far (the top rendition's): the program's progress.
    pub frames: Arc<AtomicU64>,
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

    let (ingest_el, ingest) = match &params.source {
        Source::Push => {
            let appsrc = gst_app::AppSrc::builder()
                .name("ingest")
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
            let src = make("rtmp2src", "ingest")?;
            src.set_property("location", url);
            (src, None)
        }
    };
    add(&pipeline, &[&ingest_el])?;

    let renditions = if params.transcode {
        &params.renditions[..]
    } else {
        &params.renditions[..1]
    };
    // Each rendition's video tee, in the order of `renditions`.
    let (video_tees, program_tee, audio_tee) = if params.transcode {
        let (program_tee, audio_tee) = build_program(&pipeline, &ingest_el, params)?;
        let mut video_tees = Vec::new();
        for r in renditions {
            video_tees.push(add_encoder(
                &pipeline,
                &program_tee,
                &r.name,
                &r.encode(&params.program),
                &params.program,
            )?);
        }
        (video_tees, Some(program_tee), audio_tee)
    } else {
        let (video_tee, audio_tee) = build_remux(&pipeline, &ingest_el, &params.arrival)?;
        (vec![video_tee], None, audio_tee)
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
        frames,
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
                (encoder_elements(&name, encode, &self.program)?, program_tee)
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

/// Decoding, normalising and the overlay: returns the program tee and the audio tee.
fn build_program(
    pipeline: &gst::Pipeline,
    ingest: &gst::Element,
    params: &ProgramParams,
) -> Result<(gst::Element, gst::Element), PipelineError> {
    let p = &params.program;
    let decode = make("decodebin", "decode")?;
    let video_in = make("queue", "video-in")?;
    let video_rate = make("videorate", "video-rate")?;
    let video_scale = make("videoscale", "video-scale")?;
    let video_convert = make("videoconvert", "video-convert")?;
    let program_video = capsfilter(
        "program-video",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", p.width as i32)
            .field("height", p.height as i32)
            .field("framerate", gst::Fraction::new(p.fps as i32, 1))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    )?;
    let overlay = match &params.overlay {
        Some(slot) => super::overlay::element(slot)?,
        None => {
            let identity = make("identity", "overlay")?;
            identity.set_property("silent", true);
            identity
        }
    };
    let program_tee = make("tee", "program-tee")?;
    let video_chain = [
        video_in.clone(),
        video_rate,
        video_scale,
        video_convert,
        program_video,
        overlay,
        program_tee.clone(),
    ];

    let audio_in = make("queue", "audio-in")?;
    let audio_convert = make("audioconvert", "audio-convert")?;
    // FLV timestamps are whole milliseconds: make the audio timeline continuous again.
    let audio_rate = make("audiorate", "audio-rate")?;
    audio_rate.set_property("tolerance", DEFAULT_AUDIO_TOLERANCE_NS);
    let audio_resample = make("audioresample", "audio-resample")?;
    let program_audio = capsfilter(
        "program-audio",
        gst::Caps::builder("audio/x-raw")
            .field("rate", p.audio_rate as i32)
            .field("channels", p.audio_channels as i32)
            .build(),
    )?;
    let aac = make("avenc_aac", "aac")?;
    aac.set_property_from_str("bitrate", &(u64::from(p.audio_kbps) * 1000).to_string());
    let audio_parse = make("aacparse", "audio-parse")?;
    let audio_tee = make("tee", "audio-tee")?;
    let audio_chain = [
        audio_in.clone(),
        audio_convert,
        audio_rate,
        audio_resample,
        program_audio,
        aac,
        audio_parse,
        audio_tee.clone(),
    ];

    add(pipeline, &[&decode])?;
    add(pipeline, &video_chain.iter().collect::<Vec<_>>())?;
    add(pipeline, &audio_chain.iter().collect::<Vec<_>>())?;
    link_chain(&[ingest, &decode])?;
    link_chain(&video_chain.iter().collect::<Vec<_>>())?;
    link_chain(&audio_chain.iter().collect::<Vec<_>>())?;
    connect_demuxed_pads(&decode, &video_in, &audio_in, &params.arrival);
    Ok((program_tee, audio_tee))
}

/// Passthrough: demux and parse the publisher's H.264 and AAC. Returns the video tee
/// (`video-tee-source`) and the audio tee.
fn build_remux(
    pipeline: &gst::Pipeline,
    ingest: &gst::Element,
    arrival: &Arc<Arrival>,
) -> Result<(gst::Element, gst::Element), PipelineError> {
    let demux = make("flvdemux", "demux")?;
    let video_in = make("queue", "video-in")?;
    let video_parse = make("h264parse", "video-parse")?;
    video_parse.set_property("config-interval", -1i32);
    let video_tee = make("tee", &format!("video-tee-{SOURCE_RENDITION}"))?;
    let audio_in = make("queue", "audio-in")?;
    let audio_parse = make("aacparse", "audio-parse")?;
    let audio_tee = make("tee", "audio-tee")?;
    add(
        pipeline,
        &[
            &demux,
            &video_in,
            &video_parse,
            &video_tee,
            &audio_in,
            &audio_parse,
            &audio_tee,
        ],
    )?;
    link_chain(&[ingest, &demux])?;
    link_chain(&[&video_in, &video_parse, &video_tee])?;
    link_chain(&[&audio_in, &audio_parse, &audio_tee])?;
    connect_demuxed_pads(&demux, &video_in, &audio_in, arrival);
    Ok((video_tee, audio_tee))
}

/// queue ─ [videoscale ─ capsfilter] ─ x264enc ─ capsfilter ─ h264parse ─ tee "video-tee-<name>",
/// named after `name`; the last element is the tee.
fn encoder_elements(
    name: &str,
    encode: &Encode,
    p: &ProgramSettings,
) -> Result<Vec<gst::Element>, PipelineError> {
    let mut chain = vec![make("queue", &format!("enc-q-{name}"))?];
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
) -> Result<gst::Element, PipelineError> {
    let chain = encoder_elements(name, encode, p)?;
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
    hls.set_property("location", dir.join("segment%05d.ts").display().to_string());
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

/// Links a demuxer's (or decodebin's) pads as they appear: video to `video_in`, audio to
/// `audio_in`.
///
/// The publisher's timestamps start wherever its own clock was. On the first buffer, both
/// streams are shifted by one shared offset, so audio and video stay in sync, that dates
/// the stream by when its first frame reached our RTMP server (`arrival`): program-date-time
/// in HLS is then the time the relay received each picture, however long decoding took to
/// start. A pulled stream has no such mark; its first buffer is dated "now".
fn connect_demuxed_pads(
    decode: &gst::Element,
    video_in: &gst::Element,
    audio_in: &gst::Element,
    arrival: &Arc<Arrival>,
) {
    let video_in = video_in.downgrade();
    let audio_in = audio_in.downgrade();
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
            video_in.upgrade()
        } else if kind.starts_with("audio/") {
            audio_in.upgrade()
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

/// The `CODECS` value of H.264 High at the lowest level that fits `width`x`height` at `fps`,
/// with AAC-LC.
pub fn codecs(width: u32, height: u32, fps: u32) -> String {
    let macroblocks = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let per_second = macroblocks * u64::from(fps);
    // (level_idc, MaxFS, MaxMBPS) from H.264 table A-1.
    const LEVELS: &[(u32, u64, u64)] = &[
        (30, 1_620, 40_500),
        (31, 3_600, 108_000),
        (32, 5_120, 216_000),
        (40, 8_192, 245_760),
        (42, 8_704, 522_240),
        (50, 22_080, 589_824),
        (51, 36_864, 983_040),
    ];
    let level = LEVELS
        .iter()
        .find(|(_, fs, mbps)| macroblocks <= *fs && per_second <= *mbps)
        .map(|(l, _, _)| *l)
        .unwrap_or(52);
    format!("avc1.6400{level:02x},mp4a.40.2")
}

/// One `EXT-X-STREAM-INF` entry of the master playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 when the publisher's stream does not say (then left out).
    pub fps: f64,
    pub codecs: String,
    /// Bits per second, MPEG-TS overhead included.
    pub average: u64,
    pub peak: u64,
}

impl Variant {
    /// A transcoded rendition: its bitrates follow from the CBR settings plus what MPEG-TS
    /// adds. Fitted to segments measured on this project's test runs (720p/480p/360p within
    /// 2 %): about 6 % on video (4-byte headers per 184 bytes, and x264's CBR running a little
    /// over), a padded packet per frame, 12 % on AAC (each ~360-byte frame takes two 188-byte
    /// packets), and ~30 kb/s of PAT, PMT and PCR.
    pub fn for_rendition(r: &Rendition, p: &ProgramSettings) -> Self {
        let video = u64::from(r.video_kbps) * 1000;
        let audio = u64::from(p.audio_kbps) * 1000;
        let per_frame_padding = 110 * 8 * u64::from(p.fps);
        let tables = 30_000;
        let average = video * 106 / 100 + per_frame_padding + audio * 112 / 100 + tables;
        Self {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            fps: f64::from(p.fps),
            codecs: codecs(r.width, r.height, p.fps),
            average,
            // CBR with a one-second VBV: a segment can carry up to a second's extra bits.
            peak: average * 5 / 4,
        }
    }
}

/// The element message hlssink3 posts when it adds a segment to its playlist.
pub const SEGMENT_ADDED: &str = "hls-segment-added";

/// A passthrough relay's variant, from the publisher's H.264 caps and the size of its first
/// segment (`segment`: hlssink3's [`SEGMENT_ADDED`] message). `None` until both are known.
pub fn source_variant(pipeline: &gst::Pipeline, segment: &gst::StructureRef) -> Option<Variant> {
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
    let named = || avc1(s.get::<&str>("profile").ok()?, s.get::<&str>("level").ok()?);
    let from_avcc = s.get::<gst::Buffer>("codec_data").ok().and_then(|b| {
        let map = b.map_readable().ok()?;
        let sps = map.get(1..4)?;
        Some(format!("avc1.{:02x}{:02x}{:02x}", sps[0], sps[1], sps[2]))
    });
    let codecs = format!("{},mp4a.40.2", from_avcc.or_else(named)?);
    let location = segment.get::<&str>("location").ok()?;
    let duration = segment.get::<gst::ClockTime>("duration").ok()?;
    let bytes = std::fs::metadata(location).ok()?.len();
    let seconds = duration.seconds_f64();
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

/// The RFC 6381 name of an H.264 stream from h264parse's `profile` and `level` caps fields.
fn avc1(profile: &str, level: &str) -> Option<String> {
    let (profile_idc, constraints) = match profile {
        "constrained-baseline" => (0x42, 0xe0),
        "baseline" => (0x42, 0x00),
        "main" => (0x4d, 0x40),
        "extended" => (0x58, 0x00),
        "high" => (0x64, 0x00),
        "high-10" => (0x6e, 0x00),
        "high-4:2:2" => (0x7a, 0x00),
        "high-4:4:4" => (0xf4, 0x00),
        _ => return None,
    };
    let level_idc = match level {
        "1b" => 11,
        _ => {
            let (major, minor) = level.split_once('.').unwrap_or((level, "0"));
            major.parse::<u32>().ok()? * 10 + minor.parse::<u32>().ok()?
        }
    };
    Some(format!(
        "avc1.{profile_idc:02x}{constraints:02x}{level_idc:02x}"
    ))
}

/// The master playlist naming every variant's media playlist.
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let frame_rate = if v.fps > 0.0 {
            format!(",FRAME-RATE={:.3}", v.fps)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{}{frame_rate},CODECS=\"{}\"\n{}/index.m3u8\n",
            v.peak, v.average, v.width, v.height, v.codecs, v.name
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rendition(name: &str, height: u32) -> Rendition {
        Rendition::for_program(name, height, 3000, &ProgramSettings::default()).expect("no upscale")
    }

    #[test]
    fn renditions_keep_the_program_aspect_and_never_upscale() {
        assert_eq!(rendition("720p", 720).width, 1280);
        assert_eq!(rendition("360p", 360).width, 640);
        assert_eq!(rendition("480p", 480).width, 852);
        assert!(Rendition::for_program("1080p", 1080, 6000, &ProgramSettings::default()).is_none());
    }

    #[test]
    fn codecs_follow_the_h264_level_table() {
        assert_eq!(codecs(1280, 720, 30), "avc1.64001f,mp4a.40.2");
        assert_eq!(codecs(640, 360, 30), "avc1.64001e,mp4a.40.2");
        assert_eq!(codecs(1920, 1080, 30), "avc1.640028,mp4a.40.2");
    }

    #[test]
    fn master_playlist_names_every_attribute() {
        let p = ProgramSettings::default();
        let text = master_playlist(&[
            Variant::for_rendition(&rendition("720p", 720), &p),
            Variant::for_rendition(&rendition("360p", 360), &p),
        ]);
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
        for attr in [
            "BANDWIDTH=4224700",
            "AVERAGE-BANDWIDTH=3379760",
            "RESOLUTION=1280x720",
            "RESOLUTION=640x360",
            "FRAME-RATE=30.000",
            "CODECS=\"avc1.64001f,mp4a.40.2\"",
        ] {
            assert!(text.contains(attr), "{attr} missing from\n{text}");
        }
        assert!(text.ends_with("360p/index.m3u8\n"));
    }

    #[test]
    fn publisher_codecs_are_named_as_rfc_6381_wants() {
        assert_eq!(avc1("high", "3.1").as_deref(), Some("avc1.64001f"));
        assert_eq!(avc1("main", "4").as_deref(), Some("avc1.4d4028"));
        assert_eq!(
            avc1("constrained-baseline", "3").as_deref(),
            Some("avc1.42e01e")
        );
        assert_eq!(avc1("unknown", "3"), None);
    }
}
