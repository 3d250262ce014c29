//! What keeps a decoded program on air: the slate and the silence, the two input switches and
//! the live syncs after them.
//!
//! ```text
//! slate:  appsrc "slate" (one RGBA picture) ─ videoconvert ─ videoscale ─ imagefreeze (live)
//!   ─ capsfilter ─ queue ─┐
//! publishers (priority 0) ┴► fallbackswitch "video-switch" (slate: priority 2) ─ livesync "video-sync" ─►
//! silence: audiotestsrc "silence" (live) ─ capsfilter ─ queue ─┐
//! publishers (priority 0) ──────────────────────────────────────┴► fallbackswitch "audio-switch"
//!   ─ livesync "audio-sync" ─►
//! ```
//!
//! When the publisher's pictures stop for [`DEFAULT_INPUT_TIMEOUT`], the video switch takes
//! the slate and posts [`INPUT_SWITCHED`]; when they come back, it takes them again. The syncs
//! give everything downstream one segment, one clock and no holes (they repeat the last frame
//! or play silence), so encoders, HLS and every RTMP session carry on as if nothing happened.
//! A queue relay hands over from caster to caster without the slate: the caster whose turn
//! ended steps down to [`OUTGOING_PRIORITY`], the switches wait [`HANDOVER_TIMEOUT`], and the
//! next caster (priority 0) takes the air with their first frame.
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
/// The switch pad priority of a queue relay's caster whose turn just ended: kept on air, frozen
/// on their last frame if they have gone, until the next caster's first frame takes over.
pub const OUTGOING_PRIORITY: u32 = 1;
/// The switch pad priority of the slate and the silence: what the switch falls back to.
const FALLBACK_PRIORITY: u32 = 2;
/// How long the switches wait for an input during a hand-over from one caster to the next
/// (instead of [`DEFAULT_INPUT_TIMEOUT`]): the next caster's decoder starting from their held
/// keyframe must fit in it.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

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

    /// Lets the switches wait [`HANDOVER_TIMEOUT`] for an input (`true`) instead of
    /// [`DEFAULT_INPUT_TIMEOUT`] (`false`) before they take the slate.
    pub fn hold_for_handover(&self, hold: bool) {
        let timeout = if hold {
            HANDOVER_TIMEOUT
        } else {
            DEFAULT_INPUT_TIMEOUT
        };
        for switch in [&self.video, &self.audio] {
            switch.set_property("timeout", timeout.as_nanos() as u64);
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
            .is_some_and(|pad| pad.property::<u32>("priority") >= FALLBACK_PRIORITY);
        let s = gst::Structure::builder(INPUT_SWITCHED)
            .field("slate", slate)
            .build();
        let _ = switch.post_message(gst::message::Element::builder(s).src(switch).build());
    });
}

#[cfg(test)]
mod tests {
    //! The slate switch as the program builds it ([`build`], a publisher linked with
    //! [`link_to_switch`]), run on a `gst_check::TestClock` that only this test moves.
    //!
    //! Every clock wait in the graph (imagefreeze's and audiotestsrc's pacing, the switches'
    //! waits and timeouts, the live syncs' output) is on that clock, so the switch decides by
    //! virtual time alone. The test moves the clock one frame at a time and, before moving it
    //! again, lets the due waits return one by one, each once every streaming thread of the
    //! pipeline is asleep (on a wait not yet due, or on an empty queue): all that can happen
    //! before the next frame has happened, whatever the machine's load. Only the order of
    //! waits due at the same virtual instant is left to the threads. Threads are known by the
    //! stream-status messages they post as they start, and asleep means their state in
    //! `/proc` is `S`. Each switch message is read with [`classify`], as the relay
    //! reads it, and stamped with the clock's time when it was posted. Six virtual seconds
    //! take a fraction of a real one.

    use std::sync::{mpsc, Arc};
    use std::time::{Duration as WallDuration, Instant};

    use gst_check::TestClock;

    use super::*;
    use crate::pipeline::bus::{classify, ProgramEvent};

    /// Clock time of running time 0. The clock starts at 0, not there, so the pipeline's base
    /// time is never mistaken for a frame's time.
    const BASE: gst::ClockTime = gst::ClockTime::from_seconds(1);
    /// How long the graph may take in real time to settle before it counts as stuck.
    const SETTLE_DEADLINE: WallDuration = WallDuration::from_secs(10);

    /// The program: small frames, 20 fps.
    fn settings() -> ProgramSettings {
        ProgramSettings {
            width: 160,
            height: 90,
            fps: 20,
            ..ProgramSettings::default()
        }
    }

    fn clock_time(d: Duration) -> gst::ClockTime {
        gst::ClockTime::from_nseconds(d.as_nanos() as u64)
    }

    /// What the relay would read off the bus.
    enum Seen {
        Switched { slate: bool, at: gst::ClockTime },
        Failed(String),
    }

    /// The switch in a pipeline of its own, with a publisher's appsrc on it and sinks after
    /// the syncs.
    struct Rig {
        pipeline: gst::Pipeline,
        clock: TestClock,
        input: gst_app::AppSrc,
        frame: gst::ClockTime,
        frame_bytes: usize,
        /// Running time now.
        now: gst::ClockTime,
        /// The `/proc` stat file of each streaming thread.
        threads: Arc<Mutex<Vec<String>>>,
        seen: mpsc::Receiver<Seen>,
    }

    impl Rig {
        fn start(p: &ProgramSettings) -> Self {
            crate::pipeline::init().expect("GStreamer and the static plugins initialise");
            let clock = TestClock::new();
            let pipeline = gst::Pipeline::with_name("switch-test");
            pipeline.use_clock(Some(&clock));
            pipeline.set_start_time(gst::ClockTime::NONE);
            pipeline.set_base_time(BASE);
            clock.set_time(BASE);

            let slate =
                image::RgbaImage::from_pixel(p.width, p.height, image::Rgba([200, 0, 0, 255]));
            let switch = build(&pipeline, p, &slate).expect("the switch builds");
            let input = gst_app::AppSrc::builder()
                .name("input")
                .caps(&program_video_caps(p))
                .is_live(true)
                .format(gst::Format::Time)
                .build();
            // A publisher's branch ends in a queue and converters, not at its source.
            let input_q = make("queue", "input-q").expect("queue exists");
            let input_el = input.clone().upcast::<gst::Element>();
            add_elements(&pipeline, &[&input_el, &input_q]).expect("add the input");
            link_chain(&[&input_el, &input_q]).expect("link the input");
            let input_pad = input_q.static_pad("src").expect("a queue has a src pad");
            link_to_switch(&input_pad, &switch.video, PUBLISHER_PRIORITY)
                .expect("the input links to the switch");
            for sync in [&switch.video_sync, &switch.audio_sync] {
                let sink = make("fakesink", &format!("{}-out", sync.name())).expect("fakesink");
                sink.set_property("sync", false);
                // Playing at once: prerolling would wait for frames, which wait for the clock.
                sink.set_property("async", false);
                add_elements(&pipeline, &[&sink]).expect("add a sink");
                link_chain(&[sync, &sink]).expect("link a sync to its sink");
            }

            let threads: Arc<Mutex<Vec<String>>> = Arc::default();
            let (seen_tx, seen) = mpsc::channel();
            let bus = pipeline.bus().expect("a pipeline has a bus");
            let at = clock.clone();
            let started = threads.clone();
            bus.set_sync_handler(move |_, message| {
                if let gst::MessageView::StreamStatus(status) = message.view() {
                    // Posted by the streaming thread itself as it starts.
                    if status.get().0 == gst::StreamStatusType::Enter {
                        let me = std::fs::read_link("/proc/thread-self")
                            .expect("Linux names the thread in /proc");
                        let stat = format!("/proc/{}/stat", me.display());
                        started.lock().expect("thread list lock").push(stat);
                    }
                    return gst::BusSyncReply::Drop;
                }
                let seen = match classify(message) {
                    Some(ProgramEvent::InputSwitched { slate }) => Seen::Switched {
                        slate,
                        at: at.time() - BASE,
                    },
                    Some(ProgramEvent::Error { error, .. }) => Seen::Failed(error.to_string()),
                    _ => return gst::BusSyncReply::Drop,
                };
                let _ = seen_tx.send(seen);
                gst::BusSyncReply::Drop
            });

            pipeline
                .set_state(gst::State::Playing)
                .expect("the switch plays");
            let rig = Self {
                pipeline,
                clock,
                input,
                frame: gst::ClockTime::SECOND / u64::from(p.fps),
                frame_bytes: (p.width * p.height * 3 / 2) as usize,
                now: gst::ClockTime::ZERO,
                threads,
                seen,
            };
            // Every streaming thread must be known before the first settle counts on them.
            let expected = started_tasks(&rig.pipeline);
            let deadline = Instant::now() + SETTLE_DEADLINE;
            while rig.threads.lock().expect("thread list lock").len() < expected {
                assert!(
                    Instant::now() < deadline,
                    "the streaming threads never started"
                );
                std::thread::sleep(WallDuration::from_micros(200));
            }
            rig.settle();
            rig
        }

        /// Runs `length` of virtual time, one frame at a time, giving the input a frame
        /// (stamped with the running time now) at each step when `feed`. Returns the
        /// switches seen, with the running time each was posted at.
        fn run(&mut self, length: gst::ClockTime, feed: bool) -> Vec<(bool, gst::ClockTime)> {
            let end = self.now + length;
            let mut switches = Vec::new();
            while self.now < end {
                if feed {
                    let mut buffer = gst::Buffer::from_mut_slice(vec![128u8; self.frame_bytes]);
                    {
                        let buffer = buffer.get_mut().expect("a new buffer is writable");
                        buffer.set_pts(self.now);
                        buffer.set_duration(self.frame);
                    }
                    self.input
                        .push_buffer(buffer)
                        .expect("the input takes a frame");
                    self.settle();
                }
                self.now += self.frame;
                self.clock.set_time(BASE + self.now);
                self.settle();
                while let Ok(seen) = self.seen.try_recv() {
                    match seen {
                        Seen::Switched { slate, at } => switches.push((slate, at)),
                        Seen::Failed(error) => panic!("the switch failed: {error}"),
                    }
                }
            }
            switches
        }

        /// Lets the clock waits that are due return one at a time, each once every streaming
        /// thread is asleep (the last one released has done all it could), until every
        /// thread is asleep with nothing due. One thread at a time runs, as far as the graph
        /// allows, so the order of events does not depend on the machine.
        fn settle(&self) {
            let deadline = Instant::now() + SETTLE_DEADLINE;
            loop {
                if self.all_asleep() {
                    if !self.anything_due() {
                        return;
                    }
                    self.clock.process_next_clock_id();
                    continue;
                }
                assert!(
                    Instant::now() < deadline,
                    "the graph never settled at {}",
                    self.now
                );
                std::thread::sleep(WallDuration::from_micros(100));
            }
        }

        fn anything_due(&self) -> bool {
            let now = self.clock.time();
            self.clock
                .peek_next_pending_id()
                .is_some_and(|id| id.time() <= now)
        }

        /// Whether every streaming thread sleeps (a thread that has ended does too).
        fn all_asleep(&self) -> bool {
            let threads = self.threads.lock().expect("thread list lock").clone();
            threads.iter().all(|stat| {
                let Ok(stat) = std::fs::read_to_string(stat) else {
                    return true;
                };
                // pid (comm) state ...: comm may hold spaces and parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('S'))
            })
        }
    }

    /// How many pads of `pipeline` run a streaming thread.
    fn started_tasks(pipeline: &gst::Pipeline) -> usize {
        pipeline
            .iterate_recurse()
            .into_iter()
            .flatten()
            .flat_map(|element| element.pads())
            .filter(|pad| pad.task_state() == gst::TaskState::Started)
            .count()
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = self.pipeline.set_state(gst::State::Null);
        }
    }

    #[test]
    fn the_switch_takes_the_slate_when_the_input_stops_and_gives_it_back() {
        let mut rig = Rig::start(&settings());
        let ms = gst::ClockTime::from_mseconds;
        let timeout = clock_time(DEFAULT_INPUT_TIMEOUT);
        let latency = clock_time(DEFAULT_INPUT_LATENCY);
        // Which of two waits due at the same virtual instant goes first is up to the threads;
        // it can move a switch by a frame or two.
        let slack = 2 * rig.frame;

        // Nobody publishing: the slate at once.
        let seen = rig.run(ms(1000), false);
        assert!(
            matches!(seen[..], [(true, at)] if at <= slack),
            "expected the slate at once, got {seen:?}"
        );

        // A publisher's frames: the switch takes the first one when its latency is up.
        let first = rig.now;
        let seen = rig.run(ms(1500), true);
        let [(false, at)] = seen[..] else {
            panic!("expected one switch to the input, got {seen:?}");
        };
        let taken = first + latency;
        assert!(
            at >= taken && at <= taken + slack,
            "input at {at}, its first frame at {first}"
        );

        // The publisher stops. Never before the timeout has passed, the switch takes the
        // slate: it waits for the timeout after the last frame it sent (that frame's end plus
        // the latency it was sent at), then sends the slate's next frame when that frame's own
        // latency is up.
        let last_end = rig.now;
        let seen = rig.run(ms(2000), false);
        let [(true, at)] = seen[..] else {
            panic!("expected one switch to the slate, got {seen:?}");
        };
        assert!(
            at >= last_end + timeout,
            "slate at {at}, the input's last frame ended at {last_end}"
        );
        let taken = last_end + latency + timeout + latency;
        assert!(
            at >= taken && at <= taken + slack,
            "slate at {at}, the input's last frame ended at {last_end}"
        );

        // It comes back: the input again, as at first.
        let back = rig.now;
        let seen = rig.run(ms(1500), true);
        let [(false, at)] = seen[..] else {
            panic!("expected one switch back to the input, got {seen:?}");
        };
        let taken = back + latency;
        assert!(
            at >= taken && at <= taken + slack,
            "input at {at}, back at {back}"
        );
    }
}
