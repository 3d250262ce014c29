//! The program's encoders and the branches that carry their output away.
//!
//! ```text
//! program-tee ─ [queue "enc-q-<r>"] ─ [videoscale ─ capsfilter] ─ x264enc "enc-<r>"
//!   ─ capsfilter ─ h264parse ─ tee "video-tee-<r>"                          (VideoEncoder)
//! audio-sync ─ audioconvert ─ avenc_aac "aac" ─ aacparse ─ tee "audio-tee"  (AudioEncoder)
//! video-tee-<r> ─ queue ─ h264parse ─┬─ hlssink3 "hls-<r>"                   (HlsBranch, TS)
//! audio-tee ─ queue ─────────────────┘
//! video-tee-<r> ─ queue ─ h264parse ─── hlscmafsink "hls-<r>"              (HlsBranch, fMP4)
//! audio-tee ─ queue ─ hlscmafsink "hls-audio"                        (HlsAudioBranch, fMP4)
//! video-tee ─ queue ─ h264parse ─┬─ flvmux "flv-<e>" ─ appsink "flv-<e>-feed" (FlvBranch)
//! audio-tee ─ queue ─────────────┘
//! ```
//!
//! Every rendition's encoder has the same GOP and no scenecut, so keyframes (and therefore
//! segment boundaries) line up across renditions.
//!
//! Owns the elements of each branch, held by name, and their settings. It must not decide
//! which branches exist (the ladder and [`super::program`] do) nor add them to a running
//! pipeline by itself: the program adds, links and removes them.

use std::sync::Arc;

use gst::prelude::*;

use super::fanout::{self, Fanout};
use super::ladder::{Encode, Rendition, AUDIO_RENDITION};
use super::program::ProgramParams;
use super::{add_elements, capsfilter, link_chain, link_request, link_tee, make, PipelineError};
use crate::config::ProgramSettings;
use crate::relay::spec::SegmentFormat;

/// How long flvmux waits for the later of audio and video before writing a tag.
const DEFAULT_FLV_LATENCY_NS: u64 = 500_000_000;
/// Segments kept on disk beyond the playlist window, for players still fetching them.
pub const DEFAULT_EXTRA_SEGMENT_FILES: u32 = 4;

/// How far the encode may fall behind the program before its oldest frames are dropped.
pub const DEFAULT_ENCODER_BACKLOG: std::time::Duration = std::time::Duration::from_secs(1);

/// `enc-q-<name>`: leaky, so that an encoder the CPU cannot keep up with drops its oldest
/// frames instead of holding the program back. Held back, the program's switch found the
/// publisher's pictures late and put the slate on air over a live caster; now the program
/// keeps real time and the encoder takes what it can (each drop an `overrun`).
fn encoder_queue(name: &str) -> Result<gst::Element, PipelineError> {
    let queue = make("queue", &format!("enc-q-{name}"))?;
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", DEFAULT_ENCODER_BACKLOG.as_nanos() as u64);
    queue.set_property_from_str("leaky", "downstream");
    Ok(queue)
}

/// One x264 encode, from raw program video to a tee of H.264 access units.
pub struct VideoEncoder {
    /// `enc-q-<name>`: a streaming thread of its own for the encode, when asked for.
    pub queue: Option<gst::Element>,
    /// `scale-<name>` and `size-<name>`, when the encode is smaller than the program.
    pub scale: Option<(gst::Element, gst::Element)>,
    /// `enc-<name>`.
    pub encoder: gst::Element,
    /// `enc-caps-<name>`: High profile, byte-stream, whole access units.
    pub caps: gst::Element,
    /// `parse-<name>`.
    pub parse: gst::Element,
    /// `video-tee-<name>`: where HLS and FLV branches tap the encode.
    pub tee: gst::Element,
}

impl VideoEncoder {
    /// The elements for `encode`, named after `name`. With `own_thread`, the queue
    /// "enc-q-<name>" gives the encode a streaming thread of its own; without, it runs in the
    /// thread that feeds the program tee.
    pub fn new(
        name: &str,
        encode: &Encode,
        p: &ProgramSettings,
        own_thread: bool,
    ) -> Result<Self, PipelineError> {
        let queue = own_thread.then(|| encoder_queue(name)).transpose()?;
        let scale = if (encode.width, encode.height) != (p.width, p.height) {
            let scale = make("videoscale", &format!("scale-{name}"))?;
            let caps = capsfilter(
                &format!("size-{name}"),
                gst::Caps::builder("video/x-raw")
                    .field("width", encode.width as i32)
                    .field("height", encode.height as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            )?;
            Some((scale, caps))
        } else {
            None
        };
        let encoder = make_x264(&format!("enc-{name}"), p, encode)?;
        let caps = capsfilter(
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
        Ok(Self {
            queue,
            scale,
            encoder,
            caps,
            parse,
            tee,
        })
    }

    /// Its elements in stream order.
    pub fn elements(&self) -> Vec<&gst::Element> {
        let mut chain: Vec<&gst::Element> = self.queue.iter().collect();
        if let Some((scale, caps)) = &self.scale {
            chain.extend([scale, caps]);
        }
        chain.extend([&self.encoder, &self.caps, &self.parse, &self.tee]);
        chain
    }

    /// The element that takes raw video in.
    pub fn input(&self) -> &gst::Element {
        self.elements()[0]
    }

    /// Adds it to `pipeline`, links it, and feeds it from `program_tee`.
    pub fn add_to(
        &self,
        pipeline: &gst::Pipeline,
        program_tee: &gst::Element,
    ) -> Result<(), PipelineError> {
        let chain = self.elements();
        add_elements(pipeline, &chain)?;
        link_chain(&chain)?;
        link_tee(program_tee, self.input())?;
        Ok(())
    }
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

/// The program's one AAC encode, from raw program audio to the audio tee.
pub struct AudioEncoder {
    /// `audio-convert`.
    pub convert: gst::Element,
    /// `aac`.
    pub aac: gst::Element,
    /// `audio-parse`.
    pub parse: gst::Element,
    /// `audio-tee`: every HLS and FLV branch takes its audio here.
    pub tee: gst::Element,
}

impl AudioEncoder {
    /// Builds it, adds it to `pipeline` and links it.
    pub fn add_to(pipeline: &gst::Pipeline, p: &ProgramSettings) -> Result<Self, PipelineError> {
        let convert = make("audioconvert", "audio-convert")?;
        let aac = make("avenc_aac", "aac")?;
        aac.set_property_from_str("bitrate", &(u64::from(p.audio_kbps) * 1000).to_string());
        let parse = make("aacparse", "audio-parse")?;
        let tee = make("tee", "audio-tee")?;
        let chain = [&convert, &aac, &parse, &tee];
        add_elements(pipeline, &chain)?;
        link_chain(&chain)?;
        Ok(Self {
            convert,
            aac,
            parse,
            tee,
        })
    }
}

/// One rendition's HLS sink and the queues that feed it.
pub struct HlsBranch {
    /// `hls-video-q-<r>`.
    pub video_queue: gst::Element,
    /// `hls-video-parse-<r>`: converts to the stream format the muxer needs.
    pub video_parse: gst::Element,
    /// `hls-audio-q-<r>`: MPEG-TS segments carry the audio; fMP4 ones have it apart
    /// ([`HlsAudioBranch`]).
    pub audio_queue: Option<gst::Element>,
    /// `hls-<r>`: the hlssink3 (MPEG-TS) or hlscmafsink (fMP4).
    pub sink: gst::Element,
}

impl HlsBranch {
    /// Rendition `r`'s HLS sink, writing into its own directory under `params.hls_dir`,
    /// added to `pipeline` and fed from `video_tee` (and, for MPEG-TS, the shared
    /// `audio_tee`).
    pub fn add_to(
        pipeline: &gst::Pipeline,
        video_tee: &gst::Element,
        audio_tee: &gst::Element,
        r: &Rendition,
        params: &ProgramParams,
    ) -> Result<Self, PipelineError> {
        let sink = hls_sink(&r.name, params)?;
        let video_queue = make("queue", &format!("hls-video-q-{}", r.name))?;
        // Each branch converts the H.264 stream format it needs (byte-stream for TS, avc for
        // FLV and MP4).
        let video_parse = make("h264parse", &format!("hls-video-parse-{}", r.name))?;
        add_elements(pipeline, &[&sink, &video_queue, &video_parse])?;
        link_tee(video_tee, &video_queue)?;
        link_chain(&[&video_queue, &video_parse])?;
        let audio_queue = match params.hls_format {
            SegmentFormat::Ts => {
                link_request(&video_parse, &sink, "video")?;
                let audio_queue = make("queue", &format!("hls-audio-q-{}", r.name))?;
                add_elements(pipeline, &[&audio_queue])?;
                link_tee(audio_tee, &audio_queue)?;
                link_request(&audio_queue, &sink, "audio")?;
                Some(audio_queue)
            }
            SegmentFormat::Fmp4 => {
                link_chain(&[&video_parse, &sink])?;
                None
            }
        };
        Ok(Self {
            video_queue,
            video_parse,
            audio_queue,
            sink,
        })
    }
}

/// fMP4 only: the audio's own media playlist ([`AUDIO_RENDITION`]), which every video
/// rendition's variant names, as CMAF has one track per segment.
pub struct HlsAudioBranch {
    /// `hls-audio-q`.
    pub queue: gst::Element,
    /// `hls-audio`: the hlscmafsink.
    pub sink: gst::Element,
}

impl HlsAudioBranch {
    /// Added to `pipeline` and fed from `audio_tee`.
    pub fn add_to(
        pipeline: &gst::Pipeline,
        audio_tee: &gst::Element,
        params: &ProgramParams,
    ) -> Result<Self, PipelineError> {
        let sink = hls_sink(AUDIO_RENDITION, params)?;
        let queue = make("queue", "hls-audio-q")?;
        add_elements(pipeline, &[&sink, &queue])?;
        link_tee(audio_tee, &queue)?;
        link_chain(&[&queue, &sink])?;
        Ok(Self { queue, sink })
    }
}

/// The HLS sink of rendition `name` in the relay's format, writing into `<hls_dir>/<name>/`:
/// segments named `segment<sequence base>-NNNNN` so no program reuses another's names.
fn hls_sink(name: &str, params: &ProgramParams) -> Result<gst::Element, PipelineError> {
    let dir = params.hls_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let base = params.sequence_base;
    let element = format!("hls-{name}");
    let sink = match params.hls_format {
        SegmentFormat::Ts => {
            let sink = make("hlssink3", &element)?;
            sink.set_property("location", in_dir(&dir, &format!("segment{base}-%05d.ts")));
            // Our encoders already place a keyframe every GOP, and segments are whole GOPs.
            // Asking for more by time would add a second keyframe a frame away from the GOP's
            // whenever a switch shifts the timeline by a few milliseconds: a one-frame
            // segment.
            sink.set_property("send-keyframe-requests", false);
            sink
        }
        SegmentFormat::Fmp4 => {
            let sink = make("hlscmafsink", &element)?;
            sink.set_property("location", in_dir(&dir, &format!("segment{base}-%05d.m4s")));
            sink.set_property(
                "init-location",
                in_dir(&dir, &format!("init{base}-%05d.mp4")),
            );
            // Write each segment as it is done, not when the clock reaches it.
            sink.set_property("sync", false);
            let bin = sink.downcast_ref::<gst::Bin>();
            // The same reason as send-keyframe-requests above, on the muxer inside it.
            if let Some(mux) = bin.and_then(|bin| bin.by_name("muxer")) {
                mux.set_property("send-force-keyunit", false);
            }
            // Its appsink would hold the pipeline out of Playing until a whole segment
            // reached it, and nothing flows before Playing.
            if let Some(appsink) = bin.and_then(|bin| bin.by_name("sink")) {
                appsink.set_property("async", false);
            }
            sink
        }
    };
    sink.set_property("playlist-location", in_dir(&dir, "index.m3u8"));
    sink.set_property("target-duration", params.hls.segment_seconds);
    sink.set_property("playlist-length", params.hls.playlist_length);
    // 0: hlssink3 deletes nothing, the DVR does.
    let max_files = if params.keep_segments {
        0
    } else {
        params.hls.playlist_length + DEFAULT_EXTRA_SEGMENT_FILES
    };
    sink.set_property("max-files", max_files);
    sink.set_property("enable-program-date-time", true);
    Ok(sink)
}

fn in_dir(dir: &std::path::Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// One FLV stream: video queue ─ h264parse (avc) ─ flvmux ← audio queue; flvmux ─ appsink,
/// which hands every buffer to a [`Fanout`].
pub struct FlvBranch {
    /// `flv-video-q-<e>`: where the video tee feeds it.
    pub video_queue: gst::Element,
    /// `flv-video-parse-<e>`: converts to the avc stream format FLV needs.
    pub video_parse: gst::Element,
    /// `flv-<e>`.
    pub mux: gst::Element,
    /// `flv-audio-q-<e>`: where the audio tee feeds it.
    pub audio_queue: gst::Element,
    /// `flv-<e>-feed`.
    pub sink: gst::Element,
}

impl FlvBranch {
    /// Its elements, named after `name`. The caller adds them to the pipeline
    /// ([`FlvBranch::elements`]), then links them ([`FlvBranch::link`]).
    pub fn new(name: &str, fanout: &Arc<Fanout>) -> Result<Self, PipelineError> {
        let video_queue = make("queue", &format!("flv-video-q-{name}"))?;
        let video_parse = make("h264parse", &format!("flv-video-parse-{name}"))?;
        let mux = make("flvmux", &format!("flv-{name}"))?;
        mux.set_property("streamable", true);
        // A live aggregator: give it time to see both streams so FLV tags stay in DTS order.
        mux.set_property("latency", DEFAULT_FLV_LATENCY_NS);
        let audio_queue = make("queue", &format!("flv-audio-q-{name}"))?;
        let sink = fanout::appsink(&format!("flv-{name}-feed"), fanout);
        Ok(Self {
            video_queue,
            video_parse,
            mux,
            audio_queue,
            sink,
        })
    }

    /// Its elements: video queue, parse, mux, audio queue, appsink.
    pub fn elements(&self) -> [&gst::Element; 5] {
        [
            &self.video_queue,
            &self.video_parse,
            &self.mux,
            &self.audio_queue,
            &self.sink,
        ]
    }

    /// Links its elements among themselves; their queues' inputs stay free for the tees.
    pub fn link(&self) -> Result<(), PipelineError> {
        link_chain(&[&self.video_queue, &self.video_parse])?;
        link_request(&self.video_parse, &self.mux, "video")?;
        link_request(&self.audio_queue, &self.mux, "audio")?;
        link_chain(&[&self.mux, &self.sink])
    }
}
