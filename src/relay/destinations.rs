//! A relay's RTMP destinations as bookkeeping: each one's spec, state, consecutive failures,
//! and how its push session is getting on; and the rules that judge them over time (a
//! session goes live once enough bytes have left, is dropped when it does not connect in
//! time or stops taking bytes, and a failed one is retried with backoff).
//!
//! Owns the destinations' state and those rules. It must not touch a pipeline, a socket or
//! a clock: the actor passes `now` and the byte counters it read in, and carries out the
//! [`Action`]s that come back (tear a push down, start one). So every rule is unit-tested
//! with `now` in hand. The state machine of one destination is [`super::state`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::spec::OutputSpec;
use super::state::{self, OutputEvent, OutputState};

/// Bytes a destination session must have sent before it counts as live: more than the RTMP
/// handshake and the connect/publish commands, so a server that refuses the publish late
/// never looks live.
pub const DEFAULT_LIVE_BYTES: u64 = 64 * 1024;
/// A destination that stays live this long has its failure count (and so its backoff) reset.
pub const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(60);
/// A destination must go live within this time of its push pipeline starting.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A live destination whose byte counter stands still this long has stopped reading.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One destination: what was asked (its spec) and what is.
#[derive(Debug)]
pub struct Destination {
    pub spec: OutputSpec,
    pub state: OutputState,
    /// Consecutive failures; reset after a stable minute live.
    failures: u32,
    pub last_error: Option<String>,
    /// Bytes its last (or current) push session had sent when last read.
    pub bytes_sent: u64,
    /// While a push session runs: its byte counter when it last rose, and when.
    progress: Option<(u64, Instant)>,
}

/// What the actor must do for the destinations after a [`Destinations::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tear its push session down: it failed for `reason`.
    Fail { output: String, reason: String },
    /// Its retry is due: start a new push session.
    Start { output: String },
}

/// Every destination of one relay, by id.
#[derive(Debug)]
pub struct Destinations {
    relay: String,
    outputs: BTreeMap<String, Destination>,
    /// Places each retry within its backoff window (see [`state::backoff`]).
    jitter: fn() -> f64,
}

impl Destinations {
    pub fn new(relay: &str, specs: &[OutputSpec]) -> Self {
        let mut destinations = Destinations {
            relay: relay.to_owned(),
            outputs: BTreeMap::new(),
            jitter: state::jitter,
        };
        for spec in specs {
            destinations.insert(spec.clone());
        }
        destinations
    }

    pub fn get(&self, id: &str) -> Option<&Destination> {
        self.outputs.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.outputs.contains_key(id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.outputs.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Destination)> {
        self.outputs.iter()
    }

    /// Adds a destination, stopped.
    pub fn insert(&mut self, spec: OutputSpec) {
        let id = spec.id.clone();
        self.outputs.insert(
            id,
            Destination {
                spec,
                state: OutputState::Stopped,
                failures: 0,
                last_error: None,
                bytes_sent: 0,
                progress: None,
            },
        );
    }

    pub fn remove(&mut self, id: &str) {
        self.outputs.remove(id);
    }

    /// Whether `id` has a push session, or a state that a stop would change.
    pub fn is_active(&self, id: &str) -> bool {
        self.outputs
            .get(id)
            .is_some_and(|o| o.progress.is_some() || o.state != OutputState::Stopped)
    }

    /// A push session for `id` started at `now`.
    pub fn started(&mut self, id: &str, now: Instant) {
        self.apply(id, now, "push pipeline started", |out| {
            out.bytes_sent = 0;
            out.progress = Some((0, now));
            OutputEvent::Started
        });
    }

    /// A push session for `id` could not start.
    pub fn start_failed(&mut self, id: &str, reason: &str, now: Instant) {
        self.apply(id, now, reason, |_| OutputEvent::Failed(reason.to_owned()));
    }

    /// `id`'s push session (if any) ended with `event`, having sent `bytes_sent`.
    pub fn ended(
        &mut self,
        id: &str,
        event: OutputEvent,
        bytes_sent: Option<u64>,
        why: &str,
        now: Instant,
    ) {
        self.apply(id, now, why, |out| {
            if let Some(bytes) = bytes_sent {
                out.bytes_sent = bytes;
            }
            out.progress = None;
            event
        });
    }

    /// Judges every destination at `now`: `bytes` holds the byte counter of each running
    /// push session; `program_running` says whether a retry may start now.
    pub fn tick(
        &mut self,
        now: Instant,
        program_running: bool,
        bytes: &BTreeMap<String, u64>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let ids: Vec<String> = self.outputs.keys().cloned().collect();
        for id in ids {
            let Some(out) = self.outputs.get_mut(&id) else {
                continue;
            };
            let Some((last, since)) = out.progress else {
                if let OutputState::Retrying { next_at, .. } = out.state {
                    if next_at <= now && program_running {
                        actions.push(Action::Start { output: id });
                    }
                }
                continue;
            };
            let sent = bytes.get(&id).copied().unwrap_or(last);
            out.bytes_sent = sent;
            let (last, since) = if sent > last {
                (sent, now)
            } else {
                (last, since)
            };
            out.progress = Some((last, since));
            let idle = now.saturating_duration_since(since);
            if sent >= DEFAULT_LIVE_BYTES {
                self.apply(&id, now, "bytes reaching the destination", |_| {
                    OutputEvent::BytesFlowing
                });
            }
            let Some(out) = self.outputs.get_mut(&id) else {
                continue;
            };
            match out.state {
                OutputState::Connecting if idle >= DEFAULT_CONNECT_TIMEOUT => {
                    actions.push(Action::Fail {
                        output: id,
                        reason: format!("not connected after {} s", idle.as_secs()),
                    });
                }
                OutputState::Live { .. } if idle >= DEFAULT_STALL_TIMEOUT => {
                    actions.push(Action::Fail {
                        output: id,
                        reason: format!(
                            "no bytes accepted for {} s (the destination stopped reading)",
                            idle.as_secs()
                        ),
                    });
                }
                OutputState::Live { since }
                    if out.failures > 0
                        && now.saturating_duration_since(since) >= DEFAULT_STABLE_AFTER =>
                {
                    debug!(relay = %self.relay, output = %id, failures = out.failures, "stable for a minute; backoff reset");
                    out.failures = 0;
                }
                _ => {}
            }
        }
        actions
    }

    /// Moves `id` through the event `change` returns (after it has updated the destination),
    /// counting failures and logging the transition once, with its reason.
    fn apply(
        &mut self,
        id: &str,
        now: Instant,
        reason: &str,
        change: impl FnOnce(&mut Destination) -> OutputEvent,
    ) {
        let jitter = (self.jitter)();
        let Some(out) = self.outputs.get_mut(id) else {
            return;
        };
        // GStreamer's messages may quote the URL, key and all: neither the API, the events
        // nor the log get it.
        let event = match change(out) {
            OutputEvent::Failed(why) => {
                let why = crate::secrets::scrub_rtmp_url(&why, &out.spec.url);
                out.last_error = Some(why.clone());
                OutputEvent::Failed(why)
            }
            event => event,
        };
        let reason = crate::secrets::scrub_rtmp_url(reason, &out.spec.url);
        let reason = reason.as_str();
        let failed = matches!(event, OutputEvent::Failed(_));
        let next = out
            .state
            .next(event, out.failures, out.spec.max_retries, now, jitter);
        if failed {
            out.failures += 1;
        }
        if out.state == next {
            return;
        }
        let from = out.state.name();
        let relay = self.relay.as_str();
        match &next {
            OutputState::Retrying {
                attempt, next_at, ..
            } => {
                let delay = next_at.saturating_duration_since(now);
                warn!(relay, output = %id, from, to = "retrying", attempt, delay = ?delay, reason, "output state");
            }
            _ => info!(relay, output = %id, from, to = next.name(), reason, "output state"),
        }
        out.state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, max_retries: Option<u32>) -> OutputSpec {
        OutputSpec {
            max_retries,
            ..OutputSpec::new(id, "rtmp://127.0.0.1/live/x")
        }
    }

    fn destinations(specs: &[OutputSpec]) -> Destinations {
        let mut d = Destinations::new("final", specs);
        d.jitter = || 0.5;
        d
    }

    fn bytes(id: &str, n: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([(id.to_owned(), n)])
    }

    fn state(d: &Destinations, id: &str) -> &'static str {
        d.get(id).expect("destination").state.name()
    }

    #[test]
    fn a_session_goes_live_once_enough_bytes_have_left() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None)]);
        d.started("yt", t0);
        assert_eq!(state(&d, "yt"), "connecting");
        // The handshake alone is not enough.
        let s = Duration::from_secs(1);
        assert!(d.tick(t0 + s, true, &bytes("yt", 3000)).is_empty());
        assert_eq!(state(&d, "yt"), "connecting");
        assert!(d
            .tick(t0 + 2 * s, true, &bytes("yt", DEFAULT_LIVE_BYTES))
            .is_empty());
        assert_eq!(
            d.get("yt").expect("yt").state,
            OutputState::Live { since: t0 + 2 * s }
        );
        assert_eq!(d.get("yt").expect("yt").bytes_sent, DEFAULT_LIVE_BYTES);
    }

    #[test]
    fn a_session_that_never_connects_is_failed_after_the_connect_timeout() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None)]);
        d.started("yt", t0);
        let before = t0 + DEFAULT_CONNECT_TIMEOUT - Duration::from_millis(1);
        assert!(d.tick(before, true, &bytes("yt", 100)).is_empty());
        // Bytes that rose at the first tick restart the clock from there.
        let actions = d.tick(before + DEFAULT_CONNECT_TIMEOUT, true, &bytes("yt", 100));
        assert_eq!(
            actions,
            [Action::Fail {
                output: "yt".into(),
                reason: "not connected after 10 s".into()
            }]
        );
    }

    #[test]
    fn a_live_session_whose_counter_stands_still_has_stalled() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None)]);
        d.started("yt", t0);
        let live = DEFAULT_LIVE_BYTES * 2;
        assert!(d.tick(t0, true, &bytes("yt", live)).is_empty());
        let almost = t0 + DEFAULT_STALL_TIMEOUT - Duration::from_millis(1);
        assert!(d.tick(almost, true, &bytes("yt", live)).is_empty());
        let actions = d.tick(t0 + DEFAULT_STALL_TIMEOUT, true, &bytes("yt", live));
        assert!(
            matches!(&actions[..], [Action::Fail { output, reason }]
                if output == "yt" && reason.contains("stopped reading")),
            "{actions:?}"
        );
    }

    #[test]
    fn a_failure_is_retried_with_backoff_only_while_the_program_runs() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None)]);
        d.started("yt", t0);
        d.ended(
            "yt",
            OutputEvent::Failed("refused".into()),
            Some(10),
            "refused",
            t0,
        );
        let out = d.get("yt").expect("yt");
        assert_eq!(out.last_error.as_deref(), Some("refused"));
        assert_eq!(
            out.state,
            OutputState::Retrying {
                attempt: 1,
                next_at: t0 + Duration::from_secs(1),
                reason: "refused".into()
            }
        );
        let none = BTreeMap::new();
        assert!(d
            .tick(t0 + Duration::from_millis(999), true, &none)
            .is_empty());
        assert!(d.tick(t0 + Duration::from_secs(1), false, &none).is_empty());
        assert_eq!(
            d.tick(t0 + Duration::from_secs(1), true, &none),
            [Action::Start {
                output: "yt".into()
            }]
        );
        // The second failure in a row waits twice as long.
        d.start_failed("yt", "refused again", t0);
        assert!(matches!(
            d.get("yt").expect("yt").state,
            OutputState::Retrying { attempt: 2, next_at, .. } if next_at == t0 + Duration::from_secs(2)
        ));
    }

    #[test]
    fn a_stable_minute_live_resets_the_backoff() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None)]);
        for _ in 0..3 {
            d.start_failed("yt", "refused", t0);
        }
        d.started("yt", t0);
        let mut n = DEFAULT_LIVE_BYTES;
        let mut at = t0;
        while at < t0 + DEFAULT_STABLE_AFTER + Duration::from_secs(2) {
            n += 1000;
            at += Duration::from_secs(1);
            assert!(d.tick(at, true, &bytes("yt", n)).is_empty());
        }
        d.ended("yt", OutputEvent::Failed("gone".into()), None, "gone", at);
        assert!(matches!(
            d.get("yt").expect("yt").state,
            OutputState::Retrying { attempt: 1, .. }
        ));
    }

    #[test]
    fn a_destination_with_max_retries_gives_up() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", Some(1))]);
        d.start_failed("yt", "refused", t0);
        assert_eq!(state(&d, "yt"), "retrying");
        d.start_failed("yt", "refused", t0);
        assert_eq!(state(&d, "yt"), "failed");
        // A failed destination is never due again.
        assert!(d
            .tick(t0 + Duration::from_secs(600), true, &BTreeMap::new())
            .is_empty());
    }

    #[test]
    fn stopping_leaves_a_destination_stopped_and_inactive() {
        let t0 = Instant::now();
        let mut d = destinations(&[spec("yt", None), spec("twitch", None)]);
        assert!(!d.is_active("yt"));
        d.started("yt", t0);
        assert!(d.is_active("yt"));
        d.ended("yt", OutputEvent::Stopped, Some(5), "program stopped", t0);
        assert!(!d.is_active("yt"));
        assert_eq!(state(&d, "yt"), "stopped");
        assert_eq!(d.get("yt").expect("yt").bytes_sent, 5);
        assert_eq!(d.ids(), ["twitch", "yt"]);
    }
}
