//! Pure state machines: what a destination's state becomes on an event, and the backoff.
//!
//! Owns no I/O and no clocks: the relay actor passes `now` in, so every rule is unit-tested.

use std::time::Duration;

use tokio::time::Instant;

/// First retry delay, doubled per attempt up to [`DEFAULT_RETRY_CAP`].
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(15);

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
    /// after `max_retries` of them (if set) a failure is final.
    pub fn next(
        &self,
        event: OutputEvent,
        attempts: u32,
        max_retries: Option<u32>,
        now: Instant,
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
                    next_at: now + backoff(attempt),
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

/// Delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s … capped at 15 s.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    DEFAULT_RETRY_BASE
        .saturating_mul(factor)
        .min(DEFAULT_RETRY_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 15, 15]);
        assert_eq!(backoff(100), DEFAULT_RETRY_CAP);
    }

    #[test]
    fn destination_lifecycle() {
        let now = Instant::now();
        let s = OutputState::Stopped.next(OutputEvent::Started, 0, None, now);
        assert_eq!(s, OutputState::Connecting);
        let s = s.next(OutputEvent::BytesFlowing, 0, None, now);
        assert_eq!(s, OutputState::Live { since: now });
        // Still live, and `since` does not move.
        let later = now + Duration::from_secs(5);
        assert_eq!(s.next(OutputEvent::BytesFlowing, 0, None, later), s);
        let s = s.next(OutputEvent::Failed("refused".into()), 2, None, later);
        assert_eq!(
            s,
            OutputState::Retrying {
                attempt: 3,
                next_at: later + Duration::from_secs(4),
                reason: "refused".into()
            }
        );
        assert_eq!(
            s.next(OutputEvent::Stopped, 3, None, later),
            OutputState::Stopped
        );
    }

    #[test]
    fn a_destination_gives_up_only_when_told_to() {
        let now = Instant::now();
        let failed = OutputEvent::Failed("refused".into());
        let s = OutputState::Connecting.next(failed.clone(), 1, Some(2), now);
        assert!(matches!(s, OutputState::Retrying { attempt: 2, .. }));
        let s = s.next(failed.clone(), 2, Some(2), now);
        assert_eq!(
            s,
            OutputState::Failed {
                reason: "refused".into()
            }
        );
        let s = OutputState::Connecting.next(failed, 1000, None, now);
        assert!(matches!(s, OutputState::Retrying { .. }));
    }
}
