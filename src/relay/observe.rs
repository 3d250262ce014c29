//! What operators follow of a relay: the live events diffed from one look at the actor to
//! the next, and the counters `/metrics` shows.
//!
//! Owns the last look ([`Observed`]), the time spent in each state, and the bytes-in counter
//! the publishers' feeds add to. What is worth an event is decided here, by [`changes`], a
//! pure function; the actor builds an [`Observed`] after each thing it handles. It must not
//! read or change the actor's state itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::events::EventBus;
use crate::scores::{Scoreboard, Source as ScoreSource};

/// The parts of a relay's state that operators follow live: each change is an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    pub state: &'static str,
    pub publisher: Option<String>,
    pub on_air: Option<&'static str>,
    /// Each destination's state and last error.
    pub outputs: BTreeMap<String, (&'static str, Option<String>)>,
    /// The scoreboard on screen and its source.
    pub score: Option<(Scoreboard, ScoreSource)>,
}

/// The events that take an operator from `was` to `now`: `(kind, data)` in the order they
/// happened to be checked. The first look (`was.state` empty) reports the state but not the
/// score, which a new relay has not changed.
pub fn changes(was: &Observed, now: &Observed) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    if now.state != was.state {
        let from = (!was.state.is_empty()).then_some(was.state);
        events.push(("relay_state", json!({ "from": from, "to": now.state })));
    }
    if now.publisher != was.publisher {
        let peer = now.publisher.as_ref().or(was.publisher.as_ref());
        events.push((
            "publisher",
            json!({ "connected": now.publisher.is_some(), "peer": peer }),
        ));
    }
    if now.on_air != was.on_air {
        events.push(("on_air", json!({ "showing": now.on_air })));
    }
    for (output, (state, error)) in &now.outputs {
        let before = was.outputs.get(output).map(|(s, _)| *s);
        if before != Some(*state) {
            events.push((
                "output_state",
                json!({ "output": output, "from": before, "to": state, "error": error }),
            ));
        }
    }
    for output in was.outputs.keys().filter(|o| !now.outputs.contains_key(*o)) {
        events.push(("output_removed", json!({ "output": output })));
    }
    if now.score != was.score && !was.state.is_empty() {
        let (scoreboard, source) = now.score.clone().unzip();
        events.push((
            "score",
            json!({ "scoreboard": scoreboard, "source": source }),
        ));
    }
    events
}

/// One relay's observer: its last look and its counters.
#[derive(Debug)]
pub struct Observer {
    observed: Observed,
    /// Bytes its publishers have pushed, over the relay's life.
    bytes_in: Arc<AtomicU64>,
    /// Time in each state before the current one, and when the current one began.
    state_time: BTreeMap<&'static str, Duration>,
    state_since: Instant,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            observed: Observed::default(),
            bytes_in: Arc::default(),
            state_time: BTreeMap::new(),
            state_since: Instant::now(),
        }
    }
}

impl Observer {
    /// The counter a publisher's feed adds its bytes to.
    pub fn bytes_in(&self) -> &Arc<AtomicU64> {
        &self.bytes_in
    }

    pub fn bytes_in_total(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Publishes on `bus` what changed since the last look, and keeps the time per state.
    pub fn look(&mut self, now: Observed, bus: &EventBus, relay: &str) {
        if now == self.observed {
            return;
        }
        let was = std::mem::replace(&mut self.observed, now);
        if self.observed.state != was.state && !was.state.is_empty() {
            *self.state_time.entry(was.state).or_default() += self.state_since.elapsed();
            self.state_since = Instant::now();
        }
        for (kind, data) in changes(&was, &self.observed) {
            bus.publish(kind, relay, data);
        }
    }

    /// Seconds spent in each state since the relay was made, `current` included.
    pub fn state_seconds(&self, current: &'static str) -> Vec<(&'static str, f64)> {
        let mut state_time = self.state_time.clone();
        *state_time.entry(current).or_default() += self.state_since.elapsed();
        state_time
            .into_iter()
            .map(|(state, time)| (state, time.as_secs_f64()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[(&'static str, Value)]) -> Vec<&'static str> {
        events.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn the_first_look_reports_the_state_only() {
        let board: Scoreboard = serde_json::from_value(json!({
            "home": { "name": "A", "score": 0 },
            "away": { "name": "B", "score": 0 }
        }))
        .expect("a valid scoreboard");
        let now = Observed {
            state: "stopped",
            score: Some((board, ScoreSource::Manual)),
            ..Observed::default()
        };
        let events = changes(&Observed::default(), &now);
        assert_eq!(kinds(&events), ["relay_state"]);
        assert_eq!(events[0].1, json!({ "from": null, "to": "stopped" }));
    }

    #[test]
    fn nothing_changed_is_no_event() {
        let look = Observed {
            state: "live",
            publisher: Some("1.2.3.4:5".into()),
            ..Observed::default()
        };
        assert!(changes(&look, &look.clone()).is_empty());
    }

    #[test]
    fn a_publisher_leaving_names_the_peer_that_left() {
        let was = Observed {
            state: "live",
            publisher: Some("1.2.3.4:5".into()),
            on_air: Some("input"),
            ..Observed::default()
        };
        let now = Observed {
            publisher: None,
            on_air: Some("slate"),
            ..was.clone()
        };
        let events = changes(&was, &now);
        assert_eq!(kinds(&events), ["publisher", "on_air"]);
        assert_eq!(
            events[0].1,
            json!({ "connected": false, "peer": "1.2.3.4:5" })
        );
        assert_eq!(events[1].1, json!({ "showing": "slate" }));
    }

    #[test]
    fn destinations_report_each_state_change_and_their_removal() {
        let was = Observed {
            state: "live",
            outputs: BTreeMap::from([
                ("yt".into(), ("connecting", None)),
                ("tw".into(), ("live", None)),
            ]),
            ..Observed::default()
        };
        let now = Observed {
            outputs: BTreeMap::from([("yt".into(), ("retrying", Some("refused".into())))]),
            ..was.clone()
        };
        let events = changes(&was, &now);
        assert_eq!(kinds(&events), ["output_state", "output_removed"]);
        assert_eq!(
            events[0].1,
            json!({ "output": "yt", "from": "connecting", "to": "retrying", "error": "refused" })
        );
        assert_eq!(events[1].1, json!({ "output": "tw" }));
    }

    #[test]
    fn the_observer_publishes_changes_once_and_counts_time_per_state() {
        let bus = EventBus::default();
        let mut observer = Observer::default();
        let look = |state| Observed {
            state,
            ..Observed::default()
        };
        observer.look(look("starting"), &bus, "final");
        observer.look(look("starting"), &bus, "final");
        observer.look(look("live"), &bus, "final");
        let kinds: Vec<_> = bus
            .subscribe(Some(0))
            .expect("room")
            .missed
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["relay_state", "relay_state"]);
        let states: Vec<_> = observer
            .state_seconds("live")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(states, ["live", "starting"]);
    }
}
