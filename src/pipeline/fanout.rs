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
