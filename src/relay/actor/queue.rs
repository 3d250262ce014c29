//! The actor's side of a queue relay: the connected casters' seats, carrying out the queue's
//! [`Change`]s on the program (the hand-over from one caster to the next without the slate),
//! saving the casters and the queue in the data dir, and the queue's events.
//!
//! Owns [`QueueRelay`]. The rules (who goes next, when a turn ends, who is blocked) are
//! [`Queue`]'s; the switch's part of a hand-over is [`Program::hold_for_handover`] and the
//! outgoing branch's priority. It must not decide turns itself.
//!
//! [`Program::hold_for_handover`]: crate::pipeline::program::Program::hold_for_handover

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::input::Attached;
use super::Actor;
use crate::pipeline::input::{Container, Source};
use crate::pipeline::switch::{HANDOVER_TIMEOUT, OUTGOING_PRIORITY};
use crate::relay::casters::{Caster, Casters};
use crate::relay::handle::{
    Admitted, IngestFeed, PublisherStatus, QueueOp, QueueStatus, RelayError, Seat, SeatCall,
    SrtLink,
};
use crate::relay::queue::{Change, Clocks, Joined, Queue, Saved};

/// The queue file's format version.
const FORMAT_VERSION: u32 = 1;

/// A queue relay's live part.
pub(super) struct QueueRelay {
    pub(super) queue: Queue,
    pub(super) casters: Arc<Casters>,
    /// The casters connected now, by name.
    seats: BTreeMap<String, SeatLink>,
    next_seat: u64,
    /// `<queues_dir>/<id>.json`.
    file: Option<PathBuf>,
    /// The branch of the caster whose turn just ended, kept on the switch (frozen on their
    /// last frame) until the next caster's first frame, or for [`HANDOVER_TIMEOUT`] at most;
    /// and when the hand-over began.
    outgoing: Option<(Attached, Instant)>,
}

/// The actor's end of a [`Seat`].
struct SeatLink {
    id: u64,
    peer: String,
    calls: mpsc::UnboundedSender<SeatCall>,
    /// What the caster sends: FLV over RTMP, MPEG-TS over SRT (with its link's statistics).
    container: Container,
    srt: Option<Arc<SrtLink>>,
}

/// `<queues_dir>/<id>.json`.
#[derive(Serialize, Deserialize)]
struct QueueFile {
    version: u32,
    casters: Vec<Caster>,
    queue: Saved,
}

impl QueueRelay {
    /// The queue of relay `id`, loaded from `dir` when it was saved there: the casters, and
    /// the line with everyone away for the grace period.
    pub(super) fn load(
        id: &str,
        rules: crate::relay::queue::QueueRules,
        casters: Arc<Casters>,
        dir: Option<&Path>,
    ) -> Self {
        let file = dir.map(|d| d.join(format!("{id}.json")));
        let mut queue = Queue::new(rules);
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(text) => match serde_json::from_slice::<QueueFile>(&text) {
                    Ok(saved) if saved.version == FORMAT_VERSION => {
                        casters.set(saved.casters);
                        queue = Queue::restore(rules, &saved.queue, Clocks::read());
                        info!(relay = %id, casters = casters.list().len(), waiting = queue.waiting().len(), "queue restored");
                    }
                    Ok(saved) => {
                        warn!(relay = %id, path = %path.display(), version = saved.version, "queue file of an unknown version; starting with an empty queue")
                    }
                    Err(e) => {
                        warn!(relay = %id, path = %path.display(), error = %e, "queue file unreadable; starting with an empty queue")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(relay = %id, path = %path.display(), error = %e, "queue file unreadable; starting with an empty queue")
                }
            }
        }
        Self {
            queue,
            casters,
            seats: BTreeMap::new(),
            next_seat: 0,
            file,
            outgoing: None,
        }
    }

    fn status(&self) -> QueueStatus {
        QueueStatus {
            saved: self.queue.save(Clocks::read()),
            connected: self.seats.keys().cloned().collect(),
        }
    }

    /// Writes the casters and the queue, atomically, readable by the daemon's user only (the
    /// file holds stream keys).
    fn save(&self, relay: &str) {
        let Some(path) = &self.file else { return };
        let file = QueueFile {
            version: FORMAT_VERSION,
            casters: self.casters.list(),
            queue: self.queue.save(Clocks::read()),
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("a queue always serializes");
        text.push(b'\n');
        if let Err(e) = write_private(path, &text) {
            warn!(relay = %relay, path = %path.display(), error = %e, "cannot save the queue; it will not survive a restart");
        }
    }
}

/// Replaces `path` with `text` through a temporary file, mode 0600.
fn write_private(path: &Path, text: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Actor {
    /// Caster `name` publishes from `peer` on this queue relay: on air at once, or held in
    /// line with a seat.
    pub(super) fn join_queue(
        &mut self,
        name: String,
        peer: String,
        container: Container,
        srt: Option<Arc<SrtLink>>,
    ) -> Result<Admitted, RelayError> {
        let id = self.spec.id.clone();
        if !self.life.wanted() || self.program.is_none() {
            return Err(RelayError::NotRunning { id });
        }
        let Some(q) = &mut self.queue else {
            return Err(RelayError::NoQueue { id });
        };
        let now = Instant::now();
        let joined = q.queue.join(&name, now);
        let place = match joined {
            Joined::Blocked(until) => {
                return Err(RelayError::Blocked {
                    id,
                    name,
                    seconds: until.saturating_duration_since(now).as_secs().max(1),
                })
            }
            Joined::AlreadyIn => return Err(RelayError::CasterConnected { id, name }),
            Joined::OnAir => None,
            Joined::Waiting(place) => Some(place),
        };
        let (calls_tx, calls) = mpsc::unbounded_channel();
        q.next_seat += 1;
        let seat = Seat {
            name: name.clone(),
            id: q.next_seat,
            calls,
            events: self.events_tx.clone(),
            place,
            stopping: false,
        };
        q.seats.insert(
            name.clone(),
            SeatLink {
                id: q.next_seat,
                peer: peer.clone(),
                calls: calls_tx,
                container,
                srt,
            },
        );
        let feed = match place {
            None => {
                info!(relay = %id, caster = %name, "caster on air");
                match self.attach_caster(&name, peer) {
                    Ok(feed) => Some(feed),
                    Err(e) => {
                        // Out of the line again: their seat never reaches them.
                        if let Some(q) = &mut self.queue {
                            q.seats.remove(&name);
                            let changes = q.queue.forget(&name, now);
                            self.apply(changes);
                        }
                        return Err(e);
                    }
                }
            }
            Some(place) => {
                info!(relay = %id, caster = %name, place, "caster joined the queue");
                None
            }
        };
        self.queue_changed("joined", Some(&name));
        Ok(Admitted {
            feed,
            seat: Some(seat),
        })
    }

    /// Attaches a new input for caster `name`, moving the current one (if any) aside as the
    /// outgoing caster's, frozen until the new one's first frame.
    fn attach_caster(&mut self, name: &str, peer: String) -> Result<IngestFeed, RelayError> {
        if let Some(old) = self.input.take() {
            self.end_outgoing();
            if let Some(running) = &self.program {
                old.branch.set_priority(OUTGOING_PRIORITY);
                running.program.hold_for_handover(true);
            }
            if let Some(q) = &mut self.queue {
                q.outgoing = Some((old, Instant::now()));
            }
        }
        let (container, srt) = self
            .queue
            .as_ref()
            .and_then(|q| q.seats.get(name))
            .map_or((Container::Flv, None), |s| (s.container, s.srt.clone()));
        let attached = match self.attach(&Source::Push(container)) {
            Ok(attached) => attached,
            Err(e) => {
                self.end_outgoing();
                return Err(e);
            }
        };
        let feed = self.feed_of(&attached);
        self.input = Some(attached);
        self.publisher = Some(PublisherStatus {
            peer: format!("{name} ({peer})"),
            since: SystemTime::now(),
            srt,
        });
        Ok(feed)
    }

    /// The switch took the next caster's first frame: the hand-over is done. Its time, from
    /// the turn's end to the new caster's picture, is logged (one line per turn).
    pub(super) fn handover_done(&mut self) {
        let Some(began) = self
            .queue
            .as_ref()
            .and_then(|q| q.outgoing.as_ref())
            .map(|o| o.1)
        else {
            return;
        };
        let caster = self
            .queue
            .as_ref()
            .and_then(|q| q.queue.on_air())
            .map(|t| t.name.clone());
        info!(relay = %self.spec.id, caster = caster.as_deref().unwrap_or(""), took_ms = began.elapsed().as_millis() as u64, "hand-over done: the next caster's picture is on air");
        self.end_outgoing();
    }

    /// The outgoing caster's branch goes, and the switches are back to their usual timeout.
    pub(super) fn end_outgoing(&mut self) {
        let Some((old, _)) = self.queue.as_mut().and_then(|q| q.outgoing.take()) else {
            return;
        };
        if let Some(running) = &self.program {
            running.program.hold_for_handover(false);
            running.program.detach(old.branch);
        }
    }

    /// Carries out the queue's changes.
    pub(super) fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Disconnect(name) => {
                    let Some(q) = &mut self.queue else { return };
                    if let Some(seat) = q.seats.remove(&name) {
                        info!(relay = %self.spec.id, caster = %name, "caster disconnected: turn over or kicked");
                        let _ = seat.calls.send(SeatCall::Off);
                    }
                }
                Change::OnAir(name) => {
                    let Some(peer) = self
                        .queue
                        .as_ref()
                        .and_then(|q| q.seats.get(&name))
                        .map(|s| s.peer.clone())
                    else {
                        continue;
                    };
                    info!(relay = %self.spec.id, caster = %name, "caster on air");
                    match self.attach_caster(&name, peer) {
                        Ok(feed) => {
                            if let Some(seat) = self.queue.as_ref().and_then(|q| q.seats.get(&name))
                            {
                                // A seat gone meanwhile is told by its own event.
                                let _ = seat.calls.send(SeatCall::OnAir(feed));
                            }
                        }
                        Err(e) => {
                            warn!(relay = %self.spec.id, caster = %name, error = %e, "cannot put the caster on air");
                            self.last_error = Some(e.to_string());
                        }
                    }
                }
                Change::Slate => {
                    self.publisher = None;
                    self.end_outgoing();
                    self.detach_input("nobody is waiting in the queue");
                }
            }
        }
    }

    /// A caster's connection ended (their seat was dropped).
    pub(super) fn on_seat_gone(&mut self, name: &str, seat: u64) {
        let Some(q) = &mut self.queue else { return };
        if q.seats.get(name).is_none_or(|s| s.id != seat) {
            return;
        }
        q.seats.remove(name);
        let on_air = q.queue.on_air().is_some_and(|t| t.name == name);
        let changes = q.queue.left(name, Instant::now());
        info!(relay = %self.spec.id, caster = %name, on_air, "caster left");
        self.apply(changes);
        self.queue_changed("left", Some(name));
    }

    /// The caster on air's feed ended. Their seat's end follows and hands the air over; until
    /// then their branch stays, frozen on its last frame, when someone is waiting to take it.
    /// `true` when the queue took care of it.
    pub(super) fn queue_publisher_gone(&mut self, generation: u64) -> bool {
        let Some(q) = &self.queue else { return false };
        if let Some((old, _)) = &q.outgoing {
            if old.generation == generation {
                return true;
            }
        }
        let Some(turn) = q.queue.on_air() else {
            return false;
        };
        if self
            .input
            .as_ref()
            .is_none_or(|a| a.generation != generation)
        {
            return false;
        }
        let name = turn.name.clone();
        let seat = q.seats.get(&name).map(|s| s.id);
        match seat {
            Some(seat) => {
                self.on_seat_gone(&name, seat);
                true
            }
            None => false,
        }
    }

    /// The queue's timer: turns that run out, places kept past their grace, blocks that
    /// end, and an outgoing caster kept too long.
    pub(super) fn tick_queue(&mut self, now: Instant) {
        if self
            .queue
            .as_ref()
            .and_then(|q| q.outgoing.as_ref())
            .is_some_and(|(_, began)| *began + HANDOVER_TIMEOUT <= now)
        {
            warn!(relay = %self.spec.id, waited = ?HANDOVER_TIMEOUT, "the next caster sent no picture in time; the slate takes over until they do");
            self.end_outgoing();
        }
        let Some(q) = &mut self.queue else { return };
        if q.queue.next_due().is_none_or(|due| due > now) {
            return;
        }
        let before = q.queue.save(Clocks::read());
        let changes = q.queue.tick(now);
        let after = q.queue.save(Clocks::read());
        let turn_ended = !changes.is_empty();
        self.apply(changes);
        if turn_ended {
            self.queue_changed("turn_ended", None);
        } else if before.waiting != after.waiting || before.blocked != after.blocked {
            self.queue_changed("expired", None);
        }
    }

    /// When the queue next has something to do.
    pub(super) fn queue_due(&self) -> Option<Instant> {
        let q = self.queue.as_ref()?;
        let outgoing = q
            .outgoing
            .as_ref()
            .map(|(_, began)| *began + HANDOVER_TIMEOUT);
        q.queue.next_due().into_iter().chain(outgoing).min()
    }

    /// The queue, for the API.
    pub(super) fn queue_status(&self) -> Result<QueueStatus, RelayError> {
        self.queue
            .as_ref()
            .map(QueueRelay::status)
            .ok_or_else(|| RelayError::NoQueue {
                id: self.spec.id.clone(),
            })
    }

    /// An operator's change to the queue.
    pub(super) fn queue_op(&mut self, op: QueueOp) -> Result<QueueStatus, RelayError> {
        let id = self.spec.id.clone();
        let Some(q) = &mut self.queue else {
            return Err(RelayError::NoQueue { id });
        };
        let now = Instant::now();
        let queue_error = |source| RelayError::Queue {
            id: id.clone(),
            source,
        };
        let (reason, name, changes) = match op {
            QueueOp::Skip => ("skipped", None, q.queue.skip(now)),
            QueueOp::Kick(name) => {
                let changes = q.queue.kick(&name, now).map_err(queue_error)?;
                ("kicked", Some(name), changes)
            }
            QueueOp::Order(order) => {
                q.queue.reorder(&order).map_err(queue_error)?;
                ("reordered", None, Vec::new())
            }
            QueueOp::Timer { seconds, reset } => {
                let turn = Duration::from_secs(seconds);
                ("timer", None, q.queue.set_timer(turn, reset, now))
            }
            QueueOp::Block(on) => {
                let on = on.unwrap_or(!q.queue.rules().block_kicked);
                q.queue.set_block(on);
                ("block", None, Vec::new())
            }
            QueueOp::CasterAdded => ("caster_added", None, Vec::new()),
            QueueOp::CasterRemoved(name) => {
                let changes = q.queue.forget(&name, now);
                if changes.is_empty() {
                    // Waiting: their connection goes too.
                    if let Some(seat) = q.seats.remove(&name) {
                        let _ = seat.calls.send(SeatCall::Off);
                    }
                }
                ("caster_removed", Some(name), changes)
            }
        };
        info!(relay = %id, change = reason, caster = name.as_deref().unwrap_or(""), "queue changed by the operator");
        self.apply(changes);
        self.queue_changed(reason, name.as_deref());
        self.queue_status()
    }

    /// Redraws the overlay's queue line when its text changed (its time left, each second):
    /// "ON AIR alice · 12:34 left · NEXT bob". Relays without an overlay draw nothing.
    pub(super) fn refresh_queue_line(&mut self) {
        let Some(q) = &self.queue else { return };
        let now = Instant::now();
        let line = q.queue.on_air().map(|turn| {
            let left = turn.ends.saturating_duration_since(now).as_secs();
            let mut text = format!("ON AIR {} · {}:{:02} left", turn.name, left / 60, left % 60);
            let next = q.queue.waiting().iter().find(|w| w.away.is_none());
            if let Some(next) = next {
                text.push_str(" · NEXT ");
                text.push_str(&next.name);
            }
            text
        });
        self.scorebug.set_queue_line(line);
    }

    /// Saves the queue and publishes it as a `queue` event.
    pub(super) fn queue_changed(&mut self, reason: &str, name: Option<&str>) {
        self.refresh_queue_line();
        let Some(q) = &self.queue else { return };
        q.save(&self.spec.id);
        let saved = q.queue.save(Clocks::read());
        self.ctx.events.publish(
            "queue",
            &self.spec.id,
            json!({
                "reason": reason,
                "caster": name,
                "on_air": saved.on_air.as_ref().map(|t| &t.name),
                "waiting": saved.waiting.iter().map(|w| &w.name).collect::<Vec<_>>(),
                "block_kicked": saved.block_kicked,
            }),
        );
    }

    /// The program went away (stopped, failed): every caster's connection is closed and the
    /// line is kept, everyone away for the grace period.
    pub(super) fn queue_program_gone(&mut self) {
        let Some(q) = &mut self.queue else { return };
        if q.seats.is_empty() && q.outgoing.is_none() && q.queue.on_air().is_none() {
            // Already done (each seat of a stopping daemon says so).
            return;
        }
        q.outgoing = None;
        let clocks = Clocks::read();
        q.queue = Queue::restore(q.queue.rules(), &q.queue.save(clocks), clocks);
        for (_, seat) in std::mem::take(&mut q.seats) {
            let _ = seat.calls.send(SeatCall::Off);
        }
        self.queue_changed("stopped", None);
    }
}
