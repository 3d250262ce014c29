//! How the rest of the daemon talks to a relay: the [`RelayHandle`], the commands it sends
//! (each with its own reply channel), and the snapshots the actor answers with.
//!
//! Owns the types that cross the actor's boundary: statuses, errors, and the [`IngestFeed`]
//! the RTMP server writes a publisher's FLV into. It must not hold relay state or touch a
//! pipeline: only the actor (`relay::actor`) does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::actor::Event;
use super::graphics::{GraphicsError, LayerChange, LayerView};
use super::queue::{QueueError, Saved as QueueSaved};
use super::spec::{OutputSpec, RelaySpec};
use super::state::OutputState;
use crate::pipeline::input::{Arrival, Container};
use crate::pipeline::thumbnail::Thumbnail;
use crate::pipeline::PipelineError;
use crate::scores::{Scoreboard, Source as ScoreSource};

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
    #[error("relay {id} has no queue")]
    NoQueue { id: String },
    #[error("relay {id}: {source}")]
    Queue { id: String, source: QueueError },
    #[error("relay {id}: caster {name} is blocked for {seconds} s more (their turn ended or they were kicked)")]
    Blocked {
        id: String,
        name: String,
        seconds: u64,
    },
    #[error("relay {id}: caster {name} is already connected")]
    CasterConnected { id: String, name: String },
    #[error("relay {id} is a queue relay: publish with a caster's stream key")]
    QueueNeedsCaster { id: String },
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
    /// Program frames the encoder could not keep up with and dropped (an overloaded CPU).
    pub frames_dropped: u64,
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
    /// An SRT publisher's link, as its connection last read it (none over RTMP).
    pub srt: Option<Arc<SrtLink>>,
}

/// An SRT publisher's link statistics, updated by its connection about once a second.
#[derive(Debug, Default)]
pub struct SrtLink(std::sync::Mutex<SrtStats>);

/// What SRT says about a publisher's link: counts since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SrtStats {
    /// Round-trip time, smoothed, in milliseconds, when the SRT stack measures it
    /// (`srt-tokio` 0.4 does not on the receiving side: then absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The latency both ends agreed on, in milliseconds.
    pub latency_ms: u64,
    pub packets_received: u64,
    /// Packets that went missing on the way: recovered by retransmission, or dropped.
    pub packets_lost: u64,
    /// Packets that came again after being asked for.
    pub packets_retransmitted: u64,
    /// Packets that came too late to play and were dropped.
    pub packets_dropped: u64,
    pub bytes_received: u64,
}

impl SrtLink {
    pub fn set(&self, stats: SrtStats) {
        *self.0.lock().expect("srt stats lock poisoned") = stats;
    }

    pub fn get(&self) -> SrtStats {
        *self.0.lock().expect("srt stats lock poisoned")
    }
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
    pub(super) appsrc: gst_app::AppSrc,
    pub(super) arrival: Arc<Arrival>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) generation: u64,
    /// When bytes last came (ms since the Unix epoch), for the relay to tell a stale
    /// publisher from a healthy one.
    pub(super) last_data: Arc<AtomicU64>,
    /// Bytes every publisher of the relay has pushed.
    pub(super) bytes_in: Arc<AtomicU64>,
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

/// What an accepted publish gets: the feed into the program when it is on air, and, on a
/// queue relay, the caster's seat in the queue.
pub struct Admitted {
    pub feed: Option<IngestFeed>,
    pub seat: Option<Seat>,
}

/// A connected caster's place in a queue relay, held by their RTMP connection: the relay
/// calls it to the air when their turn comes and off when it ends. Dropping it (the
/// connection ended) tells the relay the caster left.
pub struct Seat {
    pub(super) name: String,
    pub(super) id: u64,
    pub(super) calls: mpsc::UnboundedReceiver<SeatCall>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// Where they wait in line (0: next), or `None` on air.
    pub(super) place: Option<usize>,
    /// Set when the connection ends because the daemon stops: the caster did not leave.
    pub(super) stopping: bool,
}

/// What the relay tells a caster's connection.
pub enum SeatCall {
    /// Their turn: push their held pictures and then their stream here.
    OnAir(IngestFeed),
    /// Their turn ended, or they were kicked: close the connection.
    Off,
}

impl Seat {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Their place in line when they joined (0: next), or `None` when they went on air.
    pub fn place(&self) -> Option<usize> {
        self.place
    }

    /// Gives the seat up because the daemon is stopping: the caster keeps their place (with
    /// everyone else's) for after the restart, and nobody is handed the air meanwhile.
    pub fn daemon_stopping(mut self) {
        self.stopping = true;
    }

    /// The relay's next call; `None` once the relay has gone.
    pub async fn next(&mut self) -> Option<SeatCall> {
        self.calls.recv().await
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let _ = self.events.send(Event::SeatGone {
            name: std::mem::take(&mut self.name),
            seat: self.id,
            stopping: self.stopping,
        });
    }
}

/// A relay's recordings: their directory (none when the daemon records nothing), and the
/// file the program is writing now (never to be deleted).
#[derive(Debug, Clone)]
pub struct RecordingsInfo {
    pub dir: Option<std::path::PathBuf>,
    pub open: Option<std::path::PathBuf>,
}

/// A queue as the API shows it: the saved form (wall-clock seconds) and who is connected.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    pub saved: QueueSaved,
    /// The casters connected now (on air or waiting).
    pub connected: Vec<String>,
}

/// An operator's change to a queue.
#[derive(Debug, Clone)]
pub enum QueueOp {
    /// End the turn on air.
    Skip,
    /// Disconnect this caster (and block them, if the block is on).
    Kick(String),
    /// The waiting casters, in their new order.
    Order(Vec<String>),
    /// The turn's new length; with `reset`, the turn on air starts again now.
    Timer { seconds: u64, reset: bool },
    /// Turns the block of kicked casters on or off (`None`: flips it).
    Block(Option<bool>),
    /// A caster was added: save the list.
    CasterAdded,
    /// A caster was deleted: out of the queue, disconnected, and the list saved.
    CasterRemoved(String),
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the handle asks of the actor; each carries the channel its answer goes back on.
pub(super) enum Command {
    Start(oneshot::Sender<Result<RelayStatus, RelayError>>),
    Stop(oneshot::Sender<RelayStatus>),
    Status(oneshot::Sender<RelayStatus>),
    Publish {
        peer: String,
        /// The caster publishing, on a queue relay.
        caster: Option<String>,
        /// What the publisher's bytes are.
        container: Container,
        /// An SRT publisher's link statistics.
        srt: Option<Arc<SrtLink>>,
        reply: oneshot::Sender<Result<Admitted, RelayError>>,
    },
    Queue(oneshot::Sender<Result<QueueStatus, RelayError>>),
    Thumbnail(oneshot::Sender<Option<Thumbnail>>),
    Recordings(oneshot::Sender<RecordingsInfo>),
    QueueOp {
        op: QueueOp,
        reply: oneshot::Sender<Result<QueueStatus, RelayError>>,
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
    Graphics(oneshot::Sender<Vec<LayerView>>),
    ChangeLayer {
        id: String,
        change: LayerChange,
        reply: oneshot::Sender<Result<LayerView, GraphicsError>>,
    },
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

/// A cheap, cloneable way to talk to one relay's actor.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    pub(super) id: String,
    pub(super) tx: mpsc::Sender<Command>,
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

    /// Asks the relay to take a publisher from `peer` (on a queue relay, caster `caster`)
    /// sending `container` (an SRT publisher also hands over its link's statistics).
    pub async fn publish(
        &self,
        peer: String,
        caster: Option<String>,
        container: Container,
        srt: Option<Arc<SrtLink>>,
    ) -> Result<Admitted, RelayError> {
        self.ask(|reply| Command::Publish {
            peer,
            caster,
            container,
            srt,
            reply,
        })
        .await?
    }

    /// The decoded program's latest thumbnail (none before its first, and never for a
    /// passthrough relay).
    pub async fn thumbnail(&self) -> Result<Option<Thumbnail>, RelayError> {
        self.ask(Command::Thumbnail).await
    }

    /// Where the relay's recordings are, and the file being written now.
    pub async fn recordings(&self) -> Result<RecordingsInfo, RelayError> {
        self.ask(Command::Recordings).await
    }

    /// The queue of a queue relay.
    pub async fn queue(&self) -> Result<QueueStatus, RelayError> {
        self.ask(Command::Queue).await?
    }

    /// Changes the queue of a queue relay.
    pub async fn queue_op(&self, op: QueueOp) -> Result<QueueStatus, RelayError> {
        self.ask(|reply| Command::QueueOp { op, reply }).await?
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

    /// The graphics layers, as they are now.
    pub async fn graphics(&self) -> Result<Vec<LayerView>, RelayError> {
        self.ask(Command::Graphics).await
    }

    /// Shows, hides or changes the data of graphics layer `id`.
    pub async fn change_layer(
        &self,
        id: String,
        change: LayerChange,
    ) -> Result<Result<LayerView, GraphicsError>, RelayError> {
        self.ask(|reply| Command::ChangeLayer { id, change, reply })
            .await
    }

    /// Stops everything and ends the actor.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}
