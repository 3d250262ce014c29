//! What keeps a decoded program on air: the slate and the silence, the two input switches and
//! the live syncs after them.
//!
//! ```text
//! slate:  appsrc "slate" (one RGBA picture) ─ videoconvert ─ videoscale ─ imagefreeze (live)
//!   ─ capsfilter ─ queue ─┐
//! publishers (priority 0) ┴► fallbackswitch "video-switch" (slate: priority 1) ─ livesync "video-sync" ─►
//! silence: audiotestsrc "silence" (live) ─ capsfilter ─ queue ─┐
//! publishers (priority 0) ──────────────────────────────────────┴► fallbackswitch "audio-switch"
//!   ─ livesync "audio-sync" ─►
//! ```
//!
//! When the publisher's pictures stop for [`DEFAULT_INPUT_TIMEOUT`], the video switch takes
//! the slate and posts [`INPUT_SWITCHED`]; when they come back, it takes them again. The syncs
//! give everything downstream one segment, one clock and no holes (they repeat the last frame
//! or play silence), so encoders, HLS and every RTMP session carry on as if nothing happened.
//!
//! Owns these elements, the program's raw caps (which every input is normalised to) and the
//! switch report. It must not build the publishers' branches ([`super::input`] does, and links
//! them with [`link_to_switch`]) nor touch what comes after the syncs (overlay, encoders).

use std::sync::Mutex;
use std::time::Duration;

use gst::prelude::*;

use super::bus::INPUT_SWITCHED;
use super::{add_elements, capsfilter, link_chain, make, PipelineError};
use crate::config::ProgramSettings;

/// The publisher's pictures may stop this long before the switch takes the slate.
pub const DEFAULT_INPUT_TIMEOUT: Duration = Duration::from_millis(400);
/// How late a publisher's decoded frame may reach the switch (its dating is by arrival at
/// our RTMP server), before it counts as lost: demuxing, decoding and scaling must fit.
pub const DEFAULT_INPUT_LATENCY: Duration = Duration::from_millis(300);
/// Slack between the switch, which sends each frame when its latency is up, and the live
/// sync after it, which would otherwise fill in for frames at the same moment they arrive.
const DEFAULT_SYNC_SLACK: Duration = Duration::from_millis(100);
/// The switch pad priority of a publisher: preferred whenever it delivers.
pub const PUBLISHER_PRIORITY: u32 = 0;
/// The switch pad priority of the slate and the silence: what the switch falls back to.
const FALLBACK_PRIORITY: u32 = 1;

/// The slate's source, the two switches and the syncs that end the switched part.
pub struct Switch {
    /// Where a new slate picture goes.
    pub slate: gst_app::AppSrc,
    /// The video `fallbackswitch`; publishers link to it with [`link_to_switch`].
    pub video: gst::Element,
    /// The audio `fallbackswitch`.
    pub audio: gst::Element,
    /// The video `livesync`: the switched video leaves from its `src` pad.
    pub video_sync: gst::Element,
    /// The audio `livesync`: the switched audio leaves from its `src` pad.
    pub audio_sync: gst::Element,
}

impl Switch {
    /// Hands the slate a new picture; the switch shows it whenever no publisher is on.
    pub fn show_slate(&self, picture: &image::RgbaImage) {
        let buffer = gst::Buffer::from_mut_slice(picture.as_raw().clone());
        if let Err(e) = self.slate.push_buffer(buffer) {
            tracing::debug!(element = %self.slate.path_string(), error = ?e, "slate not taken");
        }
    }

    /// Ends the switched streams at the syncs, so everything downstream finishes (an
    /// attached publisher's end never passes its switch).
    pub fn end(&self) {
        for sync in [&self.video_sync, &self.audio_sync] {
            if let Some(pad) = sync.static_pad("sink") {
                pad.send_event(gst::event::Eos::new());
            }
        }
    }
}

/// Builds the slate (showing `slate`, at the program's size), the silence, the switches and
/// the syncs into `pipeline`, linked up to the syncs' `src` pads, which are left free.
pub fn build(
    pipeline: &gst::Pipeline,
    p: &ProgramSettings,
    slate: &image::RgbaImage,
) -> Result<Switch, PipelineError> {
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

    let silence = make("audiotestsrc", "silence")?;
    silence.set_property("is-live", true);
    silence.set_property_from_str("wave", "silence");
    let silence_caps = capsfilter("silence-caps", program_audio_caps(p))?;
    let silence_q = make("queue", "silence-q")?;
    let audio_switch = make_switch("audio-switch")?;
    let audio_sync = make_sync("audio-sync")?;

    let slate_el = slate_src.clone().upcast::<gst::Element>();
    let slate_chain = [
        &slate_el,
        &slate_convert,
        &slate_scale,
        &freeze,
        &slate_caps,
        &slate_q,
    ];
    let video_chain = [&video_switch, &video_sync];
    let silence_chain = [&silence, &silence_caps, &silence_q];
    let audio_chain = [&audio_switch, &audio_sync];
    for chain in [&slate_chain[..], &video_chain, &silence_chain, &audio_chain] {
        add_elements(pipeline, chain)?;
        link_chain(chain)?;
    }
    // The switch falls back to these, and starts on them.
    link_switch(&slate_q, &video_switch, FALLBACK_PRIORITY)?;
    link_switch(&silence_q, &audio_switch, FALLBACK_PRIORITY)?;
    report_switches(&video_switch);
    one_stream(&video_sync);
    one_stream(&audio_sync);

    let switch = Switch {
        slate: slate_src,
        video: video_switch,
        audio: audio_switch,
        video_sync,
        audio_sync,
    };
    switch.show_slate(slate);
    Ok(switch)
}

/// The raw video every input is normalised to before the switch: identical caps on both
/// sides, so switching never renegotiates anything downstream.
pub fn program_video_caps(p: &ProgramSettings) -> gst::Caps {
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
pub fn program_audio_caps(p: &ProgramSettings) -> gst::Caps {
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

/// Links `src`'s `src` pad to a new pad of `switch` with `priority`; returns the switch's pad.
fn link_switch(
    src: &gst::Element,
    switch: &gst::Element,
    priority: u32,
) -> Result<gst::Pad, PipelineError> {
    let srcpad = src.static_pad("src").ok_or_else(|| PipelineError::Link {
        from: src.name().to_string(),
        to: switch.name().to_string(),
    })?;
    link_to_switch(&srcpad, switch, priority)
}

/// Links `srcpad` to a new pad of `switch` with `priority` (0 is preferred); returns the
/// switch's pad, which the caller releases when the input goes.
pub fn link_to_switch(
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
            .is_some_and(|pad| pad.property::<u32>("priority") > PUBLISHER_PRIORITY);
        let s = gst::Structure::builder(INPUT_SWITCHED)
            .field("slate", slate)
            .build();
        let _ = switch.post_message(gst::message::Element::builder(s).src(switch).build());
    });
}
