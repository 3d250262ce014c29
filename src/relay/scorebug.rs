//! A relay's scorebug: the scoreboard it holds (from the scores API or set by hand), the
//! team logos, the scores poller, and when to draw the overlay again.
//!
//! Owns the [`ScoreKeeper`], the logos, the poller task and the render schedule; it draws
//! only when what the overlay should show changed (the scoreboard, or its staleness), on a
//! blocking task, and hands the finished composition to the pipeline's [`OverlaySlot`]. It
//! must not touch a pipeline: the slot is the only thing it shares with the program.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::graphics::{Draw, Graphics, GraphicsError, LayerChange, LayerView};
use super::handle::ScoreStatus;
use super::spec::OverlaySpec;
use crate::pipeline::overlay::{self as overlay_el, OverlaySlot};
use crate::render::{self, Bug, Logos};
use crate::scores::poller::{self, LogoSet, PollUpdate, PollerSettings};
use crate::scores::{ScoreKeeper, Scoreboard, Source as ScoreSource};
use crate::secrets;

/// The scoreboard side of one relay.
pub struct Scorebug {
    relay: String,
    /// The relay's overlay, when it draws one.
    spec: Option<OverlaySpec>,
    /// The overlay's composition slot, when the relay has an overlay.
    slot: Option<Arc<OverlaySlot>>,
    keeper: ScoreKeeper,
    logos: LogoSet,
    poller: Option<(JoinHandle<()>, mpsc::UnboundedReceiver<PollUpdate>)>,
    /// What the overlay last showed: the scoreboard, whether it was stale, the queue line,
    /// and each graphics layer's key.
    drawn: Option<Drawn>,
    /// The relay's graphics layers, if it has any.
    graphics: Option<Graphics>,
    /// Pictures rendered earlier, drawn again as long as what they show is the same.
    cache: Arc<Mutex<Cache>>,
    /// Why the last scores answer's bound values were not used, if any were not.
    bind_refused: Vec<String>,
    /// The poller of `graphics.data_url`, when it runs.
    data_poller: Option<(JoinHandle<()>, mpsc::UnboundedReceiver<poller::DataUpdate>)>,
    /// Why `graphics.data_url` gave nothing usable last time, if it did not.
    data_error: Option<String>,
    /// Pictures by URL being fetched, and where their fetches report.
    fetching: std::collections::HashSet<String>,
    pictures: (
        mpsc::UnboundedSender<Fetched>,
        mpsc::UnboundedReceiver<Fetched>,
    ),
    /// A queue relay's line: who is on air, their time left, who is next.
    queue_line: Option<String>,
    render_seq: u64,
    /// The program's frame size, which the scorebug is drawn for.
    size: (u32, u32),
}

/// What the overlay shows: the scoreboard and whether it is stale, the queue line, and each
/// visible graphics layer's key.
type Drawn = (Option<Scoreboard>, bool, Option<String>, Vec<String>);

/// What the scorebug shows: the scoreboard (none: no bug) and whether it is stale.
type BugKey = (Option<Scoreboard>, bool);

/// Rendered pictures kept for the next composition: the scorebug for its scoreboard and
/// staleness, each layer for its key.
#[derive(Default)]
struct Cache {
    bug: Option<(BugKey, Option<Rect>)>,
    line: Option<(String, Rect)>,
    layers: HashMap<String, (String, Rect)>,
}

/// A picture fetched by URL for an image layer, or why not.
type Fetched = (String, Result<image::RgbaImage, String>);

/// What one of the relay's pollers brought.
pub enum Update {
    Scores(PollUpdate),
    Data(poller::DataUpdate),
    /// A picture fetched by URL for an image layer, or why not.
    Picture(String, Result<image::RgbaImage, String>),
}

/// A rendered picture as the overlay element takes it.
type Rect = overlay_el::Rectangle;

impl Scorebug {
    /// `graphics`: the relay's layers, if any (a relay without an overlay may have them).
    pub fn new(
        relay: &str,
        spec: Option<OverlaySpec>,
        graphics: Option<Graphics>,
        size: (u32, u32),
    ) -> Self {
        let graphics = graphics.filter(|g| !g.is_empty());
        for why in graphics.iter().flat_map(Graphics::load_errors) {
            warn!(relay = %relay, reason = %why, "a graphics file did not load; the layer shows nothing (or the theme's font)");
        }
        let drawn_at_all = spec.is_some() || graphics.is_some();
        Scorebug {
            relay: relay.to_owned(),
            slot: drawn_at_all.then(|| Arc::new(OverlaySlot::default())),
            spec,
            keeper: ScoreKeeper::default(),
            logos: LogoSet::default(),
            poller: None,
            drawn: None,
            graphics,
            cache: Arc::default(),
            bind_refused: Vec::new(),
            data_poller: None,
            data_error: None,
            fetching: Default::default(),
            pictures: mpsc::unbounded_channel(),
            queue_line: None,
            render_seq: 0,
            size,
        }
    }

    /// Sets the queue's line (none: no line) and redraws if it changed.
    pub fn set_queue_line(&mut self, line: Option<String>) {
        if self.queue_line != line {
            self.queue_line = line;
            self.redraw();
        }
    }

    /// The slot the program's overlay element draws from (none without an overlay).
    pub fn slot(&self) -> Option<Arc<OverlaySlot>> {
        self.slot.clone()
    }

    /// The scoreboard on screen and where it came from.
    pub fn current(&self) -> Option<(&Scoreboard, ScoreSource)> {
        self.keeper.current()
    }

    /// Starts polling the scores API, if the relay has one and no poller runs.
    pub fn start_poller(&mut self) {
        self.start_data_poller();
        self.fetch_pictures();
        let Some(overlay) = &self.spec else {
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
            allow_private: overlay.allow_private,
            logo_size: render::logo_size(self.size.1),
            logo_base: overlay.logo_base.clone(),
            bindings: self
                .graphics
                .as_ref()
                .map(Graphics::pointers)
                .unwrap_or_default(),
        };
        // The URL's query and user info may carry credentials, and its path a compatible
        // relay's stream name: the log names the API by its origin only.
        info!(
            relay = %self.relay,
            api = %secrets::url_for_log(&settings.url),
            interval = ?settings.interval,
            allow_private = settings.allow_private,
            "polling the scores API"
        );
        self.poller = Some((poller::spawn(settings, tx), rx));
    }

    pub fn stop_poller(&mut self) {
        if let Some((task, _)) = self.poller.take() {
            task.abort();
        }
        if let Some((task, _)) = self.data_poller.take() {
            task.abort();
        }
    }

    /// Starts polling `graphics.data_url`, if the relay has one and no poller runs.
    fn start_data_poller(&mut self) {
        let source = self.graphics.as_ref().and_then(Graphics::data_source);
        let Some((url, interval, allow_private)) = source else {
            return;
        };
        if self.data_poller.is_some() {
            return;
        }
        info!(
            relay = %self.relay,
            url = %secrets::url_for_log(&url),
            interval = ?interval,
            "polling the graphics data URL"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        self.data_poller = Some((poller::spawn_data(url, interval, allow_private, tx), rx));
    }

    /// Fetches the pictures image layers name by URL that are neither fetched nor being
    /// fetched.
    fn fetch_pictures(&mut self) {
        let Some(graphics) = &self.graphics else {
            return;
        };
        let (urls, allow_private) = graphics.missing_pictures();
        for url in urls {
            if !self.fetching.insert(url.clone()) {
                continue;
            }
            let tx = self.pictures.0.clone();
            tokio::spawn(async move {
                let result = poller::fetch_image(
                    &url,
                    allow_private,
                    crate::relay::graphics::MAX_PICTURE_BYTES,
                )
                .await;
                let _ = tx.send((url, result));
            });
        }
    }

    /// The next answer of either poller (the scores API's, `graphics.data_url`'s), or never
    /// when neither runs.
    pub async fn next_update(&mut self) -> Option<Update> {
        let scores = async {
            match &mut self.poller {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let data = async {
            match &mut self.data_poller {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let pictures = self.pictures.1.recv();
        tokio::select! {
            Some(update) = scores => Some(Update::Scores(update)),
            Some(update) = data => Some(Update::Data(update)),
            Some((url, result)) = pictures => Some(Update::Picture(url, result)),
            else => None,
        }
    }

    /// Takes an answer of either poller.
    pub fn on_update(&mut self, update: Update) {
        match update {
            Update::Scores(update) => self.on_poll(update),
            Update::Data(update) => self.on_data(update),
            Update::Picture(url, result) => {
                self.fetching.remove(&url);
                let Some(graphics) = &mut self.graphics else {
                    return;
                };
                match result {
                    Ok(picture) => {
                        graphics.add_picture(&url, picture);
                        self.redraw();
                    }
                    // Tried again when the layer's pictures are set again.
                    Err(e) => {
                        warn!(relay = %self.relay, url = %secrets::url_for_log(&url), reason = %e, "a graphics picture could not be fetched; the layer goes without it")
                    }
                }
            }
        }
    }

    /// Sets the layers' fields bound to `graphics.data_url` from its answer, and redraws.
    pub fn on_data(&mut self, update: poller::DataUpdate) {
        let Some(graphics) = &mut self.graphics else {
            return;
        };
        let outcome = match update {
            Ok(json) => {
                let refused = graphics.bind_data(&json, Instant::now());
                (!refused.is_empty()).then(|| refused.join("; "))
            }
            Err(e) => Some(e),
        };
        // Said once when it starts failing (or fails otherwise), and once when it works again.
        if outcome != self.data_error {
            match &outcome {
                Some(e) => {
                    warn!(relay = %self.relay, reason = %e, "graphics data URL answer not used; the layers keep their last values")
                }
                None => info!(relay = %self.relay, "graphics data URL answering again"),
            }
            self.data_error = outcome;
        }
        self.redraw();
    }

    /// Takes what the poller brought, and redraws if it changed what the overlay shows.
    pub fn on_poll(&mut self, update: PollUpdate) {
        let now = Instant::now();
        let previous_error = self.keeper.last_error.clone();
        match update {
            PollUpdate::Board(update) => {
                let poller::BoardUpdate {
                    board,
                    logos,
                    logo_error,
                    bound,
                } = *update;
                if let Some(graphics) = &mut self.graphics {
                    let refused = graphics.bind(&bound, now);
                    // Said once for each new reason, not at every poll.
                    if refused != self.bind_refused {
                        for why in &refused {
                            warn!(relay = %self.relay, reason = %why, "a value from the scores API does not fit its graphics layer; the layer keeps its last one");
                        }
                        self.bind_refused = refused;
                    }
                }
                // A logo that failed keeps the last good one for that side.
                self.logos.home =
                    logos
                        .home
                        .or(self.logos.home.take().filter(|_| board.home.logo.is_some()));
                self.logos.away =
                    logos
                        .away
                        .or(self.logos.away.take().filter(|_| board.away.logo.is_some()));
                if self.keeper.on_api(board, now) {
                    info!(relay = %self.relay, "score changed at the scores API");
                }
                if let Some(e) = logo_error {
                    self.keeper.on_api_error(e);
                }
            }
            PollUpdate::NotModified => self.keeper.on_not_modified(now),
            PollUpdate::Failed(reason) => self.keeper.on_api_error(reason),
        }
        if self.keeper.last_error != previous_error {
            match &self.keeper.last_error {
                Some(e) => {
                    warn!(relay = %self.relay, reason = %e, "scores API answer not used; the last good scoreboard stays")
                }
                None => info!(relay = %self.relay, "scores API answering again"),
            }
        }
        self.redraw();
    }

    /// The operator set the scoreboard by hand (see [`ScoreKeeper`] for how it meets the
    /// API's values).
    pub fn set_by_hand(&mut self, board: Scoreboard) {
        if self.keeper.on_manual(board, Instant::now()) {
            info!(relay = %self.relay, "score set by hand");
        }
        self.redraw();
    }

    /// Re-renders the overlay when what it should show changed. Rendering runs on a blocking
    /// task, and only what changed is rendered again (a layer, the scorebug); the slot
    /// ignores a render that finishes after a newer one.
    pub fn redraw(&mut self) {
        let Some(slot) = self.slot.clone() else {
            return;
        };
        let now = Instant::now();
        let stale = self.is_stale(now);
        // The scorebug is drawn only by relays with an overlay.
        let board = self
            .spec
            .as_ref()
            .and_then(|_| self.keeper.current().map(|(b, _)| b.clone()));
        let line = self.queue_line.clone();
        let draws: Vec<Draw> = self
            .graphics
            .as_ref()
            .map(|g| g.draws(now, self.keeper.current().map(|(b, _)| b)))
            .unwrap_or_default();
        let keys: Vec<String> = draws.iter().map(|d| d.key.clone()).collect();
        let wanted = (board.clone(), stale, line.clone(), keys);
        if self.drawn.as_ref() == Some(&wanted) {
            return;
        }
        if self.drawn.as_ref().is_some_and(|(_, s, _, _)| *s != stale) {
            info!(relay = %self.relay, stale, "overlay staleness changed");
        }
        self.drawn = Some(wanted);
        self.render_seq += 1;
        let seq = self.render_seq;
        let theme = self.spec.as_ref().map(|s| s.theme()).unwrap_or_default();
        let style = self
            .graphics
            .as_ref()
            .map(Graphics::style)
            .unwrap_or_default();
        let logos = self.logos.clone();
        let (width, height) = self.size;
        let relay = self.relay.clone();
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            let rect = |bug: &Bug| match overlay_el::rectangle(bug) {
                Ok(rect) => Some(rect),
                Err(e) => {
                    error!(relay = %relay, error = %e, "cannot build the overlay");
                    None
                }
            };
            let bug_key = (board.clone(), stale);
            if cache.bug.as_ref().map(|(k, _)| k) != Some(&bug_key) {
                let bug = board.as_ref().and_then(|board| {
                    rect(&render::render(
                        board,
                        Logos {
                            home: logos.home.as_deref(),
                            away: logos.away.as_deref(),
                        },
                        stale,
                        &theme,
                        width,
                        height,
                    ))
                });
                cache.bug = Some((bug_key, bug));
            }
            match &line {
                Some(text) if cache.line.as_ref().map(|(t, _)| t) != Some(text) => {
                    cache.line = rect(&render::queue_line(text, &theme, width, height))
                        .map(|r| (text.clone(), r));
                }
                None => cache.line = None,
                _ => {}
            }
            let mut layers = HashMap::new();
            for d in &draws {
                let kept = match cache.layers.remove(&d.id) {
                    Some((key, rect)) if key == d.key => Some(rect),
                    _ => rect(&d.render(&style, width, height)),
                };
                if let Some(kept) = kept {
                    layers.insert(d.id.clone(), (d.key.clone(), kept));
                }
            }
            // Layers no longer drawn are forgotten.
            cache.layers = layers;
            let rects: Vec<Rect> = cache
                .bug
                .as_ref()
                .and_then(|(_, bug)| bug.clone())
                .into_iter()
                .chain(cache.line.as_ref().map(|(_, r)| r.clone()))
                .chain(
                    draws
                        .iter()
                        .filter_map(|d| cache.layers.get(&d.id).map(|(_, r)| r.clone())),
                )
                .collect();
            if rects.is_empty() {
                slot.show(None, seq);
                return;
            }
            match overlay_el::compose(&rects) {
                Ok(composition) => {
                    slot.show(Some(composition), seq);
                    debug!(relay = %relay, seq, stale, "overlay updated");
                }
                Err(e) => error!(relay = %relay, error = %e, "cannot build the overlay"),
            }
        });
    }

    /// When the graphics next change by themselves (a fade, a clock, a rotation).
    pub fn graphics_due(&self) -> Option<Instant> {
        self.graphics.as_ref()?.next_change(Instant::now())
    }

    /// The graphics layers as the API shows them (none without graphics).
    pub fn layers(&self) -> Vec<LayerView> {
        self.graphics
            .as_ref()
            .map(|g| g.views(Instant::now()))
            .unwrap_or_default()
    }

    /// Changes layer `id` and redraws.
    pub fn change_layer(
        &mut self,
        id: &str,
        change: LayerChange,
    ) -> Result<LayerView, GraphicsError> {
        let graphics = self
            .graphics
            .as_mut()
            .ok_or_else(|| GraphicsError::NoLayer(id.to_owned()))?;
        let view = graphics.change(id, change, Instant::now())?;
        self.fetch_pictures();
        self.redraw();
        Ok(view)
    }

    /// Whether the overlay should mark the scoreboard stale (relays without one never do).
    fn is_stale(&self, now: Instant) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|o| self.keeper.is_stale(now, o.stale_after()))
    }

    /// The scoreboard, its source and age, for the API.
    pub fn status(&self) -> ScoreStatus {
        let now = Instant::now();
        let current = self.keeper.current();
        ScoreStatus {
            scoreboard: current.map(|(b, _)| b.clone()),
            source: current.map(|(_, s)| s),
            updated_at: self.keeper.updated_at(),
            age: self.keeper.age(now),
            stale: self.is_stale(now),
            last_error: self.keeper.last_error.clone(),
            overlay: self.slot.is_some(),
            scores_url: self.spec.as_ref().and_then(|o| o.scores_url.clone()),
        }
    }
}
