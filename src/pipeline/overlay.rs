//! The overlay's place in the program: an `identity` element "overlay" whose source pad
//! blends the cached composition from an [`OverlaySlot`] into each frame, in place.
//!
//! Per frame, the streaming thread clones a reference-counted composition and blends the
//! visible pixels of its pictures ([`super::blend`]). The composition is built from rendered
//! [`Bug`]s off the streaming thread, when what the overlay shows changes, and swapped in
//! whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_video::prelude::*;

use super::blend::Picture;
use super::{make, PipelineError};
use crate::render::Bug;

/// Pictures to blend into every frame, in order (the later ones on top).
pub type Composition = Arc<[Rectangle]>;

/// One picture at its place in the frame, converted for the blend. Kept from one composition
/// to the next while it shows the same thing, so only new pictures cost a conversion.
pub type Rectangle = Arc<Picture>;

/// The composition to draw on every frame, if any.
#[derive(Default)]
pub struct OverlaySlot {
    current: Mutex<Option<Composition>>,
    /// The sequence number of the composition shown; older ones arriving late are ignored.
    shown: AtomicU64,
}

impl std::fmt::Debug for OverlaySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySlot")
            .field("shown", &self.shown.load(Ordering::Relaxed))
            .finish()
    }
}

impl OverlaySlot {
    /// Shows `composition` (or nothing) unless a newer one is already shown.
    pub fn show(&self, composition: Option<Composition>, seq: u64) {
        let mut current = self.current.lock().expect("overlay lock poisoned");
        if seq < self.shown.load(Ordering::Acquire) {
            return;
        }
        self.shown.store(seq, Ordering::Release);
        *current = composition;
    }

    fn current(&self) -> Option<Composition> {
        self.current.lock().expect("overlay lock poisoned").clone()
    }
}

/// Builds the overlay element of the program, drawing from `slot` into its I420 frames.
pub fn element(slot: &Arc<OverlaySlot>) -> Result<gst::Element, PipelineError> {
    let overlay = make("identity", "overlay")?;
    overlay.set_property("silent", true);
    let pad = overlay
        .static_pad("src")
        .ok_or_else(|| PipelineError::Overlay("identity has no source pad".to_owned()))?;
    let weak = Arc::downgrade(slot);
    let info: Mutex<Option<gst_video::VideoInfo>> = Mutex::default();
    let warned = AtomicBool::new(false);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, probe| {
            match &mut probe.data {
                Some(gst::PadProbeData::Event(event)) => {
                    if let gst::EventView::Caps(caps) = event.view() {
                        let format = gst_video::VideoInfo::from_caps(caps.caps()).ok();
                        *info.lock().expect("overlay caps lock poisoned") = format;
                    }
                }
                Some(gst::PadProbeData::Buffer(buffer)) => {
                    let Some(composition) = weak.upgrade().and_then(|slot| slot.current())
                    else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let info = info.lock().expect("overlay caps lock poisoned").clone();
                    if let Err(why) = draw(buffer.make_mut(), info.as_ref(), &composition) {
                        if !warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(reason = %why, "the overlay cannot draw on these frames");
                        }
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    Ok(overlay)
}

/// Blends `composition` into one frame.
fn draw(
    buffer: &mut gst::BufferRef,
    info: Option<&gst_video::VideoInfo>,
    composition: &[Rectangle],
) -> Result<(), String> {
    let info = info.ok_or("no caps before the first frame")?;
    if info.format() != gst_video::VideoFormat::I420 {
        return Err(format!("{:?} frames (the program is I420)", info.format()));
    }
    let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, info)
        .map_err(|_| "the frame cannot be mapped for writing".to_owned())?;
    let strides = frame.plane_stride();
    let strides = [0, 1, 2].map(|i| strides[i] as usize);
    let size = (frame.width(), frame.height());
    let [y, u, v, _] = frame.planes_data_mut();
    for picture in composition {
        picture.blend_i420([&mut *y, &mut *u, &mut *v], strides, size);
    }
    Ok(())
}
/// Turns rendered pictures (the scorebug, a queue line) into one composition.
pub fn composition(bugs: &[Bug]) -> Result<Composition, PipelineError> {
    let rects = bugs.iter().map(rectangle).collect::<Result<Vec<_>, _>>()?;
    compose(&rects)
}

/// One composition of `rects`, in order.
pub fn compose(rects: &[Rectangle]) -> Result<Composition, PipelineError> {
    if rects.is_empty() {
        return Err(PipelineError::Overlay("nothing to draw".to_owned()));
    }
    Ok(rects.iter().cloned().collect())
}

/// One rendered picture at its place in the frame.
pub fn rectangle(bug: &Bug) -> Result<Rectangle, PipelineError> {
    let (w, h) = bug.image.dimensions();
    if w == 0 || h == 0 {
        return Err(PipelineError::Overlay(format!("an empty {w}x{h} picture")));
    }
    Ok(Arc::new(Picture::new(
        &bug.image,
        i64::from(bug.x),
        i64::from(bug.y),
    )))
}
