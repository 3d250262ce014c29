//! Live events for operators and tournament sites: relay and destination state changes,
//! publisher connects and disconnects, what is on air, and score changes. Each has a rising
//! id, and the latest are kept so a client that reconnects with `Last-Event-ID` misses none.
//!
//! Owns the ids, the history, the fan-out and how many may subscribe at once. Relay actors publish; the API's
//! `/api/v1/events` subscribes. It must not decide what is worth an event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

/// How many events are kept for clients that reconnect.
pub const DEFAULT_HISTORY: usize = 1024;
/// Subscribers at once (`server.max_event_streams`).
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    /// `relay_state`, `publisher`, `on_air`, `output_state` or `score`.
    pub kind: &'static str,
    pub relay: String,
    /// Unix time in seconds.
    pub at: f64,
    /// The event's own fields.
    pub data: Value,
}

struct History {
    next_id: u64,
    events: VecDeque<Event>,
}

pub struct EventBus {
    history: Mutex<History>,
    live: broadcast::Sender<Event>,
    closed: watch::Sender<bool>,
    /// One permit per subscriber.
    slots: Arc<Semaphore>,
    max_subscribers: usize,
}

/// A subscription over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event stream limit reached: {limit} (server.max_event_streams)")]
pub struct TooManySubscribers {
    pub limit: usize,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SUBSCRIBERS)
    }
}

impl EventBus {
    /// A bus that takes at most `max_subscribers` at once.
    pub fn new(max_subscribers: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            history: Mutex::new(History {
                next_id: 1,
                events: VecDeque::with_capacity(DEFAULT_HISTORY),
            }),
            live: broadcast::channel(DEFAULT_HISTORY).0,
            closed: watch::channel(false).0,
        }
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

/// What a new subscriber gets: the kept events after its last id, then the live ones.
pub struct Subscription {
    pub missed: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
    pub closed: watch::Receiver<bool>,
    /// Its place among the subscribers, given back when dropped.
    pub slot: OwnedSemaphorePermit,
}

impl EventBus {
    /// Gives `data` the next id and sends it to every subscriber.
    pub fn publish(&self, kind: &'static str, relay: &str, data: Value) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut history = self.history.lock().expect("event history lock poisoned");
        let event = Event {
            id: history.next_id,
            kind,
            relay: relay.to_owned(),
            at,
            data,
        };
        history.next_id += 1;
        if history.events.len() == DEFAULT_HISTORY {
            history.events.pop_front();
        }
        history.events.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.live.send(event);
    }

    /// Subscribes; with `after`, the kept events with a higher id come first. Taken under
    /// the history's lock, so nothing falls between the two. Refused when as many as the
    /// bus takes are subscribed already.
    pub fn subscribe(&self, after: Option<u64>) -> Result<Subscription, TooManySubscribers> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooManySubscribers {
                limit: self.max_subscribers,
            })?;
        let history = self.history.lock().expect("event history lock poisoned");
        let live = self.live.subscribe();
        let missed = match after {
            Some(last) => history
                .events
                .iter()
                .filter(|e| e.id > last)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Ok(Subscription {
            missed,
            live,
            closed: self.closed.subscribe(),
            slot,
        })
    }

    /// Ends every subscription (at shutdown), so no client holds the server open.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resubscriber_gets_what_it_missed_and_no_more() {
        let bus = EventBus::default();
        for n in 0..3 {
            bus.publish("score", "a", json!({ "n": n }));
        }
        let sub = bus.subscribe(Some(1)).expect("room");
        let ids: Vec<u64> = sub.missed.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3]);
        assert!(bus.subscribe(None).expect("room").missed.is_empty());
    }

    #[test]
    fn history_keeps_the_latest() {
        let bus = EventBus::default();
        for _ in 0..DEFAULT_HISTORY + 5 {
            bus.publish("score", "a", Value::Null);
        }
        let missed = bus.subscribe(Some(0)).expect("room").missed;
        assert_eq!(missed.len(), DEFAULT_HISTORY);
        assert_eq!(missed[0].id, 6);
    }

    #[test]
    fn subscribers_are_capped_and_a_slot_comes_back() {
        let bus = EventBus::new(2);
        let first = bus.subscribe(None).expect("room");
        let _second = bus.subscribe(None).expect("room");
        let err = bus.subscribe(None).err().expect("over the cap");
        assert_eq!(
            err.to_string(),
            "event stream limit reached: 2 (server.max_event_streams)"
        );
        drop(first);
        bus.subscribe(None).expect("a slot came back");
    }
}
