//! Relays: one actor task per relay, owning its pipelines.
//!
//! The actor is the only code that touches its `gst::Pipeline`s. Everyone else holds a
//! [`RelayHandle`] and sends it commands that carry their own reply channel. The actor keeps
//! what was asked (the spec and whether the relay should run) apart from what is (the
//! program, the publisher, each destination's state), and computes the status from the latter.

pub mod registry;
pub mod spec;
pub mod state;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gst::prelude::*;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{HlsSettings, ProgramSettings};
use crate::events::EventBus;
use crate::pipeline::bus::{BusError, ProgramEvent, Segment};
use crate::pipeline::input::{Arrival, IngestBranch, Source};
use crate::pipeline::ladder::{self, Encode, Rendition, Variant};
use crate::pipeline::output::{self, OutputPipeline};
use crate::pipeline::overlay::{self as overlay_el, OverlaySlot};
use crate::pipeline::program::{self, Input, Program};
use crate::pipeline::{self as pl, continuity, PipelineError};
use crate::render::{self, Logos, SlateMessage};
use crate::scores::poller::{self, LogoSet, PollUpdate, PollerSettings};
use crate::scores::{ScoreKeeper, Scoreboard, Source as ScoreSource};
use spec::{OutputSpec, RelaySpec};
use state::{OutputEvent, OutputState};

/// How long a stopping program may take to drain (final playlist) before it is torn down.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the actor samples destination byte counters and due retries.
const DEFAULT_TICK: Duration = Duration::from_millis(500);
/// Bytes a destination session must have sent before it counts as live: more than the RTMP
/// handshake and the connect/publish commands, so a server that refuses the publish late
/// never looks live.
const DEFAULT_LIVE_BYTES: u64 = 64 * 1024;
/// A destination that stays live this long has its failure count (and so its backoff) reset.
const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(60);
/// A destination must go live within this time of its push pipeline starting.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A live destination whose byte counter stands still this long has stopped reading.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A publisher that has sent nothing for this long may be replaced by a new publish on its
/// key (the caster restarted OBS while the old connection lingers).
const DEFAULT_STALE_PUBLISHER: Duration = Duration::from_secs(2);
/// The slate's background, drawn under its message at the program's size.
const SLATE_BACKGROUND: &[u8] = include_bytes!("../../assets/slate.png");
/// Commands that may queue for one relay.
const DEFAULT_COMMAND_QUEUE: usize = 64;

/// Daemon-wide settings every relay needs.
#[derive(Debug, Clone)]
pub struct RelayContext {
    pub program: ProgramSettings,
    pub hls: HlsSettings,
    /// `<data_dir>/hls`; each relay writes into its own sub-directory.
    pub hls_root: PathBuf,
    /// The slate's two pictures at the program's size, drawn once on first use.
    pub slates: Slates,
    /// Where relays publish their live events.
    pub events: Arc<EventBus>,
}

/// The slate pictures, drawn on first use (every relay shares the program size).
#[derive(Debug, Clone, Default)]
pub struct Slates(OnceLock<[Arc<image::RgbaImage>; 2]>);

impl Slates {
    /// The slate saying `message`, at `program`'s size.
    fn get(&self, message: SlateMessage, program: &ProgramSettings) -> Arc<image::RgbaImage> {
        let [soon, back] = self.0.get_or_init(|| {
            let background = image::load_from_memory(SLATE_BACKGROUND)
                .expect("the bundled slate is a valid PNG")
                .to_rgba8();
            [SlateMessage::StartingSoon, SlateMessage::BeRightBack]
                .map(|m| Arc::new(render::slate(&background, program.width, program.height, m)))
        });
        match message {
            SlateMessage::StartingSoon => soon.clone(),
            SlateMessage::BeRightBack => back.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay {id} is not running; start it first")]
    NotRunning { id: String },
    #[error("relay {id} already has a publisher ({peer})")]
    AlreadyPublishing { id: String, peer: String },
    #[error("relay {id} pulls from a URL and takes no publisher")]
    NotPush { id: String },
    #[error("relay {id}: {source}")]
    Pipeline { id: String, source: PipelineError },
    #[error("relay {id}: {field}: {message}")]
    Invalid {
        id: String,
        field: String,
        message: String,
    },
    #[error("relay {id} has shut down")]
    Gone { id: String },
    #[error("relay {id} already has an output {output:?}")]
    OutputExists { id: String, output: String },
    #[error("relay {id} has no output {output:?}")]
    NoSuchOutput { id: String, output: String },
}

/// The relay's overall state, computed from what is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPhase {
    /// Not asked to run.
    Stopped,
    /// Asked to run, waiting for a publisher on its stream key (passthrough relays, which
    /// have no slate to show meanwhile).
    Waiting,
    /// The program is built and running; no frame has been encoded yet.
    Starting,
    /// Frames are flowing through the program.
    Live,
    /// The program failed; it is rebuilt at `next_at`.
    Retrying {
        attempt: u32,
        next_at: Instant,
        reason: String,
    },
}

impl RelayPhase {
    pub fn name(&self) -> &'static str {
        match self {
            RelayPhase::Stopped => "stopped",
            RelayPhase::Waiting => "waiting",
            RelayPhase::Starting => "starting",
            RelayPhase::Live => "live",
            RelayPhase::Retrying { .. } => "retrying",
        }
    }
}

/// A snapshot of a relay, for the API.
#[derive(Debug, Clone)]
pub struct RelayStatus {
    pub spec: RelaySpec,
    pub phase: RelayPhase,
    pub last_error: Option<String>,
    /// When the operator last started it (for uptime).
    pub started_at: Option<SystemTime>,
    pub publisher: Option<PublisherStatus>,
    /// What the program shows, and since when: the publisher's pictures or the slate.
    pub on_air: Option<(OnAir, SystemTime)>,
    pub frames_encoded: u64,
    pub outputs: Vec<OutputStatus>,
}

/// Counters for `/metrics` that the relay JSON does not show.
#[derive(Debug, Clone, Default)]
pub struct RelayCounters {
    /// Bytes its publishers have pushed, over the relay's life.
    pub bytes_in: u64,
    /// Frames the current input's rate adapter dropped and duplicated.
    pub input_frames: Option<(u64, u64)>,
    /// Seconds spent in each state since the relay was made.
    pub state_seconds: Vec<(&'static str, f64)>,
    /// The last encoded video timestamp minus the last encoded audio one, in seconds.
    pub av_offset: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct PublisherStatus {
    pub peer: String,
    pub since: SystemTime,
}

/// What a decoded program is showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAir {
    /// The input: a publisher's or a pulled stream's pictures.
    Input,
    /// The slate ("starting soon", or "we'll be right back" once an input was lost).
    Slate,
}

impl OnAir {
    pub fn name(self) -> &'static str {
        match self {
            OnAir::Input => "input",
            OnAir::Slate => "slate",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutputStatus {
    pub spec: OutputSpec,
    pub state: OutputState,
    pub last_error: Option<String>,
    pub bytes_sent: u64,
}

/// The scoreboard as the relay holds it, for the API.
#[derive(Debug, Clone)]
pub struct ScoreStatus {
    pub scoreboard: Option<Scoreboard>,
    pub source: Option<ScoreSource>,
    pub updated_at: Option<SystemTime>,
    /// Seconds since its source last confirmed it.
    pub age: Option<f64>,
    pub stale: bool,
    /// Why the scores API's last answer was not used, if it was not.
    pub last_error: Option<String>,
    /// Whether the relay draws an overlay at all.
    pub overlay: bool,
    pub scores_url: Option<String>,
}

/// The push side of an accepted publish: the RTMP server writes FLV into it. Dropping it ends
/// the program's input.
pub struct IngestFeed {
    appsrc: gst_app::AppSrc,
    arrival: Arc<Arrival>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    /// When bytes last came (ms since the Unix epoch), for the relay to tell a stale
    /// publisher from a healthy one.
    last_data: Arc<AtomicU64>,
    /// Bytes every publisher of the relay has pushed.
    bytes_in: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("the relay no longer takes this stream (stopped, failed or not keeping up)")]
pub struct FeedClosed;

impl IngestFeed {
    /// Notes that the publisher's first frame (FLV timestamp in ms) arrived now.
    pub fn mark_first_frame(&self, timestamp_ms: u32) {
        self.arrival.mark(timestamp_ms);
    }

    /// Hands FLV bytes to the program; fails once the program is gone, or when it has fallen
    /// so far behind that its input queue is full (the publisher is then dropped).
    pub fn push(&self, data: bytes::Bytes) -> Result<(), FeedClosed> {
        if self.appsrc.current_level_bytes() >= self.appsrc.max_bytes() {
            return Err(FeedClosed);
        }
        self.last_data.store(unix_millis(), Ordering::Relaxed);
        self.bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.appsrc
            .push_buffer(gst::Buffer::from_slice(data))
            .map(|_| ())
            .map_err(|_| FeedClosed)
    }
}

impl Drop for IngestFeed {
    fn drop(&mut self) {
        let _ = self.appsrc.end_of_stream();
        let _ = self.events.send(Event::PublisherGone {
            generation: self.generation,
        });
    }
}

/// Milliseconds since the Unix epoch, now.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Command {
    Start(oneshot::Sender<Result<RelayStatus, RelayError>>),
    Stop(oneshot::Sender<RelayStatus>),
    Status(oneshot::Sender<RelayStatus>),
    Publish {
        peer: String,
        reply: oneshot::Sender<Result<IngestFeed, RelayError>>,
    },
    AddOutput {
        spec: OutputSpec,
        reply: oneshot::Sender<Result<RelayStatus, RelayError>>,
    },
    RemoveOutput {
        id: String,
        reply: oneshot::Sender<Result<RelayStatus, RelayError>>,
    },
    Score(oneshot::Sender<ScoreStatus>),
    SetScore {
        board: Box<Scoreboard>,
        reply: oneshot::Sender<ScoreStatus>,
    },
    /// Answered once a message posted on the program's bus has come back through it (at once
    /// when no program runs): the actor and the pipeline's bus both make progress. A decoded
    /// program must also have encoded frames since the last ping (the slate never stops):
    /// `Err` says why not.
    Ping(oneshot::Sender<Result<(), String>>),
    Counters(oneshot::Sender<RelayCounters>),
    Shutdown(oneshot::Sender<()>),
}

/// Messages from the relay's own pipelines and publisher.
enum Event {
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
}

/// A cheap, cloneable way to talk to one relay's actor.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    id: String,
    tx: mpsc::Sender<Command>,
}

impl RelayHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RelayError> {
        let gone = || RelayError::Gone {
            id: self.id.clone(),
        };
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn start(&self) -> Result<RelayStatus, RelayError> {
        self.ask(Command::Start).await?
    }

    pub async fn stop(&self) -> Result<RelayStatus, RelayError> {
        self.ask(Command::Stop).await
    }

    pub async fn status(&self) -> Result<RelayStatus, RelayError> {
        self.ask(Command::Status).await
    }

    /// Completes once the actor, and its program's bus if one runs, have made progress;
    /// `Ok(Err(why))` when its decoded program has encoded nothing since the last ping.
    pub async fn ping(&self) -> Result<Result<(), String>, RelayError> {
        self.ask(Command::Ping).await
    }

    /// What `/metrics` shows beyond the relay's status.
    pub async fn counters(&self) -> Result<RelayCounters, RelayError> {
        self.ask(Command::Counters).await
    }

    /// Asks the relay to take a publisher from `peer`.
    pub async fn publish(&self, peer: String) -> Result<IngestFeed, RelayError> {
        self.ask(|reply| Command::Publish { peer, reply }).await?
    }

    /// Adds an RTMP destination; it goes live at once when the relay is.
    pub async fn add_output(&self, spec: OutputSpec) -> Result<RelayStatus, RelayError> {
        self.ask(|reply| Command::AddOutput { spec, reply }).await?
    }

    /// Removes an RTMP destination; HLS and the other destinations carry on.
    pub async fn remove_output(&self, id: String) -> Result<RelayStatus, RelayError> {
        self.ask(|reply| Command::RemoveOutput { id, reply })
            .await?
    }

    /// The scoreboard, its source and age.
    pub async fn score(&self) -> Result<ScoreStatus, RelayError> {
        self.ask(Command::Score).await
    }

    /// Sets the scoreboard by hand (see [`ScoreKeeper`] for how it meets the API's values).
    pub async fn set_score(&self, board: Scoreboard) -> Result<ScoreStatus, RelayError> {
        self.ask(|reply| Command::SetScore {
            board: Box::new(board),
            reply,
        })
        .await
    }

    /// Stops everything and ends the actor.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

/// Spawns the actor for `spec` and returns its handle.
pub fn spawn(spec: RelaySpec, ctx: Arc<RelayContext>) -> RelayHandle {
    let (tx, rx) = mpsc::channel(DEFAULT_COMMAND_QUEUE);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let handle = RelayHandle {
        id: spec.id.clone(),
        tx,
    };
    let outputs = spec
        .outputs
        .iter()
        .map(|o| (o.id.clone(), Output::new(o.clone())))
        .collect();
    let overlay = spec
        .overlay
        .as_ref()
        .map(|_| Arc::new(OverlaySlot::default()));
    let actor = Actor {
        overlay,
        scores: ScoreKeeper::default(),
        logos: LogoSet::default(),
        poller: None,
        drawn: None,
        render_seq: 0,
        spec,
        ctx,
        want_running: false,
        started_at: None,
        program: None,
        publisher: None,
        input: None,
        on_air: None,
        input_retry: None,
        retry: None,
        draining: None,
        last_error: None,
        outputs,
        generation: 0,
        events_tx,
        events_rx,
        observed: Observed::default(),
        pings: Vec::new(),
        ping_frames: 0,
        counters: Counters {
            bytes_in: Arc::default(),
            state_time: BTreeMap::new(),
            state_since: Instant::now(),
        },
    };
    tokio::spawn(actor.run(rx));
    handle
}

/// A running program pipeline.
struct RunningProgram {
    program: Program,
    generation: u64,
    bus_task: JoinHandle<()>,
    /// Written once the publisher's stream is known (passthrough relays).
    master_written: bool,
}

struct Retry {
    attempt: u32,
    next_at: Instant,
    reason: String,
}

impl Retry {
    /// The retry after `previous` (if any) failed for `reason`.
    fn after(previous: Option<&Retry>, reason: String) -> Self {
        let attempt = previous.map_or(0, |r| r.attempt) + 1;
        Retry {
            attempt,
            next_at: Instant::now() + state::backoff(attempt, state::jitter()),
            reason,
        }
    }
}

/// The input attached to a decoded program: a publisher's or a pulled stream's branch.
struct Attached {
    branch: IngestBranch,
    generation: u64,
    /// When the publisher last sent bytes (ms since the Unix epoch); pulled streams: unused.
    last_data: Arc<AtomicU64>,
}

/// A destination: its spec, its state, and its push pipeline when it has one.
struct Output {
    spec: OutputSpec,
    state: OutputState,
    /// Consecutive failures; reset after a stable minute live.
    failures: u32,
    last_error: Option<String>,
    bytes_sent: u64,
    running: Option<RunningOutput>,
}

struct RunningOutput {
    pipeline: OutputPipeline,
    generation: u64,
    bus_task: JoinHandle<()>,
    /// The byte counter when it last rose, and when.
    progress: (u64, Instant),
}

impl Output {
    fn next_state(&self, event: OutputEvent, now: Instant) -> OutputState {
        self.state.next(
            event,
            self.failures,
            self.spec.max_retries,
            now,
            state::jitter(),
        )
    }

    fn new(spec: OutputSpec) -> Self {
        Self {
            spec,
            state: OutputState::Stopped,
            failures: 0,
            last_error: None,
            bytes_sent: 0,
            running: None,
        }
    }
}

struct Actor {
    /// The overlay's composition slot, when the relay has an overlay.
    overlay: Option<Arc<OverlaySlot>>,
    scores: ScoreKeeper,
    logos: LogoSet,
    poller: Option<(JoinHandle<()>, mpsc::UnboundedReceiver<PollUpdate>)>,
    /// What the overlay last showed: the scoreboard and whether it was stale.
    drawn: Option<(Option<Scoreboard>, bool)>,
    render_seq: u64,
    spec: RelaySpec,
    ctx: Arc<RelayContext>,
    want_running: bool,
    started_at: Option<SystemTime>,
    program: Option<RunningProgram>,
    publisher: Option<PublisherStatus>,
    /// The program's input, when one is attached (decoded programs).
    input: Option<Attached>,
    /// What the program shows, from the switch's own reports.
    on_air: Option<(OnAir, SystemTime)>,
    /// The next attempt to pull the stream again (pull relays).
    input_retry: Option<Retry>,
    retry: Option<Retry>,
    /// The program whose publisher left, and when it must have drained by.
    draining: Option<(u64, Instant)>,
    last_error: Option<String>,
    outputs: BTreeMap<String, Output>,
    generation: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// What operators last saw of the relay, for the live events.
    observed: Observed,
    /// Pings waiting for their message to come back through the program's bus.
    pings: Vec<oneshot::Sender<Result<(), String>>>,
    /// The program's encoded frames at the last ping.
    ping_frames: u64,
    counters: Counters,
}

/// What the actor counts for `/metrics`.
struct Counters {
    bytes_in: Arc<AtomicU64>,
    /// Time in each state before the current one, and when the current one began.
    state_time: BTreeMap<&'static str, Duration>,
    state_since: Instant,
}

/// The parts of a relay's state that operators follow live: each change is an event.
#[derive(Debug, Default, Clone, PartialEq)]
struct Observed {
    state: &'static str,
    publisher: Option<String>,
    on_air: Option<&'static str>,
    /// Each destination's state and last error.
    outputs: BTreeMap<String, (&'static str, Option<String>)>,
    /// The scoreboard on screen and its source.
    score: Option<(Scoreboard, ScoreSource)>,
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(DEFAULT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.stop_poller();
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
                Some(update) = next_poll(&mut self.poller) => self.on_poll(update),
                _ = tick.tick() => self.on_tick(),
            }
            self.publish_changes();
        }
        info!(relay = %self.spec.id, "relay actor ended");
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(reply) => {
                let result = self.start();
                let _ = reply.send(result.map(|_| self.status()));
            }
            Command::Stop(reply) => {
                if self.want_running {
                    info!(relay = %self.spec.id, "stop requested");
                }
                self.want_running = false;
                self.started_at = None;
                self.retry = None;
                self.stop_poller();
                self.stop_program("stopped by operator").await;
                let _ = reply.send(self.status());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Publish { peer, reply } => {
                let _ = reply.send(self.accept_publisher(peer));
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
                let _ = reply.send(self.score_status());
            }
            Command::SetScore { board, reply } => {
                if self.scores.on_manual(*board, Instant::now()) {
                    info!(relay = %self.spec.id, "score set by hand");
                }
                self.redraw();
                let _ = reply.send(self.score_status());
            }
            Command::Ping(reply) => match &self.program {
                Some(running) => {
                    let frames = running.program.frames.load(Ordering::Relaxed);
                    let stuck = self.spec.transcode && frames > 0 && frames == self.ping_frames;
                    self.ping_frames = frames;
                    if stuck {
                        let _ = reply.send(Err(format!(
                            "its program encoded no frame since the last check ({frames} in all)"
                        )));
                        return;
                    }
                    if running
                        .program
                        .pipeline
                        .post_message(pl::bus::ping())
                        .is_ok()
                    {
                        self.pings.push(reply);
                    }
                }
                None => {
                    // Pings left over from a program that has gone are answered too.
                    for reply in self.pings.drain(..).chain([reply]) {
                        let _ = reply.send(Ok(()));
                    }
                }
            },
            Command::Counters(reply) => {
                let _ = reply.send(self.counters());
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn start(&mut self) -> Result<(), RelayError> {
        self.renditions()?;
        if self.want_running {
            return Ok(());
        }
        self.want_running = true;
        self.started_at = Some(SystemTime::now());
        self.last_error = None;
        info!(relay = %self.spec.id, "start requested");
        self.start_poller();
        self.run_program();
        Ok(())
    }

    /// Builds the program a relay runs before any publisher comes: a decoded relay's (on
    /// the slate, with a pulled stream attached at once), or a pulling passthrough relay's.
    /// A pushed passthrough relay waits for its publisher instead.
    fn run_program(&mut self) {
        let pull = self.spec.ingest.url.clone().map(Source::Pull);
        let result = if self.spec.transcode {
            self.start_program(None).map(|_| self.attach_pull())
        } else if let Some(source) = pull {
            self.start_program(Some(source)).map(|_| ())
        } else {
            return;
        };
        if let Err(e) = result {
            self.fail_program(e.to_string());
        }
    }

    /// Attaches the pulled stream to a decoded program; on failure, retries with backoff
    /// while the slate stays on air.
    fn attach_pull(&mut self) {
        let Some(url) = self.spec.ingest.url.clone() else {
            return;
        };
        match self.attach(&Source::Pull(url)) {
            Ok(attached) => {
                self.input = Some(attached);
            }
            Err(e) => self.retry_pull(e.to_string()),
        }
    }

    /// Schedules the next attempt to pull the stream.
    fn retry_pull(&mut self, reason: String) {
        let retry = Retry::after(self.input_retry.as_ref(), reason);
        let delay = retry.next_at.saturating_duration_since(Instant::now());
        warn!(relay = %self.spec.id, attempt = retry.attempt, delay = ?delay, reason = %retry.reason, "pulled stream lost, retrying; the slate is on air");
        self.last_error = Some(retry.reason.clone());
        self.input_retry = Some(retry);
    }

    /// Attaches `source` to the running decoded program.
    fn attach(&mut self, source: &Source) -> Result<Attached, RelayError> {
        let id = self.spec.id.clone();
        let running = self
            .program
            .as_mut()
            .ok_or(RelayError::NotRunning { id: id.clone() })?;
        let branch = running
            .program
            .attach(source)
            .map_err(|source| RelayError::Pipeline { id, source })?;
        self.generation += 1;
        Ok(Attached {
            branch,
            generation: self.generation,
            last_data: Arc::new(AtomicU64::new(unix_millis())),
        })
    }

    /// Detaches the program's input, if any; the slate takes over, saying "we'll be right
    /// back".
    fn detach_input(&mut self, why: &str) {
        let Some(attached) = self.input.take() else {
            return;
        };
        info!(relay = %self.spec.id, branch = %attached.branch.name(), reason = why, "input detached");
        if let Some(running) = &self.program {
            running.program.detach(attached.branch);
            running.program.set_slate(
                &self
                    .ctx
                    .slates
                    .get(SlateMessage::BeRightBack, &self.ctx.program),
            );
        }
    }

    /// The renditions this relay encodes, tallest first, checked against the program format.
    fn renditions(&self) -> Result<Vec<Rendition>, RelayError> {
        ladder::renditions(&self.spec, &self.ctx.program).map_err(
            |spec::SpecError { field, message }| RelayError::Invalid {
                id: self.spec.id.clone(),
                field,
                message,
            },
        )
    }

    /// The encode destination `spec` needs, or `None` when the top rendition's serves: the
    /// same size and bitrate, and the preset's GOP. A height of its own without a bitrate
    /// takes the rendition preset's bitrate for that height, or else the top rendition's
    /// scaled by the pixel count; the preset's ceiling applies either way.
    fn output_encode(&self, spec: &OutputSpec, top: &Rendition) -> Option<Encode> {
        ladder::destination_encode(&self.spec, spec, top, &self.ctx.program)
    }

    fn accept_publisher(&mut self, peer: String) -> Result<IngestFeed, RelayError> {
        let id = self.spec.id.clone();
        if self.spec.ingest.stream_key.is_none() {
            return Err(RelayError::NotPush { id });
        }
        if !self.want_running {
            return Err(RelayError::NotRunning { id });
        }
        if let Some(p) = &self.publisher {
            let silent_ms = self.input.as_ref().map_or(0, |a| {
                unix_millis().saturating_sub(a.last_data.load(Ordering::Relaxed))
            });
            if !self.spec.transcode || silent_ms < DEFAULT_STALE_PUBLISHER.as_millis() as u64 {
                return Err(RelayError::AlreadyPublishing {
                    id,
                    peer: p.peer.clone(),
                });
            }
            info!(relay = %id, old = %p.peer, new = %peer, silent_ms, "stale publisher replaced by a new one");
            self.publisher = None;
            self.detach_input("replaced by a new publisher");
        }
        let (appsrc, arrival, generation, last_data) = if self.spec.transcode {
            if self.program.is_none() {
                return Err(RelayError::NotRunning { id });
            }
            let attached = self.attach(&Source::Push)?;
            let appsrc = attached
                .branch
                .appsrc
                .clone()
                .expect("push branches have an appsrc");
            let arrival = attached.branch.arrival.clone();
            let parts = (
                appsrc,
                arrival,
                attached.generation,
                attached.last_data.clone(),
            );
            self.input = Some(attached);
            parts
        } else {
            // A previous program may still be draining: it gives way to the new publisher.
            self.teardown_program();
            let (appsrc, arrival) = self.start_program(Some(Source::Push))?;
            let appsrc = appsrc.expect("push programs have an ingest appsrc");
            let last_data = Arc::new(AtomicU64::new(unix_millis()));
            (appsrc, arrival, self.generation, last_data)
        };
        info!(relay = %id, peer = %peer, "publisher connected");
        self.publisher = Some(PublisherStatus {
            peer,
            since: SystemTime::now(),
        });
        Ok(IngestFeed {
            appsrc,
            arrival,
            events: self.events_tx.clone(),
            generation,
            last_data,
            bytes_in: self.counters.bytes_in.clone(),
        })
    }

    /// Builds and plays the program and every destination's pipeline: a decoded one on the
    /// slate (`remux` is `None`), or one remuxing `remux`. Returns the ingest appsrc (remuxed
    /// push relays) and the mark the RTMP server sets when the first frame arrives.
    fn start_program(
        &mut self,
        remux: Option<Source>,
    ) -> Result<(Option<gst_app::AppSrc>, Arc<Arrival>), RelayError> {
        let epoch = gst::SystemClock::obtain().time();
        let renditions = self.renditions()?;
        let pipeline_error = |source| RelayError::Pipeline {
            id: self.spec.id.clone(),
            source,
        };
        self.generation += 1;
        let generation = self.generation;
        let hls_dir = self.ctx.hls_root.join(&self.spec.id);
        // Old segments belong to an earlier program; players must not mix them in. Their
        // count carries over, so the media sequence keeps rising past them.
        let continuity = continuity::next(&hls_dir);
        let _ = std::fs::remove_dir_all(&hls_dir);
        std::fs::create_dir_all(&hls_dir)
            .map_err(|source| PipelineError::Io {
                path: hls_dir.display().to_string(),
                source,
            })
            .and_then(|_| continuity::save(&hls_dir, &continuity))
            .map_err(pipeline_error)?;
        let input = match remux {
            Some(source) => Input::Remux(source),
            None => Input::Switched(
                self.ctx
                    .slates
                    .get(SlateMessage::StartingSoon, &self.ctx.program)
                    .as_ref()
                    .clone(),
            ),
        };
        let params = program::ProgramParams {
            relay_id: self.spec.id.clone(),
            input,
            program: self.ctx.program.clone(),
            hls: self.ctx.hls.clone(),
            renditions: renditions.clone(),
            hls_dir: hls_dir.clone(),
            sequence_base: continuity.sequence_base,
            overlay: self.overlay.clone(),
            epoch,
            arrival: Arc::default(),
        };
        let mut built = program::build(&params).map_err(pipeline_error)?;
        for out in self.outputs.values() {
            let encode = self.output_encode(&out.spec, &renditions[0]);
            built
                .add_destination(&out.spec.id, encode)
                .map_err(pipeline_error)?;
        }
        if self.spec.transcode {
            let variants: Vec<Variant> = renditions
                .iter()
                .map(|r| Variant::for_rendition(r, &self.ctx.program))
                .collect();
            program::write_atomic(
                &hls_dir.join("master.m3u8"),
                &ladder::master_playlist(&variants),
            )
            .map_err(pipeline_error)?;
        }
        let bus_task = forward_bus(&built.pipeline, self.events_tx.clone(), move |event| {
            Event::ProgramBus { generation, event }
        });
        if let Err(e) = pl::set_state(&built.pipeline, gst::State::Playing) {
            bus_task.abort();
            abandon(built.pipeline.clone(), format!("relay {}", self.spec.id));
            return Err(pipeline_error(e));
        }
        let names: Vec<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
        info!(relay = %self.spec.id, generation, renditions = ?names, transcode = self.spec.transcode, "program playing");
        let ingest = built.ingest.clone();
        self.on_air = None;
        self.program = Some(RunningProgram {
            program: built,
            generation,
            bus_task,
            master_written: self.spec.transcode,
        });
        let ids: Vec<String> = self.outputs.keys().cloned().collect();
        for id in ids {
            self.start_output(&id);
        }
        Ok((ingest, params.arrival))
    }

    /// Adds a destination; while the program runs it goes live at once, and nothing else is
    /// touched.
    fn add_output(&mut self, spec: OutputSpec) -> Result<(), RelayError> {
        let id = self.spec.id.clone();
        let invalid = |field: String, message: String| RelayError::Invalid {
            id: id.clone(),
            field,
            message,
        };
        spec.validate("").map_err(|e| invalid(e.field, e.message))?;
        if self.outputs.contains_key(&spec.id) {
            return Err(RelayError::OutputExists {
                id: id.clone(),
                output: spec.id.clone(),
            });
        }
        let mut next = self.spec.clone();
        next.outputs.push(spec.clone());
        next.validate()
            .and_then(|_| next.check_fits(self.ctx.program.width, self.ctx.program.height))
            .map_err(|e| invalid(e.field, e.message))?;
        let top = self.renditions()?.remove(0);
        let encode = self.output_encode(&spec, &top);
        if let Some(running) = &mut self.program {
            running
                .program
                .add_destination(&spec.id, encode)
                .map_err(|source| RelayError::Pipeline {
                    id: id.clone(),
                    source,
                })?;
        }
        info!(relay = %id, output = %spec.id, "destination added");
        self.spec = next;
        self.outputs
            .insert(spec.id.clone(), Output::new(spec.clone()));
        self.start_output(&spec.id);
        Ok(())
    }

    /// Removes a destination: its push pipeline ends, and its encoder if no one else uses it.
    fn remove_output(&mut self, output_id: &str) -> Result<(), RelayError> {
        if !self.outputs.contains_key(output_id) {
            return Err(RelayError::NoSuchOutput {
                id: self.spec.id.clone(),
                output: output_id.to_owned(),
            });
        }
        self.stop_output(output_id, OutputEvent::Stopped, "removed by operator");
        if let Some(running) = &mut self.program {
            running.program.remove_destination(output_id);
        }
        self.outputs.remove(output_id);
        self.spec.outputs.retain(|o| o.id != output_id);
        info!(relay = %self.spec.id, output = %output_id, "destination removed");
        Ok(())
    }

    /// Starts one destination's push pipeline, attached to the program's feed.
    fn start_output(&mut self, output_id: &str) {
        let Some(program) = &self.program else { return };
        let Some(feed) = program.program.feed(output_id) else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let relay_id = self.spec.id.clone();
        let events = self.events_tx.clone();
        let Some(out) = self.outputs.get_mut(output_id) else {
            return;
        };
        let built = output::build(&relay_id, output_id, &out.spec.url).and_then(|p| {
            let id = output_id.to_owned();
            let bus_task = forward_bus(&p.pipeline, events, move |event| Event::OutputBus {
                output: id.clone(),
                generation,
                event,
            });
            match pl::set_state(&p.pipeline, gst::State::Playing) {
                Ok(_) => Ok((p, bus_task)),
                Err(e) => {
                    bus_task.abort();
                    abandon(p.pipeline, format!("relay {relay_id} output {output_id}"));
                    Err(e)
                }
            }
        });
        let now = Instant::now();
        match built {
            Ok((pipeline, bus_task)) => {
                feed.attach(pipeline.feed.clone());
                out.bytes_sent = 0;
                out.running = Some(RunningOutput {
                    pipeline,
                    generation,
                    bus_task,
                    progress: (0, now),
                });
                let next = out.next_state(OutputEvent::Started, now);
                transition(&relay_id, out, next, "push pipeline started");
            }
            Err(e) => {
                let reason = e.to_string();
                out.last_error = Some(reason.clone());
                let next = out.next_state(OutputEvent::Failed(reason.clone()), now);
                out.failures += 1;
                transition(&relay_id, out, next, &reason);
            }
        }
    }

    fn stop_output(&mut self, output_id: &str, event: OutputEvent, why: &str) {
        let relay_id = self.spec.id.clone();
        if let Some(feed) = self
            .program
            .as_ref()
            .and_then(|p| p.program.feed(output_id))
        {
            feed.detach();
        }
        let Some(out) = self.outputs.get_mut(output_id) else {
            return;
        };
        if let Some(running) = out.running.take() {
            running.bus_task.abort();
            out.bytes_sent = running.pipeline.bytes_sent();
            abandon(
                running.pipeline.pipeline,
                format!("relay {relay_id} output {}", out.spec.id),
            );
        }
        if let OutputEvent::Failed(reason) = &event {
            out.last_error = Some(reason.clone());
        }
        let next = out.next_state(event.clone(), Instant::now());
        if matches!(event, OutputEvent::Failed(_)) {
            out.failures += 1;
        }
        transition(&relay_id, out, next, why);
    }

    /// Ends the program: EOS so the final playlist is written, bounded in time, then teardown.
    async fn stop_program(&mut self, why: &str) {
        let Some(generation) = self.program.as_ref().map(|p| p.generation) else {
            return;
        };
        info!(relay = %self.spec.id, reason = why, "stopping program");
        let ids: Vec<String> = self.outputs.keys().cloned().collect();
        for id in &ids {
            self.stop_output(id, OutputEvent::Stopped, why);
        }
        if let Some(program) = &self.program {
            program.program.end();
        }
        // Keep handling events while the program drains, until its EOS (or error) arrives.
        let deadline = Instant::now() + DEFAULT_DRAIN_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(Event::ProgramBus {
                    generation: g,
                    event: ProgramEvent::Eos | ProgramEvent::Error { .. },
                })) if g == generation => break,
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => break,
                Err(_) => {
                    warn!(relay = %self.spec.id, generation, "program did not drain in time");
                    break;
                }
            }
            if self.program.as_ref().map(|p| p.generation) != Some(generation) {
                return;
            }
        }
        self.teardown_program();
    }

    /// Drops the program at once (no drain); its destinations stop with it.
    fn teardown_program(&mut self) {
        let ids: Vec<String> = self.outputs.keys().cloned().collect();
        for id in &ids {
            if self
                .outputs
                .get(id)
                .is_some_and(|o| o.running.is_some() || o.state != OutputState::Stopped)
            {
                self.stop_output(id, OutputEvent::Stopped, "program stopped");
            }
        }
        self.draining = None;
        // Its branch goes with the pipeline; the publisher's feed fails and it is dropped.
        self.input = None;
        self.input_retry = None;
        self.on_air = None;
        if let Some(program) = self.program.take() {
            program.bus_task.abort();
            abandon(program.program.pipeline, format!("relay {}", self.spec.id));
        }
        if let Some(p) = self.publisher.take() {
            info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
        }
    }

    /// The program failed: tear it down and, unless it waits for a publisher (pushed
    /// passthrough), schedule a rebuild.
    fn fail_program(&mut self, reason: String) {
        self.teardown_program();
        self.last_error = Some(reason.clone());
        let rebuilds = self.spec.transcode || self.spec.ingest.url.is_some();
        if rebuilds && self.want_running {
            let retry = Retry::after(self.retry.as_ref(), reason);
            let delay = retry.next_at.saturating_duration_since(Instant::now());
            warn!(relay = %self.spec.id, attempt = retry.attempt, delay = ?delay, reason = %retry.reason, "program failed, retrying");
            self.retry = Some(retry);
        } else {
            warn!(relay = %self.spec.id, reason = %reason, "program failed; waiting for the publisher to return");
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ProgramBus { generation, event } => {
                if self.program.as_ref().map(|p| p.generation) != Some(generation) {
                    return;
                }
                match event {
                    ProgramEvent::Error {
                        error: err,
                        ingest_branch: branch,
                    } => {
                        let current = self.input.as_ref().map(|a| a.branch.name());
                        if branch.is_some() && branch == current {
                            self.on_input_error(err);
                        } else if branch.is_some() {
                            debug!(relay = %self.spec.id, error = %err, "error from a detached input, ignored");
                        } else {
                            error!(relay = %self.spec.id, element = %err.element, debug = ?err.debug, "{}", err.message);
                            self.fail_program(err.to_string());
                        }
                    }
                    ProgramEvent::Ping => {
                        for reply in self.pings.drain(..) {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    ProgramEvent::Latency => {
                        if let Some(running) = &self.program {
                            let _ = running.program.pipeline.recalculate_latency();
                        }
                    }
                    ProgramEvent::InputSwitched { slate } => self.on_switched(slate),
                    ProgramEvent::IngestEnded { branch } => self.on_ingest_ended(branch),
                    ProgramEvent::SegmentAdded(segment) => self.on_segment_added(&segment),
                    ProgramEvent::Eos => {
                        info!(relay = %self.spec.id, "program reached end of stream");
                        if self.spec.ingest.url.is_some() {
                            self.fail_program("the pulled stream ended".to_owned());
                        } else {
                            self.teardown_program();
                        }
                    }
                }
            }
            Event::OutputBus {
                output,
                generation,
                event,
            } => {
                let current = self
                    .outputs
                    .get(&output)
                    .and_then(|o| o.running.as_ref())
                    .map(|r| r.generation);
                if current != Some(generation) {
                    return;
                }
                if let ProgramEvent::Error { error: err, .. } = event {
                    let reason = err.to_string();
                    self.stop_output(&output, OutputEvent::Failed(reason.clone()), &reason);
                }
            }
            Event::PublisherGone { generation } => {
                if self
                    .input
                    .as_ref()
                    .is_some_and(|a| a.generation == generation)
                {
                    if let Some(p) = self.publisher.take() {
                        info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
                    }
                    self.detach_input("publisher disconnected");
                } else if !self.spec.transcode
                    && self.program.as_ref().map(|p| p.generation) == Some(generation)
                {
                    // The appsrc got EOS; the program drains and its EOS tears it down. The
                    // publisher slot frees at once so a reconnecting caster is not refused.
                    if let Some(p) = self.publisher.take() {
                        info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
                    }
                    self.draining = Some((generation, Instant::now() + DEFAULT_DRAIN_TIMEOUT));
                }
            }
        }
    }

    /// An error inside the input's branch (a publisher's garbage, a pulled server that went
    /// away) costs the input, never the program: the slate takes over.
    fn on_input_error(&mut self, err: BusError) {
        warn!(relay = %self.spec.id, element = %err.element, debug = ?err.debug, "input failed: {}", err.message);
        self.last_error = Some(err.to_string());
        self.detach_input("input failed");
        if let Some(p) = self.publisher.take() {
            info!(relay = %self.spec.id, peer = %p.peer, "publisher dropped: its stream failed");
        }
        if self.spec.ingest.url.is_some() {
            self.retry_pull(err.to_string());
        }
    }

    /// The switch changed what is on air.
    fn on_switched(&mut self, slate: bool) {
        let on_air = if slate { OnAir::Slate } else { OnAir::Input };
        if self.on_air.map(|(o, _)| o) == Some(on_air) {
            return;
        }
        let from = self.on_air.map_or("nothing", |(o, _)| o.name());
        info!(relay = %self.spec.id, from, to = on_air.name(), "on air");
        self.on_air = Some((on_air, SystemTime::now()));
    }

    /// An input's stream ended (a pulled stream's server ended it); the branch goes.
    fn on_ingest_ended(&mut self, branch: String) {
        if self.input.as_ref().map(|a| a.branch.name()) != Some(branch) {
            return;
        }
        self.detach_input("its stream ended");
        if self.publisher.is_none() && self.spec.ingest.url.is_some() {
            self.retry_pull("the pulled stream ended".to_owned());
        }
    }

    /// A passthrough relay learns its stream's size and bitrate from its first segment, and
    /// writes the master playlist then.
    fn on_segment_added(&mut self, segment: &Segment) {
        let Some(running) = &mut self.program else {
            return;
        };
        if running.master_written {
            return;
        }
        let hls_dir = self.ctx.hls_root.join(&self.spec.id);
        match program::source_variant(&running.program.pipeline, segment) {
            Some(variant) => {
                if let Err(e) = program::write_atomic(
                    &hls_dir.join("master.m3u8"),
                    &ladder::master_playlist(&[variant]),
                ) {
                    warn!(relay = %self.spec.id, error = %e, "cannot write the master playlist");
                    return;
                }
                running.master_written = true;
                info!(relay = %self.spec.id, "master playlist written from the publisher's stream");
            }
            None => debug!(relay = %self.spec.id, "publisher's stream not described yet"),
        }
    }

    fn start_poller(&mut self) {
        let Some(overlay) = &self.spec.overlay else {
            return;
        };
        let Some(url) = overlay.scores_url.clone() else {
            return;
        };
        if self.poller.is_some() {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let settings = PollerSettings {
            url,
            interval: overlay.poll_interval(),
            mapping: overlay.map.clone(),
        };
        info!(relay = %self.spec.id, url = %settings.url, interval = ?settings.interval, "polling the scores API");
        self.poller = Some((poller::spawn(settings, tx), rx));
    }

    fn stop_poller(&mut self) {
        if let Some((task, _)) = self.poller.take() {
            task.abort();
        }
    }

    fn on_poll(&mut self, update: PollUpdate) {
        let now = Instant::now();
        let previous_error = self.scores.last_error.clone();
        match update {
            PollUpdate::Board(update) => {
                let poller::BoardUpdate {
                    board,
                    logos,
                    logo_error,
                } = *update;
                // A logo that failed keeps the last good one for that side.
                self.logos.home =
                    logos
                        .home
                        .or(self.logos.home.take().filter(|_| board.home.logo.is_some()));
                self.logos.away =
                    logos
                        .away
                        .or(self.logos.away.take().filter(|_| board.away.logo.is_some()));
                if self.scores.on_api(board, now) {
                    info!(relay = %self.spec.id, "score changed at the scores API");
                }
                if let Some(e) = logo_error {
                    self.scores.on_api_error(e);
                }
            }
            PollUpdate::NotModified => self.scores.on_not_modified(now),
            PollUpdate::Failed(reason) => self.scores.on_api_error(reason),
        }
        if self.scores.last_error != previous_error {
            match &self.scores.last_error {
                Some(e) => {
                    warn!(relay = %self.spec.id, reason = %e, "scores API answer not used; the last good scoreboard stays")
                }
                None => info!(relay = %self.spec.id, "scores API answering again"),
            }
        }
        self.redraw();
    }

    /// Re-renders the overlay when what it should show changed. Rendering runs on a blocking
    /// task; the slot ignores a render that finishes after a newer one.
    fn redraw(&mut self) {
        let Some(slot) = self.overlay.clone() else {
            return;
        };
        let Some(spec) = &self.spec.overlay else {
            return;
        };
        let stale = self.is_stale(Instant::now());
        let board = self.scores.current().map(|(b, _)| b.clone());
        let wanted = (board.clone(), stale);
        if self.drawn.as_ref() == Some(&wanted) {
            return;
        }
        if self.drawn.as_ref().is_some_and(|(_, s)| *s != stale) {
            info!(relay = %self.spec.id, stale, "overlay staleness changed");
        }
        self.drawn = Some(wanted);
        self.render_seq += 1;
        let seq = self.render_seq;
        let theme = spec.theme();
        let logos = self.logos.clone();
        let (width, height) = (self.ctx.program.width, self.ctx.program.height);
        let relay = self.spec.id.clone();
        tokio::task::spawn_blocking(move || {
            let Some(board) = board else {
                slot.show(None, seq);
                return;
            };
            let bug = render::render(
                &board,
                Logos {
                    home: logos.home.as_deref(),
                    away: logos.away.as_deref(),
                },
                stale,
                &theme,
                width,
                height,
            );
            match overlay_el::composition(&bug) {
                Ok(composition) => {
                    slot.show(Some(composition), seq);
                    debug!(relay = %relay, seq, stale, "overlay updated");
                }
                Err(e) => error!(relay = %relay, error = %e, "cannot build the overlay"),
            }
        });
    }

    /// Whether the overlay should mark the scoreboard stale (relays without one never do).
    fn is_stale(&self, now: Instant) -> bool {
        self.spec
            .overlay
            .as_ref()
            .is_some_and(|o| self.scores.is_stale(now, o.stale_after()))
    }

    fn score_status(&self) -> ScoreStatus {
        let now = Instant::now();
        let current = self.scores.current();
        ScoreStatus {
            scoreboard: current.map(|(b, _)| b.clone()),
            source: current.map(|(_, s)| s),
            updated_at: self.scores.updated_at(),
            age: self.scores.age(now),
            stale: self.is_stale(now),
            last_error: self.scores.last_error.clone(),
            overlay: self.overlay.is_some(),
            scores_url: self
                .spec
                .overlay
                .as_ref()
                .and_then(|o| o.scores_url.clone()),
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // The stale marker appears (and goes) with time alone.
        self.redraw();
        // A program whose publisher left must drain in bounded time.
        if let Some((generation, deadline)) = self.draining {
            let current = self.program.as_ref().map(|p| p.generation);
            if current != Some(generation) {
                self.draining = None;
            } else if deadline <= now {
                warn!(relay = %self.spec.id, generation, "program did not drain in time");
                self.teardown_program();
            }
        }
        // Program rebuilds, then pulled inputs.
        if let Some(retry) = &self.retry {
            if self.program.is_none() && self.want_running && retry.next_at <= now {
                self.run_program();
            }
        }
        if let Some(retry) = &self.input_retry {
            if self.program.is_some() && self.input.is_none() && retry.next_at <= now {
                self.attach_pull();
            }
        }
        // A pulled input that stayed on air for a stable minute resets its backoff.
        if self.input.is_some()
            && self.on_air.is_some_and(|(o, since)| {
                o == OnAir::Input && since.elapsed().unwrap_or_default() >= DEFAULT_STABLE_AFTER
            })
        {
            self.input_retry = None;
        }
        if self
            .program
            .as_ref()
            .is_some_and(|p| p.program.frames.load(std::sync::atomic::Ordering::Relaxed) > 0)
        {
            self.retry = None;
        }
        // Destinations: byte counters, stalls and due retries.
        let relay_id = self.spec.id.clone();
        let mut due = Vec::new();
        let mut stalled = Vec::new();
        for (id, out) in self.outputs.iter_mut() {
            if let Some(running) = &mut out.running {
                let bytes = running.pipeline.bytes_sent();
                out.bytes_sent = bytes;
                if bytes > running.progress.0 {
                    running.progress = (bytes, now);
                }
                let idle = now.saturating_duration_since(running.progress.1);
                if bytes >= DEFAULT_LIVE_BYTES {
                    let next = out.next_state(OutputEvent::BytesFlowing, now);
                    transition(&relay_id, out, next, "bytes reaching the destination");
                }
                match out.state {
                    OutputState::Connecting if idle >= DEFAULT_CONNECT_TIMEOUT => {
                        stalled.push((
                            id.clone(),
                            format!("not connected after {} s", idle.as_secs()),
                        ));
                    }
                    OutputState::Live { .. } if idle >= DEFAULT_STALL_TIMEOUT => stalled.push((
                        id.clone(),
                        format!(
                            "no bytes accepted for {} s (the destination stopped reading)",
                            idle.as_secs()
                        ),
                    )),
                    OutputState::Live { since }
                        if out.failures > 0
                            && now.saturating_duration_since(since) >= DEFAULT_STABLE_AFTER =>
                    {
                        debug!(relay = %relay_id, output = %id, failures = out.failures, "stable for a minute; backoff reset");
                        out.failures = 0;
                    }
                    _ => {}
                }
            } else if let OutputState::Retrying { next_at, .. } = out.state {
                if next_at <= now && self.program.is_some() {
                    due.push(id.clone());
                }
            }
        }
        for (id, reason) in stalled {
            self.stop_output(&id, OutputEvent::Failed(reason.clone()), &reason);
        }
        for id in due {
            self.start_output(&id);
        }
    }

    /// Publishes what changed since the last look: state, publisher, what is on air, each
    /// destination's state, and the score.
    fn publish_changes(&mut self) {
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
                .scores
                .current()
                .map(|(board, source)| (board.clone(), source)),
        };
        if now == self.observed {
            return;
        }
        let was = std::mem::replace(&mut self.observed, now);
        let now = &self.observed;
        if now.state != was.state && !was.state.is_empty() {
            let spent = self.counters.state_since.elapsed();
            *self.counters.state_time.entry(was.state).or_default() += spent;
            self.counters.state_since = Instant::now();
        }
        let bus = &self.ctx.events;
        let id = &self.spec.id;
        if now.state != was.state {
            let from = (!was.state.is_empty()).then_some(was.state);
            bus.publish("relay_state", id, json!({ "from": from, "to": now.state }));
        }
        if now.publisher != was.publisher {
            let peer = now.publisher.as_ref().or(was.publisher.as_ref());
            bus.publish(
                "publisher",
                id,
                json!({ "connected": now.publisher.is_some(), "peer": peer }),
            );
        }
        if now.on_air != was.on_air {
            bus.publish("on_air", id, json!({ "showing": now.on_air }));
        }
        for (output, (state, error)) in &now.outputs {
            let before = was.outputs.get(output).map(|(s, _)| *s);
            if before != Some(*state) {
                bus.publish(
                    "output_state",
                    id,
                    json!({ "output": output, "from": before, "to": state, "error": error }),
                );
            }
        }
        for output in was.outputs.keys().filter(|o| !now.outputs.contains_key(*o)) {
            bus.publish("output_removed", id, json!({ "output": output }));
        }
        if now.score != was.score && !was.state.is_empty() {
            let (scoreboard, source) = now.score.clone().unzip();
            bus.publish(
                "score",
                id,
                json!({ "scoreboard": scoreboard, "source": source }),
            );
        }
    }

    /// Frames the running program has encoded (0 with none).
    fn frames(&self) -> u64 {
        self.program
            .as_ref()
            .map_or(0, |p| p.program.frames.load(Ordering::Relaxed))
    }

    fn phase(&self) -> RelayPhase {
        if !self.want_running {
            RelayPhase::Stopped
        } else if let (None, Some(r)) = (&self.program, &self.retry) {
            RelayPhase::Retrying {
                attempt: r.attempt,
                next_at: r.next_at,
                reason: r.reason.clone(),
            }
        } else if self.program.is_none() {
            RelayPhase::Waiting
        } else if self.frames() == 0 {
            RelayPhase::Starting
        } else {
            RelayPhase::Live
        }
    }

    fn counters(&self) -> RelayCounters {
        let mut state_time = self.counters.state_time.clone();
        *state_time.entry(self.phase().name()).or_default() += self.counters.state_since.elapsed();
        RelayCounters {
            bytes_in: self.counters.bytes_in.load(Ordering::Relaxed),
            input_frames: self
                .input
                .as_ref()
                .and_then(|a| a.branch.frames_dropped_and_duplicated()),
            av_offset: self.program.as_ref().and_then(|p| {
                let [video, audio] = &p.program.last_pts;
                let (v, a) = (video.load(Ordering::Relaxed), audio.load(Ordering::Relaxed));
                (v != u64::MAX && a != u64::MAX).then(|| (v as f64 - a as f64) / 1e9)
            }),
            state_seconds: state_time
                .into_iter()
                .map(|(state, time)| (state, time.as_secs_f64()))
                .collect(),
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
                    bytes_sent: o
                        .running
                        .as_ref()
                        .map_or(o.bytes_sent, |r| r.pipeline.bytes_sent()),
                })
                .collect(),
        }
    }
}

/// The next update from the scores poller, or never when there is none.
async fn next_poll(
    poller: &mut Option<(JoinHandle<()>, mpsc::UnboundedReceiver<PollUpdate>)>,
) -> Option<PollUpdate> {
    match poller {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Logs a destination's state change once, with its reason.
fn transition(relay: &str, out: &mut Output, next: OutputState, reason: &str) {
    if out.state == next {
        return;
    }
    let from = out.state.name();
    match &next {
        OutputState::Retrying {
            attempt, next_at, ..
        } => {
            let delay = next_at.saturating_duration_since(Instant::now());
            warn!(relay, output = %out.spec.id, from, to = "retrying", attempt, delay = ?delay, reason, "output state");
        }
        _ => info!(relay, output = %out.spec.id, from, to = next.name(), reason, "output state"),
    }
    out.state = next;
}

/// Forwards the bus messages of a pipeline that mean something to the actor (see
/// [`pl::bus::classify`]) into its event channel, until aborted.
fn forward_bus(
    pipeline: &gst::Pipeline,
    events: mpsc::UnboundedSender<Event>,
    wrap: impl Fn(ProgramEvent) -> Event + Send + 'static,
) -> JoinHandle<()> {
    let bus = pipeline.bus().expect("a pipeline always has a bus");
    let mut stream = bus.stream();
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let Some(event) = pl::bus::classify(&message) else {
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
