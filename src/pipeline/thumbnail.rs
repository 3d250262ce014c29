//! A decoded program's thumbnail: a small JPEG of the program as viewers see it (overlay
//! included), refreshed every [`DEFAULT_THUMBNAIL_INTERVAL`] from the program's own frames.
//!
//! ```text
//! program-tee ─ queue "thumb-q" (a frame per interval let in, the rest dropped at its sink)
//!   ─ videoscale ─ videoconvert ─ capsfilter (DEFAULT_THUMBNAIL_WIDTH wide) ─ jpegenc
//!   ─ appsink "thumb-sink" ─► ThumbnailSlot
//! ```
//!
//! Owns these elements and the [`ThumbnailSlot`] the latest JPEG is kept in. Frames are
//! dropped before the queue, in the tee's thread, so between thumbnails this branch costs a
//! timestamp comparison per frame; nothing is decoded twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gst::prelude::*;

use super::{
    add_elements, capsfilter, drop_data, link_chain, link_tee, make, sync_with_pipeline,
    PipelineError,
};
use crate::config::ProgramSettings;

/// How often the thumbnail is refreshed.
pub const DEFAULT_THUMBNAIL_INTERVAL: Duration = Duration::from_secs(2);
/// The thumbnail's width in pixels; its height keeps the program's aspect ratio.
pub const DEFAULT_THUMBNAIL_WIDTH: u32 = 320;
/// JPEG quality, 0 to 100.
const JPEG_QUALITY: i32 = 75;

/// The latest thumbnail of a relay, kept across its programs.
#[derive(Debug, Default)]
pub struct ThumbnailSlot(Mutex<Option<Thumbnail>>);

/// One JPEG and when it was taken.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub jpeg: bytes::Bytes,
    pub at: SystemTime,
}

impl ThumbnailSlot {
    pub fn latest(&self) -> Option<Thumbnail> {
        self.0.lock().expect("thumbnail lock poisoned").clone()
    }

    fn set(&self, jpeg: bytes::Bytes) {
        *self.0.lock().expect("thumbnail lock poisoned") = Some(Thumbnail {
            jpeg,
            at: SystemTime::now(),
        });
    }
}

/// The thumbnail's size for a program of `p`'s size: [`DEFAULT_THUMBNAIL_WIDTH`] wide (or
/// the program's width if narrower), the height even.
pub fn size(p: &ProgramSettings) -> (u32, u32) {
    let width = DEFAULT_THUMBNAIL_WIDTH.min(p.width) & !1;
    let height =
        ((u64::from(width) * u64::from(p.height) / u64::from(p.width.max(1))) as u32 & !1).max(2);
    (width, height)
}

/// Adds the thumbnail branch to `program_tee` in `pipeline`, writing into `slot`.
pub fn add_to(
    pipeline: &gst::Pipeline,
    program_tee: &gst::Element,
    p: &ProgramSettings,
    slot: &Arc<ThumbnailSlot>,
) -> Result<(), PipelineError> {
    let queue = make("queue", "thumb-q")?;
    queue.set_property("max-size-buffers", 1u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", 0u64);
    queue.set_property_from_str("leaky", "downstream");
    let scale = make("videoscale", "thumb-scale")?;
    let convert = make("videoconvert", "thumb-convert")?;
    let (width, height) = size(p);
    let caps = capsfilter(
        "thumb-caps",
        gst::Caps::builder("video/x-raw")
            .field("width", width as i32)
            .field("height", height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    )?;
    let encode = make("jpegenc", "thumb-jpeg")?;
    encode.set_property("quality", JPEG_QUALITY);
    let sink = gst_app::AppSink::builder()
        .name("thumb-sink")
        .sync(false)
        .async_(false)
        .max_buffers(1)
        .drop(true)
        .build();
    let weak = Arc::downgrade(slot);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let (Some(buffer), Some(slot)) = (sample.buffer(), weak.upgrade()) {
                    if let Ok(map) = buffer.map_readable() {
                        slot.set(bytes::Bytes::copy_from_slice(map.as_slice()));
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let sink_el = sink.upcast::<gst::Element>();
    let chain = [&queue, &scale, &convert, &caps, &encode, &sink_el];
    add_elements(pipeline, &chain)?;
    link_chain(&chain)?;
    let_one_frame_per_interval(&queue);
    link_tee(program_tee, &queue)?;
    sync_with_pipeline(chain)
}

/// Drops, at `queue`'s sink, every frame less than [`DEFAULT_THUMBNAIL_INTERVAL`] after the
/// last one let in (by timestamp).
fn let_one_frame_per_interval(queue: &gst::Element) {
    let Some(pad) = queue.static_pad("sink") else {
        return;
    };
    let last: Mutex<Option<gst::ClockTime>> = Mutex::default();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return drop_data(info);
        };
        let mut last = last.lock().expect("thumbnail probe lock poisoned");
        let due = last.is_none_or(|t| {
            pts < t
                || pts
                    >= t + gst::ClockTime::from_nseconds(
                        DEFAULT_THUMBNAIL_INTERVAL.as_nanos() as u64
                    )
        });
        if due {
            *last = Some(pts);
            gst::PadProbeReturn::Ok
        } else {
            drop_data(info)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_keep_the_programs_aspect_ratio_with_even_sides() {
        let p = |width, height| ProgramSettings {
            width,
            height,
            ..ProgramSettings::default()
        };
        assert_eq!(size(&p(1280, 720)), (320, 180));
        assert_eq!(size(&p(1920, 1080)), (320, 180));
        assert_eq!(size(&p(640, 480)), (320, 240));
        assert_eq!(size(&p(200, 100)), (200, 100));
        assert_eq!(size(&p(1280, 534)), (320, 132));
    }
}
