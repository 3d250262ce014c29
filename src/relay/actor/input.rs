//! The actor's input: the publisher (or pulled stream) attached to the program, who may
//! take over a stale publisher's place, what the switch shows, and pulling again after a
//! pulled stream was lost.
//!
//! Owns the [`Attached`] branch, the publisher's status and the pulled input's backoff. It
//! must not end the program when an input fails: the slate takes over, and only the
//! program's own faults go to [`Lifecycle`](crate::relay::lifecycle::Lifecycle).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

use super::program::DEFAULT_DRAIN_TIMEOUT;
use super::Actor;
use crate::pipeline::bus::BusError;
use crate::pipeline::input::{Container, IngestBranch, Source};
use crate::relay::handle::{unix_millis, IngestFeed, PublisherStatus, RelayError, SrtLink};
use crate::relay::lifecycle::{LifeEvent, Retry};
use crate::relay::state;
use crate::relay::OnAir;
use crate::render::SlateMessage;

/// A publisher that has sent nothing for this long may be replaced by a new publish on its
/// key (the caster restarted OBS while the old connection lingers).
const DEFAULT_STALE_PUBLISHER: Duration = Duration::from_secs(2);
/// A pulled input on air this long has its backoff reset.
const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(60);

/// The input attached to a decoded program: a publisher's or a pulled stream's branch.
pub(super) struct Attached {
    pub(super) branch: IngestBranch,
    pub(super) generation: u64,
    /// When the publisher last sent bytes (ms since the Unix epoch); pulled streams: unused.
    pub(super) last_data: Arc<AtomicU64>,
}

impl Actor {
    pub(super) fn accept_publisher(
        &mut self,
        peer: String,
        container: Container,
        srt: Option<Arc<SrtLink>>,
    ) -> Result<IngestFeed, RelayError> {
        let id = self.spec.id.clone();
        if self.spec.ingest.stream_key.is_none() {
            return Err(RelayError::NotPush { id });
        }
        if !self.life.wanted() {
            return Err(RelayError::NotRunning { id });
        }
        if let Some(p) = &self.publisher {
            let silent_ms = self.input.as_ref().map_or(0, |a| {
                unix_millis().saturating_sub(a.last_data.load(Ordering::Relaxed))
            });
            if !self.spec.transcode || silent_ms < DEFAULT_STALE_PUBLISHER.as_millis() as u64 {
                return Err(RelayError::AlreadyPublishing {
                    id,
                    peer: p.peer.clone(),
                });
            }
            info!(relay = %id, old = %p.peer, new = %peer, silent_ms, "stale publisher replaced by a new one");
            self.publisher = None;
            self.detach_input("replaced by a new publisher");
        }
        let feed = if self.spec.transcode {
            if self.program.is_none() {
                return Err(RelayError::NotRunning { id });
            }
            let attached = self.attach(&Source::Push(container))?;
            let feed = self.feed_of(&attached);
            self.input = Some(attached);
            feed
        } else {
            // A previous program may still be draining: it gives way to the new publisher.
            self.teardown_program();
            let (appsrc, arrival) = self.start_program(Some(Source::Push(container)))?;
            IngestFeed {
                appsrc: appsrc.expect("push programs have an ingest appsrc"),
                arrival,
                events: self.events_tx.clone(),
                generation: self.generation,
                last_data: Arc::new(AtomicU64::new(unix_millis())),
                bytes_in: self.observer.bytes_in().clone(),
            }
        };
        info!(relay = %id, peer = %peer, "publisher connected");
        self.publisher = Some(PublisherStatus {
            peer,
            since: SystemTime::now(),
            srt,
        });
        Ok(feed)
    }

    /// A feed into `attached`'s appsrc (a push branch).
    pub(super) fn feed_of(&self, attached: &Attached) -> IngestFeed {
        IngestFeed {
            appsrc: attached
                .branch
                .appsrc
                .clone()
                .expect("push branches have an appsrc"),
            arrival: attached.branch.arrival.clone(),
            events: self.events_tx.clone(),
            generation: attached.generation,
            last_data: attached.last_data.clone(),
            bytes_in: self.observer.bytes_in().clone(),
        }
    }

    /// Attaches the pulled stream to a decoded program; on failure, retries with backoff
    /// while the slate stays on air.
    pub(super) fn attach_pull(&mut self) {
        let Some(url) = self.spec.ingest.url.clone() else {
            return;
        };
        match self.attach(&Source::Pull(url)) {
            Ok(attached) => {
                self.input = Some(attached);
            }
            Err(e) => self.retry_pull(e.to_string()),
        }
    }

    /// Schedules the next attempt to pull the stream.
    fn retry_pull(&mut self, reason: String) {
        let previous = self.input_retry.as_ref().map_or(0, |r| r.attempt);
        let now = Instant::now();
        let retry = Retry::after(previous, reason, now, state::jitter());
        let delay = retry.next_at.saturating_duration_since(now);
        warn!(relay = %self.spec.id, attempt = retry.attempt, delay = ?delay, reason = %retry.reason, "pulled stream lost, retrying; the slate is on air");
        self.last_error = Some(retry.reason.clone());
        self.input_retry = Some(retry);
    }

    /// Attaches `source` to the running decoded program.
    pub(super) fn attach(&mut self, source: &Source) -> Result<Attached, RelayError> {
        let id = self.spec.id.clone();
        let running = self
            .program
            .as_mut()
            .ok_or(RelayError::NotRunning { id: id.clone() })?;
        let branch = running
            .program
            .attach(source)
            .map_err(|source| RelayError::Pipeline { id, source })?;
        self.generation += 1;
        Ok(Attached {
            branch,
            generation: self.generation,
            last_data: Arc::new(AtomicU64::new(unix_millis())),
        })
    }

    /// Detaches the program's input, if any; the slate takes over, saying "we'll be right
    /// back".
    pub(super) fn detach_input(&mut self, why: &str) {
        let Some(attached) = self.input.take() else {
            return;
        };
        info!(relay = %self.spec.id, branch = %attached.branch.name(), reason = why, "input detached");
        if let Some(running) = &self.program {
            running.program.detach(attached.branch);
            running.program.set_slate(
                &self
                    .ctx
                    .slates
                    .get(SlateMessage::BeRightBack, &self.ctx.program),
            );
        }
    }

    /// A publisher's feed was dropped: a decoded program goes to the slate; a passthrough
    /// program drains (its appsrc got EOS, and its EOS tears it down). The publisher slot
    /// frees at once so a reconnecting caster is not refused.
    pub(super) fn on_publisher_gone(&mut self, generation: u64) {
        if self
            .input
            .as_ref()
            .is_some_and(|a| a.generation == generation)
        {
            if let Some(p) = self.publisher.take() {
                info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
            }
            self.detach_input("publisher disconnected");
        } else if !self.spec.transcode
            && self.program.as_ref().map(|p| p.generation) == Some(generation)
        {
            if let Some(p) = self.publisher.take() {
                info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
            }
            self.life_event(LifeEvent::InputEnded {
                generation,
                deadline: Instant::now() + DEFAULT_DRAIN_TIMEOUT,
            });
        }
    }

    /// An error inside the input's branch (a publisher's garbage, a pulled server that went
    /// away) costs the input, never the program: the slate takes over.
    pub(super) fn on_input_error(&mut self, err: BusError) {
        warn!(relay = %self.spec.id, element = %err.element, debug = ?err.debug, "input failed: {}", err.message);
        self.last_error = Some(err.to_string());
        self.detach_input("input failed");
        if let Some(p) = self.publisher.take() {
            info!(relay = %self.spec.id, peer = %p.peer, "publisher dropped: its stream failed");
        }
        if self.spec.ingest.url.is_some() {
            self.retry_pull(err.to_string());
        }
    }

    /// The switch changed what is on air.
    pub(super) fn on_switched(&mut self, slate: bool) {
        if !slate {
            // A queue relay's next caster took the air: the outgoing one's branch goes.
            self.handover_done();
        }
        let on_air = if slate { OnAir::Slate } else { OnAir::Input };
        if self.on_air.map(|(o, _)| o) == Some(on_air) {
            return;
        }
        let from = self.on_air.map_or("nothing", |(o, _)| o.name());
        info!(relay = %self.spec.id, from, to = on_air.name(), "on air");
        self.on_air = Some((on_air, SystemTime::now()));
    }

    /// An input's stream ended (a pulled stream's server ended it); the branch goes.
    pub(super) fn on_ingest_ended(&mut self, branch: String) {
        if self.input.as_ref().map(|a| a.branch.name()) != Some(branch) {
            return;
        }
        self.detach_input("its stream ended");
        if self.publisher.is_none() && self.spec.ingest.url.is_some() {
            self.retry_pull("the pulled stream ended".to_owned());
        }
    }

    /// Pulls again when due; a pulled input on air for a stable minute resets its backoff.
    pub(super) fn tick_input(&mut self, now: Instant) {
        if let Some(retry) = &self.input_retry {
            if self.program.is_some() && self.input.is_none() && retry.next_at <= now {
                self.attach_pull();
            }
        }
        if self.input.is_some()
            && self.on_air.is_some_and(|(o, since)| {
                o == OnAir::Input && since.elapsed().unwrap_or_default() >= DEFAULT_STABLE_AFTER
            })
        {
            self.input_retry = None;
        }
    }
}
