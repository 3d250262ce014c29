//! The caster queue of a queue relay (`"queue": {"turn", "block_kicked", "block_for"}`): who is
//! on air, who waits and in what order, how long a turn lasts, and whose key is blocked.
//!
//! Owns those rules only, as a pure state machine: every call takes `now`, nothing here reads
//! a clock, touches a connection or a pipeline. The actor calls it on each publish, each
//! disconnect, each API call and at [`Queue::next_due`], and carries out the [`Change`]s it
//! returns (hand the air to a held caster, disconnect one).
//!
//! - A caster who publishes joins the back of the queue; with nobody on air, they go on air.
//! - A turn ends at its time, on skip or on a kick: the caster on air is disconnected and,
//!   with `block_kicked`, blocked for `block_for`; the first connected caster waiting goes on
//!   air. A caster on air who leaves by themselves hands over the same way, unblocked.
//! - A waiting caster who disconnects keeps their place for `grace`, and is skipped over
//!   meanwhile; back within it, they wait where they were. After it, they are dropped.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A queue relay's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRules {
    /// How long a turn lasts.
    pub turn: Duration,
    /// Whether a caster whose turn ended or who was kicked is refused for `block_for`.
    pub block_kicked: bool,
    pub block_for: Duration,
    /// How long a waiting caster who disconnected keeps their place.
    pub grace: Duration,
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Put this held caster on air.
    OnAir(String),
    /// Disconnect this caster (their turn ended, or they were kicked).
    Disconnect(String),
    /// Nobody is on air any more: the slate.
    Slate,
}

/// What a publishing caster gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// On air now.
    OnAir,
    /// Held, at this place in the waiting list (0: next).
    Waiting(usize),
    /// Refused until then.
    Blocked(Instant),
    /// Already on air or connected and waiting: a second connection is refused.
    AlreadyIn,
}

/// Why a queue request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("no caster {0:?} in the queue")]
    NotQueued(String),
    #[error("the new order must name every waiting caster once: {0}")]
    BadOrder(String),
}

/// The caster on air.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub name: String,
    pub since: Instant,
    pub ends: Instant,
}

/// A caster in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub name: String,
    /// When they joined the line.
    pub since: Instant,
    /// Disconnected since then; their place is kept until `away + grace`.
    pub away: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Queue {
    rules: QueueRules,
    on_air: Option<Turn>,
    waiting: Vec<Waiting>,
    /// Blocked keys' casters, and until when.
    blocked: BTreeMap<String, Instant>,
}

impl Queue {
    pub fn new(rules: QueueRules) -> Self {
        Self {
            rules,
            on_air: None,
            waiting: Vec::new(),
            blocked: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> QueueRules {
        self.rules
    }

    pub fn on_air(&self) -> Option<&Turn> {
        self.on_air.as_ref()
    }

    pub fn waiting(&self) -> &[Waiting] {
        &self.waiting
    }

    /// Caster `name` publishes.
    pub fn join(&mut self, name: &str, now: Instant) -> Joined {
        self.expire(now);
        if let Some(&until) = self.blocked.get(name) {
            return Joined::Blocked(until);
        }
        if self.on_air.as_ref().is_some_and(|t| t.name == name) {
            return Joined::AlreadyIn;
        }
        if let Some(place) = self.waiting.iter().position(|w| w.name == name) {
            let held = &mut self.waiting[place];
            if held.away.take().is_none() {
                return Joined::AlreadyIn;
            }
            // Back within the grace period: their place is theirs again.
            return self.promote_if_idle(name, place, now);
        }
        self.waiting.push(Waiting {
            name: name.to_owned(),
            since: now,
            away: None,
        });
        let place = self.waiting.len() - 1;
        self.promote_if_idle(name, place, now)
    }

    /// With nobody on air, `name` (waiting at `place`) goes on air if no connected caster is
    /// before them.
    fn promote_if_idle(&mut self, name: &str, place: usize, now: Instant) -> Joined {
        if self.on_air.is_none() && self.first_connected() == Some(place) {
            self.waiting.remove(place);
            self.start_turn(name.to_owned(), now);
            return Joined::OnAir;
        }
        Joined::Waiting(place)
    }

    fn first_connected(&self) -> Option<usize> {
        self.waiting.iter().position(|w| w.away.is_none())
    }

    fn start_turn(&mut self, name: String, now: Instant) {
        self.on_air = Some(Turn {
            name,
            since: now,
            ends: now + self.rules.turn,
        });
    }

    /// Hands the air to the first connected caster waiting, or to the slate.
    fn hand_over(&mut self, now: Instant, changes: &mut Vec<Change>) {
        match self.first_connected() {
            Some(place) => {
                let next = self.waiting.remove(place);
                changes.push(Change::OnAir(next.name.clone()));
                self.start_turn(next.name, now);
            }
            None => changes.push(Change::Slate),
        }
    }

    /// Ends the turn on air: disconnects its caster, blocks them when the rules say, and
    /// hands over.
    fn end_turn(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(turn) = self.on_air.take() {
            if self.rules.block_kicked {
                self.blocked
                    .insert(turn.name.clone(), now + self.rules.block_for);
            }
            changes.push(Change::Disconnect(turn.name));
            self.hand_over(now, &mut changes);
        }
        changes
    }

    /// Caster `name`'s connection ended by itself.
    pub fn left(&mut self, name: &str, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.on_air.as_ref().is_some_and(|t| t.name == name) {
            self.on_air = None;
            self.hand_over(now, &mut changes);
        } else if let Some(held) = self.waiting.iter_mut().find(|w| w.name == name) {
            held.away.get_or_insert(now);
        }
        changes
    }

    /// The turn on air ends now (`POST .../queue/skip`).
    pub fn skip(&mut self, now: Instant) -> Vec<Change> {
        self.end_turn(now)
    }

    /// Caster `name` is kicked: disconnected and, with `block_kicked`, blocked; if on air,
    /// the next caster goes on air.
    pub fn kick(&mut self, name: &str, now: Instant) -> Result<Vec<Change>, QueueError> {
        if self.on_air.as_ref().is_some_and(|t| t.name == name) {
            return Ok(self.end_turn(now));
        }
        let place = self
            .waiting
            .iter()
            .position(|w| w.name == name)
            .ok_or_else(|| QueueError::NotQueued(name.to_owned()))?;
        let kicked = self.waiting.remove(place);
        if self.rules.block_kicked {
            self.blocked
                .insert(kicked.name.clone(), now + self.rules.block_for);
        }
        Ok(if kicked.away.is_none() {
            vec![Change::Disconnect(kicked.name)]
        } else {
            Vec::new()
        })
    }

    /// Puts the waiting casters in `order`, which must name each of them once.
    pub fn reorder(&mut self, order: &[String]) -> Result<(), QueueError> {
        let mut now: Vec<&str> = self.waiting.iter().map(|w| w.name.as_str()).collect();
        let mut asked: Vec<&str> = order.iter().map(String::as_str).collect();
        now.sort_unstable();
        asked.sort_unstable();
        if now != asked {
            return Err(QueueError::BadOrder(format!(
                "waiting: {}",
                self.waiting
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut by_name: BTreeMap<String, Waiting> = self
            .waiting
            .drain(..)
            .map(|w| (w.name.clone(), w))
            .collect();
        self.waiting = order
            .iter()
            .filter_map(|name| by_name.remove(name))
            .collect();
        Ok(())
    }

    /// Sets the turn's length to `turn`. With `reset`, the turn on air starts again now;
    /// without, it keeps its start and ends `turn` after it (extended or shortened).
    pub fn set_timer(&mut self, turn: Duration, reset: bool, now: Instant) -> Vec<Change> {
        self.rules.turn = turn;
        if let Some(t) = &mut self.on_air {
            if reset {
                t.since = now;
            }
            t.ends = t.since + turn;
        }
        self.tick(now)
    }

    /// Turns the block of kicked casters on or off; off lifts every block now in force.
    pub fn set_block(&mut self, on: bool) {
        self.rules.block_kicked = on;
        if !on {
            self.blocked.clear();
        }
    }

    /// What is due at `now`: a turn that has run out, and places kept past their grace.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        self.expire(now);
        if self.on_air.as_ref().is_some_and(|t| t.ends <= now) {
            return self.end_turn(now);
        }
        Vec::new()
    }

    fn expire(&mut self, now: Instant) {
        self.blocked.retain(|_, until| *until > now);
        let grace = self.rules.grace;
        self.waiting
            .retain(|w| w.away.is_none_or(|away| away + grace > now));
    }

    /// When [`Queue::tick`] next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        let grace = self.rules.grace;
        let turn = self.on_air.as_ref().map(|t| t.ends);
        let away = self
            .waiting
            .iter()
            .filter_map(|w| w.away)
            .map(|a| a + grace);
        let blocks = self.blocked.values().copied();
        turn.into_iter().chain(away).chain(blocks).min()
    }

    /// Until when `name` is blocked, if they are.
    pub fn blocked_until(&self, name: &str, now: Instant) -> Option<Instant> {
        self.blocked.get(name).copied().filter(|until| *until > now)
    }
}

/// The queue as it is saved in the data dir and shown by the API: wall-clock times (seconds
/// since the Unix epoch), which mean the same after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The turn's length now (the timer may have changed it), in seconds.
    pub turn: f64,
    pub block_kicked: bool,
    pub on_air: Option<SavedTurn>,
    pub waiting: Vec<SavedPlace>,
    #[serde(default)]
    pub blocked: Vec<SavedBlock>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTurn {
    pub name: String,
    pub since: f64,
    pub ends: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlace {
    pub name: String,
    pub since: f64,
    /// Disconnected and keeping their place since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedBlock {
    pub name: String,
    pub until: f64,
}

/// `now` and the wall clock's reading at the same moment: converts the queue's instants to
/// wall-clock seconds and back.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clocks {
    pub fn read() -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn unix(&self, at: Instant) -> f64 {
        let wall = unix(self.wall);
        if at >= self.now {
            wall + (at - self.now).as_secs_f64()
        } else {
            wall - (self.now - at).as_secs_f64()
        }
    }

    fn instant(&self, unix_seconds: f64) -> Instant {
        let offset = unix_seconds - unix(self.wall);
        let magnitude = Duration::try_from_secs_f64(offset.abs()).unwrap_or(Duration::ZERO);
        if offset >= 0.0 {
            self.now + magnitude
        } else {
            self.now.checked_sub(magnitude).unwrap_or(self.now)
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Queue {
    /// The queue as saved and shown.
    pub fn save(&self, clocks: Clocks) -> Saved {
        Saved {
            turn: self.rules.turn.as_secs_f64(),
            block_kicked: self.rules.block_kicked,
            on_air: self.on_air.as_ref().map(|t| SavedTurn {
                name: t.name.clone(),
                since: clocks.unix(t.since),
                ends: clocks.unix(t.ends),
            }),
            waiting: self
                .waiting
                .iter()
                .map(|w| SavedPlace {
                    name: w.name.clone(),
                    since: clocks.unix(w.since),
                    away: w.away.map(|a| clocks.unix(a)),
                })
                .collect(),
            blocked: self
                .blocked
                .iter()
                .filter(|(_, until)| **until > clocks.now)
                .map(|(name, until)| SavedBlock {
                    name: name.clone(),
                    until: clocks.unix(*until),
                })
                .collect(),
        }
    }

    /// The queue after a restart: every caster in `saved` is away (their connections went
    /// with the old process) and keeps their place for the grace period from now; the one who
    /// was on air waits first. The timer and the block toggle keep their live values; blocks
    /// keep their end.
    pub fn restore(rules: QueueRules, saved: &Saved, clocks: Clocks) -> Self {
        let mut rules = rules;
        if let Ok(turn) = Duration::try_from_secs_f64(saved.turn) {
            if turn >= Duration::from_secs(1) {
                rules.turn = turn;
            }
        }
        rules.block_kicked = saved.block_kicked;
        let on_air = saved.on_air.iter().map(|t| (&t.name, t.since));
        let waiting = saved.waiting.iter().map(|w| (&w.name, w.since));
        let mut queue = Self::new(rules);
        for (name, since) in on_air.chain(waiting) {
            if queue.waiting.iter().any(|w| &w.name == name) {
                continue;
            }
            queue.waiting.push(Waiting {
                name: name.clone(),
                since: clocks.instant(since),
                away: Some(clocks.now),
            });
        }
        for block in &saved.blocked {
            let until = clocks.instant(block.until);
            if until > clocks.now {
                queue.blocked.insert(block.name.clone(), until);
            }
        }
        queue
    }

    /// Forgets `name` altogether (their caster was deleted): out of the line, unblocked.
    /// Returns the changes when they were on air.
    pub fn forget(&mut self, name: &str, now: Instant) -> Vec<Change> {
        self.blocked.remove(name);
        self.waiting.retain(|w| w.name != name);
        let mut changes = Vec::new();
        if self.on_air.as_ref().is_some_and(|t| t.name == name) {
            self.on_air = None;
            changes.push(Change::Disconnect(name.to_owned()));
            self.hand_over(now, &mut changes);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURN: Duration = Duration::from_secs(20);

    fn queue(block_kicked: bool) -> (Queue, Instant) {
        let rules = QueueRules {
            turn: TURN,
            block_kicked,
            block_for: Duration::from_secs(60),
            grace: Duration::from_secs(30),
        };
        (Queue::new(rules), Instant::now())
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn names(q: &Queue) -> Vec<&str> {
        q.waiting().iter().map(|w| w.name.as_str()).collect()
    }

    #[test]
    fn casters_go_on_air_in_turn_and_the_turn_ends_at_its_time() {
        let (mut q, t0) = queue(false);
        assert_eq!(q.join("alice", t0), Joined::OnAir);
        assert_eq!(q.join("bob", t0 + s(1)), Joined::Waiting(0));
        assert_eq!(q.join("carol", t0 + s(2)), Joined::Waiting(1));
        assert_eq!(q.join("bob", t0 + s(3)), Joined::AlreadyIn);
        assert_eq!(q.next_due(), Some(t0 + TURN));
        assert!(q.tick(t0 + s(19)).is_empty());
        assert_eq!(
            q.tick(t0 + TURN),
            vec![
                Change::Disconnect("alice".into()),
                Change::OnAir("bob".into())
            ]
        );
        assert_eq!(q.on_air().map(|t| t.ends), Some(t0 + TURN + TURN));
        // Unblocked: alice may come back, at the back.
        assert_eq!(q.join("alice", t0 + s(21)), Joined::Waiting(1));
        assert_eq!(names(&q), ["carol", "alice"]);
    }

    #[test]
    fn the_one_on_air_leaving_hands_over_at_once_and_the_last_brings_the_slate() {
        let (mut q, t0) = queue(true);
        q.join("alice", t0);
        q.join("bob", t0);
        assert_eq!(
            q.left("alice", t0 + s(5)),
            vec![Change::OnAir("bob".into())]
        );
        // Leaving by themselves is no kick: no block.
        assert_eq!(q.join("alice", t0 + s(6)), Joined::Waiting(0));
        q.left("alice", t0 + s(7));
        assert_eq!(q.left("bob", t0 + s(8)), vec![Change::Slate]);
        assert_eq!(q.on_air(), None);
    }

    #[test]
    fn kicked_casters_are_blocked_until_the_block_ends_or_is_lifted() {
        let (mut q, t0) = queue(true);
        q.join("alice", t0);
        q.join("bob", t0);
        q.join("carol", t0);
        assert_eq!(
            q.kick("carol", t0 + s(1)),
            Ok(vec![Change::Disconnect("carol".into())])
        );
        assert_eq!(q.join("carol", t0 + s(2)), Joined::Blocked(t0 + s(61)));
        assert_eq!(q.blocked_until("carol", t0 + s(2)), Some(t0 + s(61)));
        assert_eq!(q.join("carol", t0 + s(61)), Joined::Waiting(1));
        // Kicking the one on air hands over.
        assert_eq!(
            q.kick("alice", t0 + s(62)),
            Ok(vec![
                Change::Disconnect("alice".into()),
                Change::OnAir("bob".into())
            ])
        );
        assert!(matches!(q.join("alice", t0 + s(63)), Joined::Blocked(_)));
        q.set_block(false);
        assert_eq!(q.join("alice", t0 + s(64)), Joined::Waiting(1));
        assert_eq!(
            q.kick("nobody", t0),
            Err(QueueError::NotQueued("nobody".into()))
        );
    }

    #[test]
    fn skip_ends_the_turn_and_the_end_of_a_turn_blocks_with_the_rule_on() {
        let (mut q, t0) = queue(true);
        q.join("alice", t0);
        assert_eq!(
            q.skip(t0 + s(3)),
            vec![Change::Disconnect("alice".into()), Change::Slate]
        );
        assert!(matches!(q.join("alice", t0 + s(4)), Joined::Blocked(_)));
    }

    #[test]
    fn reorder_takes_every_waiting_caster_once() {
        let (mut q, t0) = queue(false);
        for name in ["alice", "bob", "carol", "dave"] {
            q.join(name, t0);
        }
        let order = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        q.reorder(&order(&["dave", "bob", "carol"]))
            .expect("a permutation");
        assert_eq!(names(&q), ["dave", "bob", "carol"]);
        assert!(q.reorder(&order(&["dave", "bob"])).is_err());
        assert!(q.reorder(&order(&["dave", "bob", "bob"])).is_err());
        assert_eq!(names(&q), ["dave", "bob", "carol"]);
    }

    #[test]
    fn the_timer_extends_shortens_and_resets_the_turn() {
        let (mut q, t0) = queue(false);
        q.join("alice", t0);
        q.join("bob", t0);
        assert!(q.set_timer(s(40), false, t0 + s(10)).is_empty());
        assert_eq!(q.on_air().map(|t| t.ends), Some(t0 + s(40)));
        assert!(q.set_timer(s(30), true, t0 + s(10)).is_empty());
        assert_eq!(q.on_air().map(|t| t.ends), Some(t0 + s(40)));
        // Shortened below the time already on air: the turn ends at once.
        assert_eq!(
            q.set_timer(s(5), false, t0 + s(20)),
            vec![
                Change::Disconnect("alice".into()),
                Change::OnAir("bob".into())
            ]
        );
        assert_eq!(q.on_air().map(|t| t.ends), Some(t0 + s(25)));
    }

    #[test]
    fn a_waiting_caster_keeps_their_place_for_the_grace_period() {
        let (mut q, t0) = queue(false);
        q.join("alice", t0);
        q.join("bob", t0);
        q.join("carol", t0);
        assert!(q.left("bob", t0 + s(1)).is_empty());
        // Away, bob is passed over, and keeps first place.
        assert_eq!(
            q.skip(t0 + s(2)),
            vec![
                Change::Disconnect("alice".into()),
                Change::OnAir("carol".into())
            ]
        );
        assert_eq!(q.join("bob", t0 + s(20)), Joined::Waiting(0));
        q.left("bob", t0 + s(21));
        assert_eq!(q.next_due(), Some(t0 + s(2) + TURN));
        // Carol's turn made long; then bob's grace runs out, and his place with it.
        q.set_timer(s(600), false, t0 + s(21));
        assert_eq!(q.next_due(), Some(t0 + s(51)));
        assert!(q.tick(t0 + s(50)).is_empty());
        assert_eq!(names(&q), ["bob"]);
        assert!(q.tick(t0 + s(51)).is_empty());
        assert!(names(&q).is_empty(), "{:?}", names(&q));
    }

    #[test]
    fn a_saved_queue_comes_back_with_everyone_away_in_order() {
        let (mut q, t0) = queue(true);
        q.join("alice", t0);
        q.join("bob", t0 + Duration::from_secs(1));
        q.join("carol", t0 + Duration::from_secs(2));
        q.kick("carol", t0 + Duration::from_secs(3)).unwrap();
        q.join("dave", t0 + Duration::from_secs(4));
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clocks = Clocks {
            now: t0 + Duration::from_secs(5),
            wall,
        };
        let saved = q.save(clocks);
        assert_eq!(
            saved.on_air.as_ref().map(|t| t.name.as_str()),
            Some("alice")
        );
        assert_eq!(saved.on_air.as_ref().map(|t| t.ends), Some(1_800_000_015.0));
        let text = serde_json::to_string(&saved).unwrap();
        let saved: Saved = serde_json::from_str(&text).unwrap();

        // The restart: a new monotonic clock, ten seconds later on the wall.
        let t1 = Instant::now() + Duration::from_secs(1000);
        let after = Clocks {
            now: t1,
            wall: wall + Duration::from_secs(10),
        };
        let mut back = Queue::restore(q.rules(), &saved, after);
        assert!(back.on_air().is_none());
        let names: Vec<&str> = back.waiting().iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "dave"]);
        assert!(back.waiting().iter().all(|w| w.away == Some(t1)));
        // The block keeps its end: 60 s from the kick (3 s in), so 48 s after the restart
        // (15 s in on the wall).
        assert_eq!(
            back.blocked_until("carol", t1),
            Some(t1 + Duration::from_secs(48))
        );
        // Bob comes back first: alice is away, so bob goes on air; alice keeps first place.
        assert_eq!(back.join("bob", t1), Joined::OnAir);
        assert_eq!(back.join("alice", t1), Joined::Waiting(0));
        // Dave does not come back within the grace period: his place goes.
        back.set_timer(Duration::from_secs(60), false, t1);
        assert_eq!(back.tick(t1 + Duration::from_secs(31)), Vec::new());
        let names: Vec<&str> = back.waiting().iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["alice"]);
    }
}
