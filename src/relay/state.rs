//! Pure state machines: what a destination's state becomes on an event, and the backoff.
//!
//! Owns no I/O and no clocks: the relay actor passes `now` in, so every rule is unit-tested.

use std::time::Duration;

use tokio::time::Instant;

/// First retry delay, doubled per attempt up to [`DEFAULT_RETRY_CAP`].
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(15);
/// How far jitter moves a delay either way (a fraction of it), so destinations that failed
/// together do not retry in step.
pub const DEFAULT_RETRY_JITTER: f64 = 0.25;

/// A destination's actual state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputState {
    /// The program is not running, or the operator stopped the relay.
    Stopped,
    /// The push pipeline is up; no bytes have reached the destination yet.
    Connecting,
    /// Bytes are reaching the destination.
    Live { since: Instant },
    /// The last attempt failed; the next one is due at `next_at`.
    Retrying {
        attempt: u32,
        next_at: Instant,
        reason: String,
    },
    /// It failed more times in a row than its `max_retries` allows; no more attempts.
    Failed { reason: String },
}

/// What happened to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// A push pipeline was started.
    Started,
    /// Its byte counter rose.
    BytesFlowing,
    /// It failed (bus error, refused connection).
    Failed(String),
    /// The program stopped, so the destination stops too.
    Stopped,
}

impl OutputState {
    /// The state after `event`. `attempts` counts consecutive failures before this one;
    /// after `max_retries` of them (if set) a failure is final. `jitter` (0..1) places a
    /// retry within its window (see [`backoff`]).
    pub fn next(
        &self,
        event: OutputEvent,
        attempts: u32,
        max_retries: Option<u32>,
        now: Instant,
        jitter: f64,
    ) -> OutputState {
        match (self, event) {
            (_, OutputEvent::Stopped) => OutputState::Stopped,
            (_, OutputEvent::Started) => OutputState::Connecting,
            (OutputState::Connecting, OutputEvent::BytesFlowing) => {
                OutputState::Live { since: now }
            }
            (state, OutputEvent::BytesFlowing) => state.clone(),
            (_, OutputEvent::Failed(reason)) if max_retries.is_some_and(|m| attempts >= m) => {
                OutputState::Failed { reason }
            }
            (_, OutputEvent::Failed(reason)) => {
                let attempt = attempts + 1;
                OutputState::Retrying {
                    attempt,
                    next_at: now + backoff(attempt, jitter),
                    reason,
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OutputState::Stopped => "stopped",
            OutputState::Connecting => "connecting",
            OutputState::Live { .. } => "live",
            OutputState::Retrying { .. } => "retrying",
            OutputState::Failed { .. } => "failed",
        }
    }
}

/// Delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s … capped at 15 s, each moved
/// by up to a quarter either way as `jitter` (0..1) says; the cap holds after jitter. The
/// first retry therefore comes within 0.75–1.25 s.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let nominal = DEFAULT_RETRY_BASE.saturating_mul(factor);
    let spread = 1.0 + DEFAULT_RETRY_JITTER * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
    nominal.mul_f64(spread).min(DEFAULT_RETRY_CAP)
}

/// A number in 0..1 that differs from call to call, for [`backoff`]'s jitter.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is seeded afresh; no need for a random-number crate.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a, 0.5).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 15, 15]);
        assert_eq!(backoff(100, 0.5), DEFAULT_RETRY_CAP);
    }

    #[test]
    fn jitter_spreads_retries_but_keeps_the_first_within_two_seconds() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(750));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(1250));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(6));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(10));
        // Never past the cap, whatever the jitter.
        assert_eq!(backoff(5, 1.0), DEFAULT_RETRY_CAP);
        let draws: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(
            draws.iter().any(|j| (j - draws[0]).abs() > 1e-9),
            "jitter never varies"
        );
    }

    #[test]
    fn destination_lifecycle() {
        let now = Instant::now();
        let s = OutputState::Stopped.next(OutputEvent::Started, 0, None, now, 0.5);
        assert_eq!(s, OutputState::Connecting);
        let s = s.next(OutputEvent::BytesFlowing, 0, None, now, 0.5);
        assert_eq!(s, OutputState::Live { since: now });
        // Still live, and `since` does not move.
        let later = now + Duration::from_secs(5);
        assert_eq!(s.next(OutputEvent::BytesFlowing, 0, None, later, 0.5), s);
        let s = s.next(OutputEvent::Failed("refused".into()), 2, None, later, 0.5);
        assert_eq!(
            s,
            OutputState::Retrying {
                attempt: 3,
                next_at: later + Duration::from_secs(4),
                reason: "refused".into()
            }
        );
        assert_eq!(
            s.next(OutputEvent::Stopped, 3, None, later, 0.5),
            OutputState::Stopped
        );
    }

    #[test]
    fn a_destination_gives_up_only_when_told_to() {
        let now = Instant::now();
        let failed = OutputEvent::Failed("refused".into());
        let s = OutputState::Connecting.next(failed.clone(), 1, Some(2), now, 0.5);
        assert!(matches!(s, OutputState::Retrying { attempt: 2, .. }));
        let s = s.next(failed.clone(), 2, Some(2), now, 0.5);
        assert_eq!(
            s,
            OutputState::Failed {
                reason: "refused".into()
            }
        );
        let s = OutputState::Connecting.next(failed, 1000, None, now, 0.5);
        assert!(matches!(s, OutputState::Retrying { .. }));
    }
}
