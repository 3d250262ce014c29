//! The relay actor: one task per relay, the only code that touches its pipelines.
//!
//! It orchestrates: each command from the [`RelayHandle`](super::RelayHandle) has one
//! handler here, each event from the relay's pipelines and publisher is routed to the part
//! that owns it, and after each the operators' view is refreshed. The rules live elsewhere:
//! the program's lifecycle in [`super::lifecycle`], the destinations' in
//! [`super::destinations`], the scoreboard's in [`super::scorebug`], what is worth an event
//! in [`super::observe`]. The actor's own parts are split by what they drive:
//! - `program`: building, draining and tearing down the program pipeline, and its bus;
//! - `input`: the publisher or pulled stream attached to the program;
//! - `outputs`: each destination's push pipeline;
//! - `queue`: a queue relay's casters, seats and hand-overs.
//!
//! It must not block: pipelines are set to `Null` on threads of their own ([`abandon`]), and
//! rendering runs on blocking tasks.

mod input;
mod outputs;
mod program;
mod queue;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gst::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info};

use super::casters::Casters;
use super::destinations::Destinations;
use super::graphics::Graphics;
use super::handle::{
    Admitted, Command, OutputStatus, PublisherStatus, RecordingsInfo, RelayCounters, RelayError,
    RelayHandle, RelayPhase, RelayStatus,
};
use super::lifecycle::{LifeEvent, Lifecycle, Retry};
use super::observe::{Observed, Observer};
use super::scorebug::Scorebug;
use super::spec::RelaySpec;
use super::state;
use super::{OnAir, RelayContext};
use crate::pipeline::bus::{self, ProgramEvent};
use crate::pipeline::record::Recording;
use crate::pipeline::thumbnail::ThumbnailSlot;
use input::Attached;
use outputs::RunningOutput;
use program::RunningProgram;
use queue::QueueRelay;

/// How often the actor samples destination byte counters and due retries.
const DEFAULT_TICK: Duration = Duration::from_millis(500);
/// Commands that may queue for one relay.
const DEFAULT_COMMAND_QUEUE: usize = 64;

/// Messages from the relay's own pipelines and publisher.
pub(in crate::relay) enum Event {
    ProgramBus {
        generation: u64,
        event: ProgramEvent,
    },
    OutputBus {
        output: String,
        generation: u64,
        event: ProgramEvent,
    },
    PublisherGone {
        generation: u64,
    },
    /// A queue relay's caster's connection ended.
    SeatGone {
        name: String,
        seat: u64,
        /// The daemon is stopping (see [`Seat::daemon_stopping`](super::Seat::daemon_stopping)).
        stopping: bool,
    },
}

/// Spawns the actor for `spec` and returns its handle.
pub fn spawn(spec: RelaySpec, ctx: Arc<RelayContext>, casters: Arc<Casters>) -> RelayHandle {
    let (tx, rx) = mpsc::channel(DEFAULT_COMMAND_QUEUE);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let handle = RelayHandle {
        id: spec.id.clone(),
        tx,
    };
    let size = (ctx.program.width, ctx.program.height);
    let queue = spec
        .queue
        .as_ref()
        .map(|q| QueueRelay::load(&spec.id, q.rules(), casters, ctx.queues_dir.as_deref()));
    let actor = Actor {
        queue,
        thumbnail: Arc::default(),
        recording: Arc::default(),
        swept: None,
        record_retry_at: None,
        marked: None,
        hls_marked: None,
        scorebug: Scorebug::new(
            &spec.id,
            spec.overlay.clone(),
            spec.graphics.as_ref().map(|g| {
                Graphics::new(
                    g,
                    ctx.graphics_dir.as_deref(),
                    ctx.program.fps,
                    Instant::now(),
                )
            }),
            size,
        ),
        outputs: Destinations::new(&spec.id, &spec.outputs),
        pushes: BTreeMap::new(),
        spec,
        ctx,
        life: Lifecycle::Stopped,
        started_at: None,
        program: None,
        publisher: None,
        input: None,
        on_air: None,
        input_retry: None,
        last_error: None,
        generation: 0,
        events_tx,
        events_rx,
        observer: Observer::default(),
        pings: Vec::new(),
        ping_frames: 0,
    };
    tokio::spawn(actor.run(rx));
    handle
}

struct Actor {
    spec: RelaySpec,
    ctx: Arc<RelayContext>,
    /// The program's lifecycle; `program` holds its pipeline while it runs or drains.
    life: Lifecycle,
    /// When the operator last started it (for uptime).
    started_at: Option<SystemTime>,
    program: Option<RunningProgram>,
    publisher: Option<PublisherStatus>,
    /// The program's input, when one is attached (decoded programs).
    input: Option<Attached>,
    /// What the program shows, from the switch's own reports.
    on_air: Option<(OnAir, SystemTime)>,
    /// The next attempt to pull the stream again (pull relays).
    input_retry: Option<Retry>,
    last_error: Option<String>,
    scorebug: Scorebug,
    /// Each destination's state and rules.
    outputs: Destinations,
    /// Each destination's push pipeline, while it has one.
    pushes: BTreeMap<String, RunningOutput>,
    /// Numbers every program, input and push session, so that a late message from one that
    /// has gone is told apart from its successor's.
    generation: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    observer: Observer,
    /// Pings waiting for their message to come back through the program's bus.
    pings: Vec<oneshot::Sender<Result<(), String>>>,
    /// The program's encoded frames at the last ping.
    ping_frames: u64,
    /// A queue relay's casters and queue.
    queue: Option<QueueRelay>,
    /// The decoded program's latest thumbnail, kept across programs.
    thumbnail: Arc<ThumbnailSlot>,
    /// The file the program is recording into now.
    recording: Arc<Recording>,
    /// When the recordings were last swept.
    swept: Option<Instant>,
    /// When to try a new file after the last one failed.
    record_retry_at: Option<Instant>,
    /// The recording and scoreboard of the last score marker written.
    marked: Option<(std::path::PathBuf, crate::scores::Scoreboard)>,
    /// The scoreboard last noted for the HLS playlists (`EXT-X-DATERANGE`).
    hls_marked: Option<crate::scores::Scoreboard>,
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(DEFAULT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let queue_due = self.queue_due();
            let graphics_due = self.scorebug.graphics_due();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.scorebug.stop_poller();
                        self.stop_program("relay shut down").await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command).await,
                    None => {
                        self.stop_program("relay deleted").await;
                        break;
                    }
                },
                Some(event) = self.events_rx.recv() => self.on_event(event),
                Some(update) = self.scorebug.next_update() => self.scorebug.on_update(update),
                _ = tick.tick() => self.on_tick(),
                _ = tokio::time::sleep_until(graphics_due.unwrap_or_else(Instant::now)), if graphics_due.is_some() => {
                    self.scorebug.redraw();
                }
                _ = tokio::time::sleep_until(queue_due.unwrap_or_else(Instant::now)), if queue_due.is_some() => {
                    self.tick_queue(Instant::now());
                }
            }
            self.look();
        }
        info!(relay = %self.spec.id, "relay actor ended");
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(reply) => {
                let result = self.on_start();
                let _ = reply.send(result.map(|_| self.status()));
            }
            Command::Stop(reply) => {
                self.on_stop().await;
                let _ = reply.send(self.status());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Publish {
                peer,
                caster,
                container,
                srt,
                reply,
            } => {
                let admitted = match (caster, self.queue.is_some()) {
                    (Some(name), true) => self.join_queue(name, peer, container, srt),
                    (None, true) => Err(RelayError::QueueNeedsCaster {
                        id: self.spec.id.clone(),
                    }),
                    (_, false) => {
                        self.accept_publisher(peer, container, srt)
                            .map(|feed| Admitted {
                                feed: Some(feed),
                                seat: None,
                            })
                    }
                };
                let _ = reply.send(admitted);
            }
            Command::Recordings(reply) => {
                let _ = reply.send(RecordingsInfo {
                    dir: self.recordings_dir(),
                    open: self.recording.current(),
                });
            }
            Command::Thumbnail(reply) => {
                let _ = reply.send(self.thumbnail.latest());
            }
            Command::Queue(reply) => {
                let _ = reply.send(self.queue_status());
            }
            Command::QueueOp { op, reply } => {
                let _ = reply.send(self.queue_op(op));
            }
            Command::AddOutput { spec, reply } => {
                let result = self.add_output(spec);
                let _ = reply.send(result.map(|_| self.status()));
            }
            Command::RemoveOutput { id, reply } => {
                let result = self.remove_output(&id);
                let _ = reply.send(result.map(|_| self.status()));
            }
            Command::Score(reply) => {
                let _ = reply.send(self.scorebug.status());
            }
            Command::Graphics(reply) => {
                let _ = reply.send(self.scorebug.layers());
            }
            Command::ChangeLayer { id, change, reply } => {
                let visible = change.visible;
                let result = self.scorebug.change_layer(&id, change);
                if let (Ok(view), Some(_)) = (&result, visible) {
                    info!(relay = %self.spec.id, layer = %id, visible = view.visible, "graphics layer shown or hidden");
                    self.ctx.events.publish(
                        "graphics",
                        &self.spec.id,
                        serde_json::json!({ "layer": id, "visible": view.visible }),
                    );
                }
                let _ = reply.send(result);
            }
            Command::SetScore { board, reply } => {
                self.scorebug.set_by_hand(*board);
                let _ = reply.send(self.scorebug.status());
            }
            Command::Ping(reply) => self.on_ping(reply),
            Command::Counters(reply) => {
                let _ = reply.send(self.counters());
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn on_start(&mut self) -> Result<(), RelayError> {
        self.renditions()?;
        if self.life.wanted() {
            return Ok(());
        }
        self.life = self.life.next(LifeEvent::Start, Instant::now(), 0.0);
        self.started_at = Some(SystemTime::now());
        self.last_error = None;
        info!(relay = %self.spec.id, "start requested");
        self.scorebug.start_poller();
        self.run_program();
        Ok(())
    }

    async fn on_stop(&mut self) {
        if self.life.wanted() {
            info!(relay = %self.spec.id, "stop requested");
        }
        self.life = self.life.next(LifeEvent::Stop, Instant::now(), 0.0);
        self.started_at = None;
        self.scorebug.stop_poller();
        self.stop_program("stopped by operator").await;
    }

    /// Answers once a message posted on the program's bus has come back (at once with no
    /// program); a decoded program that encoded nothing since the last ping is reported.
    fn on_ping(&mut self, reply: oneshot::Sender<Result<(), String>>) {
        let Some(running) = &self.program else {
            // Pings left over from a program that has gone are answered too.
            for reply in self.pings.drain(..).chain([reply]) {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        let frames = running.program.frames.load(Ordering::Relaxed);
        let stuck = self.spec.transcode && frames > 0 && frames == self.ping_frames;
        self.ping_frames = frames;
        if stuck {
            let _ = reply.send(Err(format!(
                "its program encoded no frame since the last check ({frames} in all)"
            )));
            return;
        }
        if running.program.pipeline.post_message(bus::ping()).is_ok() {
            self.pings.push(reply);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ProgramBus { generation, event } => self.on_program_event(generation, event),
            Event::OutputBus {
                output,
                generation,
                event,
            } => self.on_output_event(&output, generation, &event),
            Event::PublisherGone { generation } => {
                if !self.queue_publisher_gone(generation) {
                    self.on_publisher_gone(generation);
                }
            }
            Event::SeatGone { stopping: true, .. } => self.queue_program_gone(),
            Event::SeatGone { name, seat, .. } => self.on_seat_gone(&name, seat),
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // The stale marker appears (and goes) with time alone.
        self.scorebug.redraw();
        self.tick_program(now);
        self.tick_input(now);
        self.tick_outputs(now);
        self.refresh_queue_line();
        self.sweep_recordings(now);
    }

    /// Publishes what changed since the last look.
    fn look(&mut self) {
        let now = Observed {
            state: self.phase().name(),
            publisher: self.publisher.as_ref().map(|p| p.peer.clone()),
            on_air: self.on_air.map(|(showing, _)| showing.name()),
            outputs: self
                .outputs
                .iter()
                .map(|(id, o)| (id.clone(), (o.state.name(), o.last_error.clone())))
                .collect(),
            score: self
                .scorebug
                .current()
                .map(|(board, source)| (board.clone(), source)),
        };
        self.observer.look(now, &self.ctx.events, &self.spec.id);
        self.mark_score();
    }

    /// Program frames the running program's encoder dropped, not keeping up (0 with none).
    fn frames_dropped(&self) -> u64 {
        self.program
            .as_ref()
            .map_or(0, |p| p.program.frames_dropped.load(Ordering::Relaxed))
    }

    /// Frames the running program has encoded (0 with none).
    fn frames(&self) -> u64 {
        self.program
            .as_ref()
            .map_or(0, |p| p.program.frames.load(Ordering::Relaxed))
    }

    fn phase(&self) -> RelayPhase {
        match &self.life {
            Lifecycle::Stopped => RelayPhase::Stopped,
            Lifecycle::Waiting => RelayPhase::Waiting,
            Lifecycle::Retrying(r) => RelayPhase::Retrying {
                attempt: r.attempt,
                next_at: r.next_at,
                reason: r.reason.clone(),
            },
            Lifecycle::Running { .. } | Lifecycle::Draining { .. } if self.frames() == 0 => {
                RelayPhase::Starting
            }
            Lifecycle::Running { .. } | Lifecycle::Draining { .. } => RelayPhase::Live,
        }
    }

    fn counters(&self) -> RelayCounters {
        RelayCounters {
            bytes_in: self.observer.bytes_in_total(),
            input_frames: self
                .input
                .as_ref()
                .and_then(|a| a.branch.frames_dropped_and_duplicated()),
            av_offset: self.program.as_ref().and_then(|p| {
                let [video, audio] = &p.program.last_pts;
                let (v, a) = (video.load(Ordering::Relaxed), audio.load(Ordering::Relaxed));
                (v != u64::MAX && a != u64::MAX).then(|| (v as f64 - a as f64) / 1e9)
            }),
            state_seconds: self.observer.state_seconds(self.phase().name()),
        }
    }

    fn status(&self) -> RelayStatus {
        RelayStatus {
            spec: self.spec.clone(),
            phase: self.phase(),
            last_error: self.last_error.clone(),
            started_at: self.started_at,
            publisher: self.publisher.clone(),
            on_air: self.on_air,
            frames_encoded: self.frames(),
            frames_dropped: self.frames_dropped(),
            // In the order the operator gave them.
            outputs: self
                .spec
                .outputs
                .iter()
                .filter_map(|spec| self.outputs.get(&spec.id))
                .map(|o| OutputStatus {
                    spec: o.spec.clone(),
                    state: o.state.clone(),
                    last_error: o.last_error.clone(),
                    bytes_sent: self
                        .pushes
                        .get(&o.spec.id)
                        .map_or(o.bytes_sent, |r| r.pipeline.bytes_sent()),
                })
                .collect(),
        }
    }

    /// Moves the program's lifecycle on by `event`, now.
    fn life_event(&mut self, event: LifeEvent) {
        self.life = self.life.next(event, Instant::now(), state::jitter());
    }
}

/// Forwards the bus messages of a pipeline that mean something to the actor (see
/// [`bus::classify`]) into its event channel, until aborted.
fn forward_bus(
    pipeline: &gst::Pipeline,
    events: mpsc::UnboundedSender<Event>,
    wrap: impl Fn(ProgramEvent) -> Event + Send + 'static,
) -> JoinHandle<()> {
    let bus = pipeline.bus().expect("a pipeline always has a bus");
    let mut stream = bus.stream();
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let Some(event) = bus::classify(&message) else {
                continue;
            };
            if events.send(wrap(event)).is_err() {
                break;
            }
        }
    })
}

/// Sets a pipeline to `Null` on a thread of its own. An element that hangs there (as
/// `rtmp2sink` can on a network timeout in GStreamer 1.22) costs that thread, never the
/// actor; a watchdog logs it.
fn abandon(pipeline: gst::Pipeline, what: String) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let name = what.clone();
    let spawned = std::thread::Builder::new()
        .name("teardown".to_owned())
        .spawn(move || {
            let _ = pipeline.set_state(gst::State::Null);
            let _ = done_tx.send(());
        });
    if spawned.is_err() {
        error!(what = %name, "cannot spawn teardown thread");
        return;
    }
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            error!(what = %name, "pipeline teardown still blocked after 10 s; abandoned");
        }
    });
}
