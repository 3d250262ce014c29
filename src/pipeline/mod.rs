//! The media graphs. [`program`] puts a relay's main pipeline together (ingest → decode →
//! normalise → overlay slot → one encoder per rendition → HLS, plus one FLV mux per encode
//! that destinations use) from its parts: [`input`] (sources and ingest bins), [`switch`]
//! (slate, input switches, live syncs), [`overlay`] (the overlay's element) and [`encode`]
//! (encoders, HLS and FLV branches), as [`ladder`] (pure: renditions, destination encodes,
//! the master playlist) describes them. [`fanout`] hands each FLV stream to its destinations;
//! [`output`] builds one small pipeline per RTMP destination, fed from that FLV stream.
//! [`bus`] sorts bus messages into the events the relay acts on; [`continuity`] carries HLS
//! numbering from one program to the next.
//!
//! Owns element creation, linking and bus-message interpretation. It must not keep state
//! between calls or decide policy (retries, teardown): the relay actor does that.

pub mod blend;
pub mod bus;
pub mod continuity;
pub mod daterange;
pub mod dvr;
pub mod encode;
pub mod fanout;
pub mod input;
pub mod ladder;
pub mod output;
pub mod overlay;
pub mod program;
pub mod record;
pub mod switch;
pub mod thumbnail;

use std::sync::Once;

use gst::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error("cannot create element {factory} ({name}): is its GStreamer plugin installed?")]
    MissingElement { factory: String, name: String },
    #[error("cannot link {from} to {to}")]
    Link { from: String, to: String },
    #[error("{path}: cannot change state to {state:?}")]
    State { path: String, state: gst::State },
    #[error("overlay: {0}")]
    Overlay(String),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

static INIT: Once = Once::new();

/// Initialises GStreamer and registers the statically linked gst-plugins-rs elements.
pub fn init() -> Result<(), PipelineError> {
    gst::init().map_err(|e| PipelineError::Init(e.to_string()))?;
    let mut result = Ok(());
    INIT.call_once(|| {
        type Register = fn() -> Result<(), gst::glib::BoolError>;
        let plugins: [(&str, Register); 3] = [
            ("hlssink3", gsthlssink3::plugin_register_static),
            ("fallbackswitch", gstfallbackswitch::plugin_register_static),
            ("livesync", gstlivesync::plugin_register_static),
        ];
        for (name, register) in plugins {
            if let Err(e) = register() {
                result = Err(PipelineError::Init(format!("{name}: {e}")));
            }
        }
        // cmafmux, from gst-plugin-fmp4 on gstreamer-rs 0.24 (its own glib error type):
        // registered in the same GStreamer registry, found by hlssink3's hlscmafsink.
        if let Err(e) = gstfmp4::plugin_register_static() {
            result = Err(PipelineError::Init(format!("fmp4: {e}")));
        }
    });
    result
}

/// The GStreamer elements a relay needs; checked at start-up so a missing plugin is reported
/// once, by name, instead of as a failed relay later.
pub const REQUIRED_ELEMENTS: &[&str] = &[
    "appsrc",
    "appsink",
    "rtmp2src",
    "rtmp2sink",
    "srtsrc",
    "srtsink",
    "tsdemux",
    "decodebin",
    "flvdemux",
    "avdec_h264",
    "avdec_aac",
    "mpegtsmux",
    "splitmuxsink",
    "giostreamsink",
    "videoconvert",
    "videoscale",
    "videorate",
    "audioconvert",
    "audioresample",
    "audiorate",
    "x264enc",
    "h264parse",
    "avenc_aac",
    "aacparse",
    "flvmux",
    "tee",
    "queue",
    "hlssink3",
    "hlscmafsink",
    "cmafmux",
    "mp4mux",
    "filesink",
    "errorignore",
    "fallbackswitch",
    "livesync",
    "imagefreeze",
    "audiotestsrc",
    "identity",
];

/// The names of required elements that this GStreamer installation lacks.
pub fn missing_elements() -> Vec<&'static str> {
    REQUIRED_ELEMENTS
        .iter()
        .copied()
        .filter(|f| gst::ElementFactory::find(f).is_none())
        .collect()
}

/// Creates an element by factory name, naming it by its role.
pub(crate) fn make(factory: &str, name: &str) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| PipelineError::MissingElement {
            factory: factory.to_owned(),
            name: name.to_owned(),
        })
}

/// Links a chain of elements in order.
pub(crate) fn link_chain(elements: &[&gst::Element]) -> Result<(), PipelineError> {
    for pair in elements.windows(2) {
        pair[0].link(pair[1]).map_err(|_| PipelineError::Link {
            from: pair[0].name().to_string(),
            to: pair[1].name().to_string(),
        })?;
    }
    Ok(())
}

/// Links a new request pad of `tee` to `sink`'s static `sink` pad, and returns the tee's pad.
pub(crate) fn link_tee(tee: &gst::Element, sink: &gst::Element) -> Result<gst::Pad, PipelineError> {
    let link_error = || PipelineError::Link {
        from: tee.name().to_string(),
        to: sink.name().to_string(),
    };
    let src = tee.request_pad_simple("src_%u").ok_or_else(link_error)?;
    let sinkpad = sink.static_pad("sink").ok_or_else(link_error)?;
    src.link(&sinkpad).map_err(|_| link_error())?;
    Ok(src)
}

/// Drops the buffer (or buffer list) a pad probe holds. With gstreamer-rs 0.25 on GStreamer
/// 1.22, returning `Drop` for a buffer logs `gst_mini_object_unref: assertion 'mini_object
/// != NULL' failed` once per buffer; taking the data and answering `Handled` drops it quietly.
/// Any other data (an event) is dropped with `Drop`.
pub(crate) fn drop_data(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
    match info.data {
        Some(gst::PadProbeData::Buffer(_)) => {
            drop(info.take_buffer());
            gst::PadProbeReturn::Handled
        }
        Some(gst::PadProbeData::BufferList(_)) => {
            drop(info.take_buffer_list());
            gst::PadProbeReturn::Handled
        }
        _ => gst::PadProbeReturn::Drop,
    }
}

/// Unlinks `pad` (a request pad of `tee`) once it is idle, or after `timeout` anyway (`false`
/// then), and gives it back to the tee. Blocking: call it off the streaming threads.
pub(crate) fn unlink_tee_pad(
    tee: &gst::Element,
    pad: &gst::Pad,
    timeout: std::time::Duration,
) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
        if let Some(peer) = pad.peer() {
            let _ = pad.unlink(&peer);
        }
        let _ = done_tx.send(());
        gst::PadProbeReturn::Remove
    });
    let idle = done_rx.recv_timeout(timeout).is_ok();
    if !idle {
        if let Some(peer) = pad.peer() {
            let _ = pad.unlink(&peer);
        }
    }
    tee.release_request_pad(pad);
    idle
}

/// Brings elements added to a pipeline (built or running) to its state.
pub(crate) fn sync_with_pipeline<'a>(
    elements: impl IntoIterator<Item = &'a gst::Element>,
) -> Result<(), PipelineError> {
    for element in elements {
        element
            .sync_state_with_parent()
            .map_err(|_| PipelineError::State {
                path: element.path_string().to_string(),
                state: gst::State::Playing,
            })?;
    }
    Ok(())
}

/// Sets a pipeline's state, naming it in the error.
pub(crate) fn set_state(
    pipeline: &gst::Pipeline,
    state: gst::State,
) -> Result<gst::StateChangeSuccess, PipelineError> {
    pipeline.set_state(state).map_err(|_| PipelineError::State {
        path: pipeline.path_string().to_string(),
        state,
    })
}

/// A `capsfilter` named `name` that lets `caps` through.
pub(crate) fn capsfilter(name: &str, caps: gst::Caps) -> Result<gst::Element, PipelineError> {
    let filter = make("capsfilter", name)?;
    filter.set_property("caps", caps);
    Ok(filter)
}

/// Adds `elements` to `pipeline`, naming them all in the error.
pub(crate) fn add_elements(
    pipeline: &gst::Pipeline,
    elements: &[&gst::Element],
) -> Result<(), PipelineError> {
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

/// Links `src`'s static `src` pad to a new request pad `pad_name` of `sink`.
pub(crate) fn link_request(
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
