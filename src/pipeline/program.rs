//! A relay's main pipeline: the *program*.
//!
//! ```text
//! ingest (appsrc: FLV from our RTMP server | rtmp2src: pull) ─ decodebin "decode"
//!   video: queue "video-in" ─ videorate ─ videoscale ─ videoconvert ─ capsfilter "program-video"
//!          ─ overlaycomposition "overlay" (identity without an overlay) ─ [videoscale "scale-<r>" ─ capsfilter "size-<r>"]
//!          ─ x264enc "enc-<r>" ─ capsfilter ─ h264parse ─ tee "video-tee"
//!   audio: queue "audio-in" ─ audioconvert ─ audiorate ─ audioresample ─ capsfilter "program-audio"
//!          ─ avenc_aac "aac" ─ aacparse ─ tee "audio-tee"
//! video-tee, audio-tee ─ queues (+ h264parse: byte-stream) ─ hlssink3 "hls"  (segments, playlist)
//! video-tee, audio-tee ─ queues (+ h264parse: avc) ─ flvmux "flv" ─ tee "flv-tee"
//!   flv-tee ─ queue "out-<id>-q" (leaky) ─ appsink "out-<id>-feed"   (one per destination)
//! ```
//!
//! Each destination's appsink hands FLV buffers to that destination's own pipeline through a
//! [`FeedSlot`], so a destination that fails or hangs never blocks HLS or another destination.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

use super::overlay::OverlaySlot;
use super::{link_chain, link_tee, make, PipelineError};
use crate::config::{HlsSettings, ProgramSettings};

/// Pushed FLV the program may have queued; past it the publisher is dropped.
const DEFAULT_INGEST_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How much program a slow destination may fall behind before its feed drops old data.
const DEFAULT_OUTPUT_QUEUE_NS: u64 = 3_000_000_000;
/// Audio timestamp jitter tolerated before audiorate fills or drops samples.
const DEFAULT_AUDIO_TOLERANCE_NS: u64 = 40_000_000;
/// How long flvmux waits for the later of audio and video before writing a tag.
const DEFAULT_FLV_LATENCY_NS: u64 = 500_000_000;
/// Segments kept on disk beyond the playlist window, for players still fetching them.
const DEFAULT_EXTRA_SEGMENT_FILES: u32 = 4;

/// Where the program's input comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An FLV byte stream pushed by our RTMP server into an appsrc.
    Push,
    /// An external RTMP server, pulled with `rtmp2src`.
    Pull(String),
}

/// One HLS rendition: its name and frame size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
}

impl Rendition {
    /// The named preset scaled to the program's aspect ratio, or `None` when it would upscale.
    pub fn for_program(name: &str, height: u32, program: &ProgramSettings) -> Option<Self> {
        if height > program.height {
            return None;
        }
        let width =
            (u64::from(program.width) * u64::from(height) / u64::from(program.height)) as u32 & !1;
        Some(Self {
            name: name.to_owned(),
            width,
            height,
        })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ProgramParams {
    pub relay_id: String,
    pub source: Source,
    pub program: ProgramSettings,
    pub hls: HlsSettings,
    pub rendition: Rendition,
    /// The relay's HLS directory; the rendition writes into a sub-directory of its name.
    pub hls_dir: PathBuf,
    pub output_ids: Vec<String>,
    /// The score overlay, for relays that have one.
    pub overlay: Option<Arc<OverlaySlot>>,
    /// The system-clock time the program's timeline starts at: when the publisher connected
    /// (push) or the program was asked for (pull). See [`connect_decoded_pads`].
    pub epoch: gst::ClockTime,
}

/// A built (not yet playing) program pipeline.
pub struct Program {
    pub pipeline: gst::Pipeline,
    /// The appsrc the RTMP server pushes into, for push sources.
    pub ingest: Option<gst_app::AppSrc>,
    /// One feed per destination id.
    pub feeds: HashMap<String, Arc<FeedSlot>>,
}

/// The hand-over point between the program's per-destination appsink and the destination's
/// own pipeline. The destination attaches its appsrc here; the program never waits on it.
#[derive(Default)]
pub struct FeedSlot {
    target: Mutex<Option<Arc<FeedTarget>>>,
}

struct FeedTarget {
    appsrc: gst_app::AppSrc,
    /// Set once the first keyframe has gone through; nothing before it is useful.
    started: AtomicBool,
}

impl FeedSlot {
    /// Routes the feed into `appsrc` from the next keyframe on.
    pub fn attach(&self, appsrc: gst_app::AppSrc) {
        let target = Arc::new(FeedTarget {
            appsrc,
            started: AtomicBool::new(false),
        });
        *self.target.lock().expect("feed lock poisoned") = Some(target);
    }

    /// Stops routing; later buffers are dropped.
    pub fn detach(&self) {
        *self.target.lock().expect("feed lock poisoned") = None;
    }

    fn offer(&self, sample: &gst::Sample) {
        // Copy the target out and drop the lock before calling into GStreamer.
        let target = self.target.lock().expect("feed lock poisoned").clone();
        let Some(target) = target else { return };
        let Some(buffer) = sample.buffer_owned() else {
            return;
        };
        if !target.started.load(Ordering::Acquire) {
            let flags = buffer.flags();
            if flags.contains(gst::BufferFlags::HEADER)
                || flags.contains(gst::BufferFlags::DELTA_UNIT)
            {
                return;
            }
            // The caps carry the FLV header and codec data (streamheader) for rtmp2sink.
            if let Some(caps) = sample.caps_owned() {
                target.appsrc.set_caps(Some(&caps));
            }
            target.started.store(true, Ordering::Release);
        }
        // A failed push means the destination pipeline is going away; its supervisor sees why.
        let _ = target.appsrc.push_buffer(buffer);
    }
}

/// Builds the program pipeline. Nothing runs until the caller sets it to `Playing`.
pub fn build(params: &ProgramParams) -> Result<Program, PipelineError> {
    let p = &params.program;
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
    let decode = make("decodebin", "decode")?;

    // Video: normalise to the program format, leave a place for the overlay, encode.
    let video_in = make("queue", "video-in")?;
    let video_rate = make("videorate", "video-rate")?;
    let video_scale = make("videoscale", "video-scale")?;
    let video_convert = make("videoconvert", "video-convert")?;
    let program_video = make("capsfilter", "program-video")?;
    program_video.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", p.width as i32)
            .field("height", p.height as i32)
            .field("framerate", gst::Fraction::new(p.fps as i32, 1))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    );
    let overlay = match &params.overlay {
        Some(slot) => super::overlay::element(slot)?,
        None => {
            let identity = make("identity", "overlay")?;
            identity.set_property("silent", true);
            identity
        }
    };

    let r = &params.rendition;
    let mut video_chain = vec![
        video_in.clone(),
        video_rate,
        video_scale,
        video_convert,
        program_video,
        overlay,
    ];
    if r.height != p.height {
        let scale = make("videoscale", &format!("scale-{}", r.name))?;
        let caps = make("capsfilter", &format!("size-{}", r.name))?;
        caps.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("width", r.width as i32)
                .field("height", r.height as i32)
                .build(),
        );
        video_chain.extend([scale, caps]);
    }
    let encoder = make_x264(&format!("enc-{}", r.name), p, p.video_kbps)?;
    let encoded = make("capsfilter", &format!("enc-caps-{}", r.name))?;
    encoded.set_property(
        "caps",
        gst::Caps::builder("video/x-h264")
            .field("profile", "high")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
    );
    let video_parse = make("h264parse", "video-parse")?;
    video_parse.set_property("config-interval", -1i32);
    let video_tee = make("tee", "video-tee")?;
    video_chain.extend([encoder, encoded, video_parse, video_tee.clone()]);

    // Audio: normalise, encode once.
    let audio_in = make("queue", "audio-in")?;
    let audio_convert = make("audioconvert", "audio-convert")?;
    // FLV timestamps are whole milliseconds: make the audio timeline continuous again.
    let audio_rate = make("audiorate", "audio-rate")?;
    audio_rate.set_property("tolerance", DEFAULT_AUDIO_TOLERANCE_NS);
    let audio_resample = make("audioresample", "audio-resample")?;
    let program_audio = make("capsfilter", "program-audio")?;
    program_audio.set_property(
        "caps",
        gst::Caps::builder("audio/x-raw")
            .field("rate", p.audio_rate as i32)
            .field("channels", p.audio_channels as i32)
            .build(),
    );
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

    // HLS.
    let rendition_dir = params.hls_dir.join(&r.name);
    std::fs::create_dir_all(&rendition_dir).map_err(|source| PipelineError::Io {
        path: rendition_dir.display().to_string(),
        source,
    })?;
    let hls = make("hlssink3", "hls")?;
    hls.set_property(
        "location",
        rendition_dir.join("segment%05d.ts").display().to_string(),
    );
    hls.set_property(
        "playlist-location",
        rendition_dir.join("index.m3u8").display().to_string(),
    );
    hls.set_property("target-duration", params.hls.segment_seconds);
    hls.set_property("playlist-length", params.hls.playlist_length);
    hls.set_property(
        "max-files",
        params.hls.playlist_length + DEFAULT_EXTRA_SEGMENT_FILES,
    );
    hls.set_property("enable-program-date-time", true);
    let hls_video_q = make("queue", "hls-video-q")?;
    // Each branch converts the H.264 stream format it needs (byte-stream for TS, avc for FLV).
    let hls_video_parse = make("h264parse", "hls-video-parse")?;
    let hls_audio_q = make("queue", "hls-audio-q")?;

    // One FLV mux shared by every destination.
    let flv_video_q = make("queue", "flv-video-q")?;
    let flv_video_parse = make("h264parse", "flv-video-parse")?;
    let flv_audio_q = make("queue", "flv-audio-q")?;
    let flv = make("flvmux", "flv")?;
    flv.set_property("streamable", true);
    // A live aggregator: give it time to see both streams so FLV tags stay in DTS order.
    flv.set_property("latency", DEFAULT_FLV_LATENCY_NS);
    let flv_tee = make("tee", "flv-tee")?;
    flv_tee.set_property("allow-not-linked", true);

    pipeline
        .add_many([&ingest_el, &decode])
        .and_then(|_| pipeline.add_many(&video_chain))
        .and_then(|_| pipeline.add_many(&audio_chain))
        .and_then(|_| {
            pipeline.add_many([
                &hls,
                &hls_video_q,
                &hls_video_parse,
                &flv_video_parse,
                &hls_audio_q,
                &flv_video_q,
                &flv_audio_q,
                &flv,
                &flv_tee,
            ])
        })
        .map_err(|_| PipelineError::Link {
            from: "pipeline".to_owned(),
            to: "elements".to_owned(),
        })?;

    link_chain(&[&ingest_el, &decode])?;
    link_chain(&video_chain.iter().collect::<Vec<_>>())?;
    link_chain(&audio_chain.iter().collect::<Vec<_>>())?;
    link_tee(&video_tee, &hls_video_q)?;
    link_tee(&audio_tee, &hls_audio_q)?;
    link_chain(&[&hls_video_q, &hls_video_parse])?;
    link_request(&hls_video_parse, &hls, "video")?;
    link_request(&hls_audio_q, &hls, "audio")?;
    link_tee(&video_tee, &flv_video_q)?;
    link_tee(&audio_tee, &flv_audio_q)?;
    link_chain(&[&flv_video_q, &flv_video_parse])?;
    link_request(&flv_video_parse, &flv, "video")?;
    link_request(&flv_audio_q, &flv, "audio")?;
    link_chain(&[&flv, &flv_tee])?;

    connect_decoded_pads(&decode, &video_in, &audio_in);

    let mut feeds = HashMap::new();
    for id in &params.output_ids {
        feeds.insert(id.clone(), add_feed(&pipeline, &flv_tee, id)?);
    }

    Ok(Program {
        pipeline,
        ingest,
        feeds,
    })
}

/// Adds a destination feed branch to `flv-tee`.
fn add_feed(
    pipeline: &gst::Pipeline,
    flv_tee: &gst::Element,
    id: &str,
) -> Result<Arc<FeedSlot>, PipelineError> {
    let queue = make("queue", &format!("out-{id}-q"))?;
    queue.set_property_from_str("leaky", "downstream");
    queue.set_property("max-size-time", DEFAULT_OUTPUT_QUEUE_NS);
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 0u32);
    let sink = gst_app::AppSink::builder()
        .name(format!("out-{id}-feed"))
        .sync(false)
        .build();
    let slot = Arc::new(FeedSlot::default());
    let weak = Arc::downgrade(&slot);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(slot) = weak.upgrade() {
                    slot.offer(&sample);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let sink = sink.upcast::<gst::Element>();
    pipeline
        .add_many([&queue, &sink])
        .map_err(|_| PipelineError::Link {
            from: "pipeline".to_owned(),
            to: queue.name().to_string(),
        })?;
    link_chain(&[&queue, &sink])?;
    link_tee(flv_tee, &queue)?;
    Ok(slot)
}

/// Links decodebin's pads as they appear: raw video to `video_in`, raw audio to `audio_in`.
///
/// The publisher's timestamps start wherever its own clock was. On the first decoded buffer,
/// both streams are shifted by one shared offset that maps that buffer to running time 0, the
/// program's epoch: program-date-time in HLS is then the time the relay received the picture,
/// and audio and video stay in sync. Frames that queued while the program was being built
/// are late by that build time, and are processed at once.
fn connect_decoded_pads(decode: &gst::Element, video_in: &gst::Element, audio_in: &gst::Element) {
    let video_in = video_in.downgrade();
    let audio_in = audio_in.downgrade();
    let offset: Arc<Mutex<Option<i64>>> = Arc::default();
    decode.connect_pad_added(move |decode, pad| {
        let offset = offset.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let shift = *offset
                .lock()
                .expect("offset lock poisoned")
                .get_or_insert_with(|| -running_time(pad, buffer).unwrap_or(0));
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
pub(crate) fn make_x264(
    name: &str,
    p: &ProgramSettings,
    kbps: u32,
) -> Result<gst::Element, PipelineError> {
    let enc = make("x264enc", name)?;
    enc.set_property("bitrate", kbps);
    enc.set_property("key-int-max", p.fps * p.gop_seconds);
    enc.set_property_from_str("tune", "zerolatency");
    enc.set_property_from_str("speed-preset", &p.x264_preset);
    enc.set_property("vbv-buf-capacity", 1000u32);
    enc.set_property("option-string", "scenecut=0:force-cfr=1");
    Ok(enc)
}

/// The `CODECS` value of a rendition: H.264 High at the lowest level that fits, and AAC-LC.
pub fn codecs(r: &Rendition, fps: u32) -> String {
    let macroblocks = u64::from(r.width.div_ceil(16)) * u64::from(r.height.div_ceil(16));
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

/// The master playlist naming every rendition's media playlist.
pub fn master_playlist(renditions: &[Rendition], p: &ProgramSettings) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in renditions {
        let average = (u64::from(p.video_kbps) + u64::from(p.audio_kbps)) * 1000;
        // Peak: CBR with a one-second VBV buffer stays close to the average; allow 10 %.
        let peak = average * 11 / 10;
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},RESOLUTION={}x{},FRAME-RATE={}.000,CODECS=\"{}\"\n{}/index.m3u8\n",
            r.width,
            r.height,
            p.fps,
            codecs(r, p.fps),
            r.name
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
        Rendition::for_program(name, height, &ProgramSettings::default()).expect("no upscale")
    }

    #[test]
    fn renditions_keep_the_program_aspect_and_never_upscale() {
        assert_eq!(rendition("720p", 720).width, 1280);
        assert_eq!(rendition("360p", 360).width, 640);
        assert_eq!(rendition("480p", 480).width, 852);
        assert!(Rendition::for_program("1080p", 1080, &ProgramSettings::default()).is_none());
    }

    #[test]
    fn codecs_follow_the_h264_level_table() {
        assert_eq!(codecs(&rendition("720p", 720), 30), "avc1.64001f,mp4a.40.2");
        assert_eq!(codecs(&rendition("360p", 360), 30), "avc1.64001e,mp4a.40.2");
    }

    #[test]
    fn master_playlist_names_every_attribute() {
        let text = master_playlist(&[rendition("720p", 720)], &ProgramSettings::default());
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
        for attr in [
            "BANDWIDTH=3440800",
            "AVERAGE-BANDWIDTH=3128000",
            "RESOLUTION=1280x720",
            "FRAME-RATE=30.000",
            "CODECS=\"avc1.64001f,mp4a.40.2\"",
        ] {
            assert!(text.contains(attr), "{attr} missing from\n{text}");
        }
        assert!(text.ends_with("720p/index.m3u8\n"));
    }
}
