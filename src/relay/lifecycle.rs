//! The program's own lifecycle: stopped, waiting for a publisher, running, draining after
//! its publisher left, or retrying after a failure. One enum and a pure transition function,
//! so the relay's phase is read from one value rather than pieced together.
//!
//! Owns those rules and the backoff of program rebuilds and pulled inputs ([`Retry`]). It
//! must not build, drain or tear down a pipeline: the actor does, and tells this module what
//! happened. `now` and the jitter are passed in, so every rule is unit-tested.

use tokio::time::Instant;

use super::state;

/// Where the program is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Not asked to run.
    Stopped,
    /// Asked to run, with no program: a pushed passthrough relay waits for its publisher.
    Waiting,
    /// A program runs. `failures` counts the failed programs before it; it goes back to 0
    /// once this one encodes frames.
    Running { generation: u64, failures: u32 },
    /// The program's publisher left (passthrough): it must reach its end by `deadline`.
    Draining { generation: u64, deadline: Instant },
    /// The program failed; it is rebuilt at `next_at`.
    Retrying(Retry),
}

/// What happened to the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifeEvent {
    /// The operator asked the relay to run.
    Start,
    /// The operator stopped the relay (or it is shutting down).
    Stop,
    /// Program `generation` was built and plays.
    Built { generation: u64 },
    /// The running program has encoded frames.
    Flowing,
    /// Program `generation`'s publisher left; it drains until `deadline`.
    InputEnded { generation: u64, deadline: Instant },
    /// Program `generation` ended without a fault (its end of stream, or a new publisher
    /// took its place).
    Ended { generation: u64 },
    /// The program failed (or could not be built). `rebuilds` says whether it is rebuilt
    /// without waiting for a publisher (decoded and pulling relays).
    Failed { reason: String, rebuilds: bool },
}

/// A rebuild (or re-pull) that is due at `next_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub attempt: u32,
    pub next_at: Instant,
    pub reason: String,
}

impl Retry {
    /// The retry after `previous` consecutive failures, for `reason`.
    pub fn after(previous: u32, reason: String, now: Instant, jitter: f64) -> Self {
        let attempt = previous + 1;
        Retry {
            attempt,
            next_at: now + state::backoff(attempt, jitter),
            reason,
        }
    }
}

impl Lifecycle {
    /// The lifecycle after `event` at `now`; `jitter` (0..1) places a retry in its window.
    pub fn next(&self, event: LifeEvent, now: Instant, jitter: f64) -> Lifecycle {
        use LifeEvent as E;
        use Lifecycle as L;
        match (self, event) {
            (_, E::Stop) => L::Stopped,
            (L::Stopped, E::Start) => L::Waiting,
            (L::Stopped, _) => L::Stopped,
            (state, E::Start) => state.clone(),
            (state, E::Built { generation }) => L::Running {
                generation,
                failures: state.failures(),
            },
            (L::Running { generation, .. }, E::Flowing) => L::Running {
                generation: *generation,
                failures: 0,
            },
            (
                L::Running { generation, .. },
                E::InputEnded {
                    generation: g,
                    deadline,
                },
            ) if *generation == g => L::Draining {
                generation: g,
                deadline,
            },
            (
                L::Running { generation, .. } | L::Draining { generation, .. },
                E::Ended { generation: g },
            ) if *generation == g => L::Waiting,
            (state, E::Failed { reason, rebuilds }) => {
                if rebuilds {
                    L::Retrying(Retry::after(state.failures(), reason, now, jitter))
                } else {
                    L::Waiting
                }
            }
            (state, _) => state.clone(),
        }
    }

    /// Failed programs in a row before this point.
    fn failures(&self) -> u32 {
        match self {
            Lifecycle::Running { failures, .. } => *failures,
            Lifecycle::Retrying(r) => r.attempt,
            _ => 0,
        }
    }

    /// The generation of the program that runs or drains, if any.
    pub fn generation(&self) -> Option<u64> {
        match self {
            Lifecycle::Running { generation, .. } | Lifecycle::Draining { generation, .. } => {
                Some(*generation)
            }
            _ => None,
        }
    }

    /// Whether the operator wants the relay to run.
    pub fn wanted(&self) -> bool {
        *self != Lifecycle::Stopped
    }

    /// Whether a rebuild is due at `now`.
    pub fn rebuild_due(&self, now: Instant) -> bool {
        matches!(self, Lifecycle::Retrying(r) if r.next_at <= now)
    }

    /// Whether a draining program has overrun its deadline at `now`.
    pub fn drain_overdue(&self, now: Instant) -> bool {
        matches!(self, Lifecycle::Draining { deadline, .. } if *deadline <= now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn failed(rebuilds: bool) -> LifeEvent {
        LifeEvent::Failed {
            reason: "boom".into(),
            rebuilds,
        }
    }

    #[test]
    fn a_decoded_relay_starts_runs_and_stops() {
        let now = Instant::now();
        let l = Lifecycle::Stopped.next(LifeEvent::Start, now, 0.5);
        assert_eq!(l, Lifecycle::Waiting);
        assert!(l.wanted());
        let l = l.next(LifeEvent::Built { generation: 1 }, now, 0.5);
        assert_eq!(l.generation(), Some(1));
        // A second start changes nothing.
        assert_eq!(l.next(LifeEvent::Start, now, 0.5), l);
        let l = l.next(LifeEvent::Stop, now, 0.5);
        assert_eq!(l, Lifecycle::Stopped);
        assert!(!l.wanted());
        // A stopped relay ignores whatever its old program reports.
        assert_eq!(l.next(failed(true), now, 0.5), Lifecycle::Stopped);
        assert_eq!(
            l.next(LifeEvent::Built { generation: 2 }, now, 0.5),
            Lifecycle::Stopped
        );
    }

    #[test]
    fn failures_back_off_until_frames_flow() {
        let now = Instant::now();
        let l = Lifecycle::Waiting.next(failed(true), now, 0.5);
        let Lifecycle::Retrying(r) = &l else {
            panic!("{l:?}")
        };
        assert_eq!((r.attempt, r.next_at), (1, now + Duration::from_secs(1)));
        assert!(!l.rebuild_due(now));
        assert!(l.rebuild_due(r.next_at));
        // Rebuilt, but failing again before any frame: the next wait doubles.
        let l = l.next(LifeEvent::Built { generation: 2 }, now, 0.5);
        let l = l.next(failed(true), now, 0.5);
        assert!(matches!(&l, Lifecycle::Retrying(r) if r.attempt == 2
            && r.next_at == now + Duration::from_secs(2)));
        // Frames flowing resets the count.
        let l =
            l.next(LifeEvent::Built { generation: 3 }, now, 0.5)
                .next(LifeEvent::Flowing, now, 0.5);
        assert_eq!(
            l,
            Lifecycle::Running {
                generation: 3,
                failures: 0
            }
        );
        assert!(matches!(l.next(failed(true), now, 0.5), Lifecycle::Retrying(r) if r.attempt == 1));
    }

    #[test]
    fn a_pushed_passthrough_relay_drains_then_waits_for_its_publisher() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(3);
        let l = Lifecycle::Waiting.next(LifeEvent::Built { generation: 4 }, now, 0.5);
        // The end of an older program is not this one's.
        let stale = LifeEvent::InputEnded {
            generation: 3,
            deadline,
        };
        assert_eq!(l.next(stale, now, 0.5), l);
        let l = l.next(
            LifeEvent::InputEnded {
                generation: 4,
                deadline,
            },
            now,
            0.5,
        );
        assert_eq!(l.generation(), Some(4));
        assert!(!l.drain_overdue(now));
        assert!(l.drain_overdue(deadline));
        assert_eq!(
            l.next(LifeEvent::Ended { generation: 4 }, now, 0.5),
            Lifecycle::Waiting
        );
        // A failure of a program that waits for its publisher is not retried.
        assert_eq!(l.next(failed(false), now, 0.5), Lifecycle::Waiting);
    }
}
