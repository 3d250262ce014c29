//! One RTMP destination's own pipeline.
//!
//! ```text
//! appsrc "feed" (FLV from one of the program's FLV muxes, via a FeedSlot) ─ rtmp2sink "out-<id>"
//! ```
//!
//! Kept apart from the program so that its failure, or an `rtmp2sink` that hangs on a network
//! timeout, touches nothing else: the relay actor can abandon it.

use gst::prelude::*;

use super::{link_chain, make, PipelineError};

/// FLV the destination may queue before the oldest is dropped.
const DEFAULT_FEED_MAX_BYTES: u64 = 8 * 1024 * 1024;

pub struct OutputPipeline {
    pub pipeline: gst::Pipeline,
    pub feed: gst_app::AppSrc,
    sink: gst::Element,
}

/// Builds (does not start) the pipeline that pushes to `url`.
pub fn build(relay_id: &str, output_id: &str, url: &str) -> Result<OutputPipeline, PipelineError> {
    let pipeline = gst::Pipeline::with_name(&format!("relay-{relay_id}-out-{output_id}"));
    let feed = gst_app::AppSrc::builder()
        .name("feed")
        .is_live(true)
        .format(gst::Format::Time)
        .max_bytes(DEFAULT_FEED_MAX_BYTES)
        .block(false)
        .build();
    feed.set_property_from_str("leaky-type", "downstream");
    let sink = make("rtmp2sink", &format!("out-{output_id}"))?;
    sink.set_property("location", url);
    sink.set_property("sync", false);
    let feed_el = feed.clone().upcast::<gst::Element>();
    pipeline
        .add_many([&feed_el, &sink])
        .map_err(|_| PipelineError::Link {
            from: "pipeline".to_owned(),
            to: sink.name().to_string(),
        })?;
    link_chain(&[&feed_el, &sink])?;
    Ok(OutputPipeline {
        pipeline,
        feed,
        sink,
    })
}

impl OutputPipeline {
    /// Bytes written to the destination so far, from `rtmp2sink`'s statistics.
    pub fn bytes_sent(&self) -> u64 {
        let stats = self.sink.property::<gst::Structure>("stats");
        stats.get::<u64>("out-bytes-total").unwrap_or(0)
    }
}
