//! Relays: one actor task per relay, owning its pipelines.
//!
//! The actor ([`actor`]) is the only code that touches its `gst::Pipeline`s. Everyone else
//! holds a [`RelayHandle`] and sends it commands that carry their own reply channel
//! ([`handle`]). The actor keeps what was asked (the spec and whether the relay should run)
//! apart from what is (the program, the publisher, each destination's state), and computes
//! the status from the latter. Its rules are pure modules of their own:
//! - [`lifecycle`]: the program's life (stopped, waiting, running, draining, retrying);
//! - [`destinations`] and [`state`]: each destination's state, stalls, timeouts and backoff;
//! - [`scorebug`]: the scoreboard, logos, poller and when to draw the overlay;
//! - [`observe`]: the live events diffed from the actor's state, and the counters;
//! - [`queue`]: a queue relay's turns, kicks and blocks ([`casters`] holds its casters' keys).
//!
//! Beside the actor: [`spec`] (the relay's JSON shape, shared by the config file and the
//! API), [`registry`] (ids and stream keys to handles, and when to save) and [`store`] (the
//! state file the API's relays are saved to).

mod actor;
pub mod casters;
pub mod destinations;
pub mod graphics;
pub mod handle;
pub mod lifecycle;
pub mod observe;
pub mod queue;
pub mod recordings;
pub mod registry;
pub mod scorebug;
pub mod spec;
pub mod state;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::config::{HlsSettings, ProgramSettings, RecordSettings};
use crate::events::EventBus;
use crate::render::{self, SlateMessage};

pub use actor::spawn;
pub use handle::{
    Admitted, FeedClosed, IngestFeed, OnAir, OutputStatus, PublisherStatus, QueueOp, QueueStatus,
    RelayCounters, RelayError, RelayHandle, RelayPhase, RelayStatus, ScoreStatus, Seat, SeatCall,
    SrtLink, SrtStats,
};

/// The slate's background, drawn under its message at the program's size.
const SLATE_BACKGROUND: &[u8] = include_bytes!("../../assets/slate.png");

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
    /// `<data_dir>/queues`: each queue relay saves its casters and its queue in
    /// `<id>.json` there. `None`: kept in memory only.
    pub queues_dir: Option<PathBuf>,
    /// `<data_dir>/recordings`: each recording relay writes into `<id>/` there. `None`:
    /// nothing is recorded.
    pub recordings_root: Option<PathBuf>,
    /// The defaults of a relay's `record`.
    pub record: RecordSettings,
    /// `<data_dir>/graphics`: the pictures image layers name. `None`: image layers show
    /// nothing.
    pub graphics_dir: Option<PathBuf>,
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
