//! The overlay in a real GStreamer pipeline: a solid test picture goes through the program's
//! overlay element (its blend) and is read back as RGBA. The scorebug region must differ from
//! the source and match the rendered bug; after the scoreboard changes, the new bug shows
//! within the frames already past the overlay when it was swapped.

use std::sync::Arc;

use gst::prelude::*;
use image::{Rgba, RgbaImage};
use scorecast::pipeline::{self, overlay};
use scorecast::render::{render, Bug, Logos, Theme};
use scorecast::scores::Scoreboard;

const W: u32 = 1280;
const H: u32 = 720;
/// The test picture's colour (RGB).
const SOURCE: [u8; 3] = [48, 80, 160];

fn bug(home: u32) -> Bug {
    let board: Scoreboard = serde_json::from_str(&format!(
        r#"{{"home":{{"name":"NAVI","score":{home}}},"away":{{"name":"G2","score":0}},"period":"Map 1"}}"#
    ))
    .expect("valid scoreboard");
    render(&board, Logos::default(), false, &Theme::default(), W, H)
}

/// What the bug should look like over the solid source, blended by its alpha.
fn expected(bug: &Bug) -> RgbaImage {
    RgbaImage::from_fn(bug.image.width(), bug.image.height(), |x, y| {
        let p = bug.image.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let mix = |c: usize| ((u32::from(p[c]) * a + u32::from(SOURCE[c]) * (255 - a)) / 255) as u8;
        Rgba([mix(0), mix(1), mix(2), 255])
    })
}

/// Mean absolute RGB difference between the frame's bug region and `reference`, over the
/// pixels where `mask` holds.
fn region_error(
    frame: &RgbaImage,
    bug: &Bug,
    reference: &RgbaImage,
    mask: &dyn Fn(u32, u32) -> bool,
) -> f64 {
    let (mut sum, mut n) = (0u64, 0u64);
    for y in 0..reference.height() {
        for x in 0..reference.width() {
            if !mask(x, y) {
                continue;
            }
            let a = frame.get_pixel(bug.x + x, bug.y + y).0;
            let b = reference.get_pixel(x, y).0;
            sum += (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>();
            n += 3;
        }
    }
    sum as f64 / n.max(1) as f64
}

struct Harness {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    /// Frames that have entered the overlay element so far.
    entered: Arc<std::sync::atomic::AtomicU64>,
}

impl Harness {
    fn new(slot: &Arc<overlay::OverlaySlot>) -> Self {
        pipeline::init().expect("GStreamer initialises");
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("videotestsrc")
            .property_from_str("pattern", "solid-color")
            .property(
                "foreground-color",
                0xff00_0000u32
                    | u32::from(SOURCE[0]) << 16
                    | u32::from(SOURCE[1]) << 8
                    | u32::from(SOURCE[2]),
            )
            .build()
            .expect("videotestsrc");
        let caps = gst::ElementFactory::make("capsfilter")
            .property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", W as i32)
                    .field("height", H as i32)
                    .field("framerate", gst::Fraction::new(30, 1))
                    .build(),
            )
            .build()
            .expect("capsfilter");
        let overlay = overlay::element(slot).expect("the overlay element builds");
        let convert = gst::ElementFactory::make("videoconvert")
            .build()
            .expect("videoconvert");
        let sink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGBA")
                    .build(),
            )
            .max_buffers(1)
            .sync(false)
            .build();
        let sink_el = sink.clone().upcast::<gst::Element>();
        pipeline
            .add_many([&src, &caps, &overlay, &convert, &sink_el])
            .expect("add");
        gst::Element::link_many([&src, &caps, &overlay, &convert, &sink_el]).expect("link");
        let entered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = entered.clone();
        overlay
            .static_pad("sink")
            .expect("overlay sink pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
        pipeline.set_state(gst::State::Playing).expect("play");
        Self {
            pipeline,
            sink,
            entered,
        }
    }

    /// The next frame: its index (from its timestamp, 30 fps) and its pixels.
    fn numbered_frame(&self) -> (u64, RgbaImage) {
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .expect("a frame within 10 s");
        let buffer = sample.buffer().expect("a buffer");
        let index = buffer
            .pts()
            .map_or(0, |t| (t.nseconds() * 30 + 500_000_000) / 1_000_000_000);
        let map = buffer.map_readable().expect("readable");
        let image = RgbaImage::from_raw(W, H, map.as_slice()[..(W * H * 4) as usize].to_vec())
            .expect("RGBA frame");
        (index, image)
    }

    fn frame(&self) -> RgbaImage {
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .expect("a frame within 10 s");
        let buffer = sample.buffer().expect("a buffer");
        let map = buffer.map_readable().expect("readable");
        RgbaImage::from_raw(W, H, map.as_slice()[..(W * H * 4) as usize].to_vec())
            .expect("RGBA frame")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[test]
fn scorebug_pixels_match_the_render_and_follow_changes() {
    pipeline::init().expect("GStreamer initialises");
    let slot = Arc::new(overlay::OverlaySlot::default());
    let one = bug(1);
    slot.show(
        Some(overlay::composition(std::slice::from_ref(&one)).expect("composition")),
        1,
    );
    let harness = Harness::new(&slot);

    let frame = harness.frame();
    let everywhere = |_: u32, _: u32| true;
    let solid = RgbaImage::from_pixel(
        one.image.width(),
        one.image.height(),
        Rgba([SOURCE[0], SOURCE[1], SOURCE[2], 255]),
    );
    let vs_source = region_error(&frame, &one, &solid, &everywhere);
    let vs_bug = region_error(&frame, &one, &expected(&one), &everywhere);
    eprintln!(
        "bug region: mean error {vs_bug:.2} against the render, {vs_source:.1} against the source"
    );
    assert!(
        vs_source > 30.0,
        "the bug region looks like the source (error {vs_source:.1})"
    );
    assert!(
        vs_bug < 10.0,
        "the bug region does not match the render (error {vs_bug:.1})"
    );
    // Outside the bug, the picture is untouched.
    let far = frame.get_pixel(W - 10, H - 10).0;
    assert!((0..3).all(|c| far[c].abs_diff(SOURCE[c]) <= 4), "{far:?}");

    // The score changes: only the digits differ, so compare where the two renders differ.
    let two = bug(2);
    let (want, old) = (expected(&two), expected(&one));
    let differs = |x: u32, y: u32| {
        let (a, b) = (want.get_pixel(x, y).0, old.get_pixel(x, y).0);
        (0..3).any(|c| a[c].abs_diff(b[c]) > 64)
    };
    let composition = overlay::composition(std::slice::from_ref(&two)).expect("composition");
    let entered_at_swap = harness.entered.load(std::sync::atomic::Ordering::SeqCst);
    slot.show(Some(composition), 2);
    // Frames that entered the overlay before the swap were drawn with the old bug (one may
    // have been mid-draw). Every frame after that one must carry the new bug.
    let mut first_new = None;
    for _ in 0..8 {
        let (index, frame) = harness.numbered_frame();
        let (to_new, to_old) = (
            region_error(&frame, &two, &want, &differs),
            region_error(&frame, &two, &old, &differs),
        );
        let is_new = to_new + 20.0 < to_old;
        if index > entered_at_swap {
            assert!(is_new, "frame {index} entered after the swap (at {entered_at_swap}) but shows the old score");
        }
        if is_new && first_new.is_none() {
            first_new = Some(index);
        }
        if index > entered_at_swap + 1 {
            break;
        }
    }
    let first_new = first_new.expect("the new score never showed");
    eprintln!(
        "swap after {entered_at_swap} frames had entered the overlay; first new frame: {first_new}"
    );
    assert!(
        first_new <= entered_at_swap + 1,
        "the new score came {} frames late",
        first_new - entered_at_swap
    );

    // Cleared: the region is the source again.
    slot.show(None, 3);
    let _ = harness.frame();
    let _ = harness.frame();
    let frame = harness.frame();
    assert!(
        region_error(&frame, &one, &solid, &everywhere) < 4.0,
        "the bug did not go away"
    );
}
