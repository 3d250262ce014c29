//! The overlay's place in the program: an `overlaycomposition` element whose `draw` signal
//! returns the cached composition from an [`OverlaySlot`].
//!
//! Per frame, the streaming thread only clones a reference-counted composition (the element
//! blends it). The composition is built from a rendered [`Bug`] off the streaming thread,
//! when the scoreboard changes, and swapped in whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

use super::{make, PipelineError};
use crate::render::Bug;

/// The composition to draw on every frame, if any.
#[derive(Default)]
pub struct OverlaySlot {
    current: Mutex<Option<gst_video::VideoOverlayComposition>>,
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
    pub fn show(&self, composition: Option<gst_video::VideoOverlayComposition>, seq: u64) {
        let mut current = self.current.lock().expect("overlay lock poisoned");
        if seq < self.shown.load(Ordering::Acquire) {
            return;
        }
        self.shown.store(seq, Ordering::Release);
        *current = composition;
    }

    fn current(&self) -> Option<gst_video::VideoOverlayComposition> {
        self.current.lock().expect("overlay lock poisoned").clone()
    }
}

/// Builds the overlay element of the program, drawing from `slot`.
pub fn element(slot: &Arc<OverlaySlot>) -> Result<gst::Element, PipelineError> {
    let overlay = make("overlaycomposition", "overlay")?;
    let weak = Arc::downgrade(slot);
    overlay.connect("draw", false, move |_| {
        let composition = weak.upgrade().and_then(|slot| slot.current());
        Some(composition.to_value())
    });
    Ok(overlay)
}

/// Turns rendered pictures (the scorebug, a queue line) into one composition (BGRA, straight
/// alpha), ready to swap in.
pub fn composition(bugs: &[Bug]) -> Result<gst_video::VideoOverlayComposition, PipelineError> {
    let rects = bugs.iter().map(rectangle).collect::<Result<Vec<_>, _>>()?;
    compose(&rects)
}

/// One composition of `rects`, in order. A rectangle kept from an earlier composition keeps
/// what the blender made of it (its conversion to the frame's format): only new ones cost a
/// conversion.
pub fn compose(
    rects: &[gst_video::VideoOverlayRectangle],
) -> Result<gst_video::VideoOverlayComposition, PipelineError> {
    let (first, rest) = rects
        .split_first()
        .ok_or_else(|| PipelineError::Overlay("nothing to draw".to_owned()))?;
    let mut composition = gst_video::VideoOverlayComposition::new(Some(first))
        .map_err(|_| PipelineError::Overlay("cannot build the composition".to_owned()))?;
    {
        let composition = composition.make_mut();
        for rect in rest {
            composition.add_rectangle(rect);
        }
    }
    Ok(composition)
}

/// One rendered picture as a rectangle at its place in the frame.
pub fn rectangle(bug: &Bug) -> Result<gst_video::VideoOverlayRectangle, PipelineError> {
    let (w, h) = bug.image.dimensions();
    let error = |what: &str| PipelineError::Overlay(format!("{what} for a {w}x{h} scorebug"));
    let mut bgra = bug.image.as_raw().clone();
    for px in bgra.chunks_exact_mut(4) {
        px.swap(0, 2);
    }
    let mut buffer = gst::Buffer::from_mut_slice(bgra);
    {
        let buffer = buffer
            .get_mut()
            .ok_or_else(|| error("cannot write the buffer"))?;
        gst_video::VideoMeta::add(
            buffer,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Bgra,
            w,
            h,
        )
        .map_err(|_| error("cannot describe the buffer"))?;
    }
    Ok(gst_video::VideoOverlayRectangle::new_raw(
        &buffer,
        bug.x as i32,
        bug.y as i32,
        w,
        h,
        gst_video::VideoOverlayFormatFlags::empty(),
    ))
}
