//! The hand-over from the program's FLV appsinks to the destinations' own pipelines.
//!
//! One appsink per encode hands each FLV buffer to a [`Fanout`], which offers it to every
//! destination's [`FeedSlot`]. Adding or removing a destination that shares an encode is then a
//! map update: nothing in the running pipeline is relinked, so HLS and the other destinations
//! never see it happen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// The destinations fed from one FLV stream.
#[derive(Default)]
pub struct Fanout {
    slots: Mutex<Vec<(String, Arc<FeedSlot>)>>,
}

impl Fanout {
    /// A new slot for destination `id` (replacing any it had).
    pub fn add(&self, id: &str) -> Arc<FeedSlot> {
        let slot = Arc::new(FeedSlot::default());
        let mut slots = self.slots.lock().expect("fanout lock poisoned");
        slots.retain(|(other, _)| other != id);
        slots.push((id.to_owned(), slot.clone()));
        slot
    }

    /// Drops destination `id`'s slot; returns whether any destination is left.
    pub fn remove(&self, id: &str) -> bool {
        let mut slots = self.slots.lock().expect("fanout lock poisoned");
        slots.retain(|(other, _)| other != id);
        !slots.is_empty()
    }

    pub(crate) fn offer(&self, sample: &gst::Sample) {
        // Copy the slots out and drop the lock before calling into GStreamer.
        let slots: Vec<Arc<FeedSlot>> = self
            .slots
            .lock()
            .expect("fanout lock poisoned")
            .iter()
            .map(|(_, slot)| slot.clone())
            .collect();
        for slot in slots {
            slot.offer(sample);
        }
    }
}

/// One destination's place on a [`Fanout`]. The destination attaches its appsrc here; the
/// program never waits on it.
#[derive(Default)]
pub struct FeedSlot {
    target: Mutex<Option<Arc<FeedTarget>>>,
}

struct FeedTarget {
    appsrc: gst_app::AppSrc,
    /// Whether the FLV headers go in the stream too (see [`FeedSlot::attach`]).
    in_band_headers: bool,
    /// Set once the first keyframe has gone through; nothing before it is useful.
    started: AtomicBool,
}

impl FeedSlot {
    /// Routes the feed into `appsrc` from the next keyframe on. With `in_band_headers`, the
    /// FLV header and codec data go first as buffers of their own (for a demuxer, which
    /// reads no caps), not only in the caps (which rtmp2sink reads).
    pub fn attach(&self, appsrc: gst_app::AppSrc, in_band_headers: bool) {
        let target = Arc::new(FeedTarget {
            appsrc,
            in_band_headers,
            started: AtomicBool::new(false),
        });
        *self.target.lock().expect("feed lock poisoned") = Some(target);
    }

    /// Stops routing; later buffers are dropped.
    pub fn detach(&self) {
        *self.target.lock().expect("feed lock poisoned") = None;
    }

    fn offer(&self, sample: &gst::Sample) {
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
                if target.in_band_headers {
                    for header in stream_headers(&caps) {
                        let _ = target.appsrc.push_buffer(header);
                    }
                }
            }
            target.started.store(true, Ordering::Release);
        }
        // A failed push means the destination pipeline is going away; its supervisor sees why.
        let _ = target.appsrc.push_buffer(buffer);
    }
}

/// The `streamheader` buffers of FLV caps, in order.
fn stream_headers(caps: &gst::CapsRef) -> Vec<gst::Buffer> {
    let Some(headers) = caps
        .structure(0)
        .and_then(|s| s.get::<gst::ArrayRef>("streamheader").ok())
    else {
        return Vec::new();
    };
    headers
        .iter()
        .filter_map(|value| value.get::<gst::Buffer>().ok())
        .map(|buffer| {
            // Undated: the demuxer dates the stream by the first tag that is.
            let mut buffer = buffer.copy();
            let b = buffer.make_mut();
            b.set_pts(gst::ClockTime::NONE);
            b.set_dts(gst::ClockTime::NONE);
            buffer
        })
        .collect()
}

/// An appsink that hands every sample to `fanout`.
pub(crate) fn appsink(name: &str, fanout: &Arc<Fanout>) -> gst::Element {
    let sink = gst_app::AppSink::builder().name(name).sync(false).build();
    let weak = Arc::downgrade(fanout);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(fanout) = weak.upgrade() {
                    fanout.offer(&sample);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    sink.upcast()
}
