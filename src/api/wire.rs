//! The API's JSON shapes. Kept apart from the relay's internal state: these are what clients
//! parse, and they change only deliberately. Each is made for a [`Sight`]: a read-only caller
//! gets the same shape with every secret masked ([`crate::secrets`]).

use std::time::SystemTime;

use serde::Serialize;
use tokio::time::Instant;

use crate::relay::spec::{HlsSpec, IngestSpec, OutputSpec, OverlaySpec, QueueSpec};
use crate::relay::state::OutputState;
use crate::relay::{RelayPhase, RelayStatus, ScoreStatus};
use crate::scores::{Scoreboard, Source};
use crate::secrets::{self, Sight};

#[derive(Debug, Serialize)]
pub struct RelayView {
    pub id: String,
    pub ingest: IngestSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlaySpec>,
    pub hls: HlsView,
    pub outputs: Vec<OutputView>,
    /// `false` for a passthrough relay (remux only).
    pub transcode: bool,
    /// A queue relay's rules (`GET .../queue` has the queue itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// What it records (`GET .../recordings` has the files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<crate::relay::spec::RecordSpec>,
    /// Its graphics layers as specified (`GET .../graphics` has them as they are now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphics: Option<crate::relay::graphics::GraphicsSpec>,
    /// `stopped`, `waiting` (for a publisher), `starting`, `live` or `retrying`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
    pub last_error: Option<String>,
    /// Seconds since the relay was started, while it runs.
    pub uptime: Option<f64>,
    pub publisher: Option<PublisherView>,
    /// What the program shows (`input` or `slate`) and for how long; absent while no
    /// program runs.
    pub on_air: Option<OnAirView>,
    pub frames_encoded: u64,
    /// Program frames the encoder dropped because the CPU could not keep up; the program
    /// itself keeps real time (and the caster on air).
    pub frames_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct OnAirView {
    /// `input` (the publisher's or pulled stream's pictures) or `slate`.
    pub showing: &'static str,
    /// Seconds since it went on air.
    pub for_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct HlsView {
    #[serde(flatten)]
    pub spec: HlsSpec,
    /// Path of the master playlist on this server.
    pub master: String,
    /// Path of the DVR master playlist (each rendition's `dvr.m3u8`), with `hls.dvr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dvr_master: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RetryView {
    pub attempt: u32,
    /// Seconds until the next attempt.
    pub next_in: f64,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PublisherView {
    pub peer: String,
    /// Seconds since the publisher connected.
    pub connected_for: f64,
    /// `rtmp` or `srt`.
    pub protocol: &'static str,
    /// An SRT publisher's link: round trip, agreed latency, packets lost, retransmitted and
    /// dropped since it connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srt: Option<crate::relay::SrtStats>,
}

#[derive(Debug, Serialize)]
pub struct OutputView {
    #[serde(flatten)]
    pub spec: OutputSpec,
    /// `stopped`, `connecting`, `live`, `retrying` or `failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
    pub last_error: Option<String>,
    pub bytes_sent: u64,
    /// Seconds since the destination went live, while it is.
    pub uptime: Option<f64>,
}

fn seconds_since(t: SystemTime) -> f64 {
    t.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn retry_view(attempt: u32, next_at: Instant, reason: &str) -> RetryView {
    RetryView {
        attempt,
        next_in: next_at
            .saturating_duration_since(Instant::now())
            .as_secs_f64(),
        reason: reason.to_owned(),
    }
}

impl RelayView {
    /// The relay as `sight` may see it: with [`Sight::Masked`], its stream key, pull URL,
    /// destination keys and scores-API credentials are masked, and so is any of them that an
    /// error message or retry reason quotes.
    pub fn seen(mut s: RelayStatus, sight: Sight) -> Self {
        if sight == Sight::Masked {
            let spec = s.spec.clone();
            let scrub = |text: &mut String| *text = secrets::scrub(text, &spec);
            if let RelayPhase::Retrying { reason, .. } = &mut s.phase {
                scrub(reason);
            }
            s.last_error.iter_mut().for_each(scrub);
            for o in &mut s.outputs {
                o.spec.url = secrets::rtmp_url(&o.spec.url);
                o.last_error.iter_mut().for_each(scrub);
                if let OutputState::Retrying { reason, .. } = &mut o.state {
                    scrub(reason);
                }
            }
            s.spec = secrets::spec(&s.spec);
        }
        Self::from(s)
    }
}

impl From<RelayStatus> for RelayView {
    fn from(s: RelayStatus) -> Self {
        let retry = match &s.phase {
            RelayPhase::Retrying {
                attempt,
                next_at,
                reason,
            } => Some(retry_view(*attempt, *next_at, reason)),
            _ => None,
        };
        Self {
            hls: HlsView {
                master: format!("/hls/{}/master.m3u8", s.spec.id),
                dvr_master: s
                    .spec
                    .hls
                    .dvr
                    .is_some()
                    .then(|| format!("/hls/{}/dvr.m3u8", s.spec.id)),
                spec: s.spec.hls.clone(),
            },
            outputs: s
                .outputs
                .into_iter()
                .map(|o| OutputView {
                    state: o.state.name(),
                    retry: match &o.state {
                        OutputState::Retrying {
                            attempt,
                            next_at,
                            reason,
                        } => Some(retry_view(*attempt, *next_at, reason)),
                        _ => None,
                    },
                    uptime: match o.state {
                        OutputState::Live { since } => Some(since.elapsed().as_secs_f64()),
                        _ => None,
                    },
                    spec: o.spec,
                    last_error: o.last_error,
                    bytes_sent: o.bytes_sent,
                })
                .collect(),
            state: s.phase.name(),
            retry,
            last_error: s.last_error,
            uptime: s.started_at.map(seconds_since),
            publisher: s.publisher.map(|p| PublisherView {
                connected_for: seconds_since(p.since),
                protocol: if p.srt.is_some() { "srt" } else { "rtmp" },
                srt: p.srt.map(|link| link.get()),
                peer: p.peer,
            }),
            on_air: s.on_air.map(|(showing, since)| OnAirView {
                showing: showing.name(),
                for_seconds: seconds_since(since),
            }),
            frames_encoded: s.frames_encoded,
            frames_dropped: s.frames_dropped,
            id: s.spec.id,
            ingest: s.spec.ingest,
            transcode: s.spec.transcode,
            queue: s.spec.queue.clone(),
            record: s.spec.record.clone(),
            graphics: s.spec.graphics.clone(),
            overlay: s.spec.overlay,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ScoreView {
    /// The scoreboard on screen (or that would be, for a relay without an overlay).
    pub scoreboard: Option<Scoreboard>,
    /// `api` or `manual`.
    pub source: Option<Source>,
    /// Unix time (seconds) of the last change of value or source.
    pub updated_at: Option<f64>,
    /// Seconds since its source last confirmed it.
    pub age: Option<f64>,
    pub stale: bool,
    pub last_error: Option<String>,
    pub overlay: bool,
    pub scores_url: Option<String>,
}

impl ScoreView {
    /// The score as `sight` may see it: with [`Sight::Masked`], the scores URL's user info and
    /// query are masked, and the stream name of a relay that pulls `pulled`.
    pub fn seen(mut s: ScoreStatus, sight: Sight, pulled: Option<&str>) -> Self {
        if sight == Sight::Masked {
            s.scores_url = s
                .scores_url
                .as_deref()
                .map(|url| secrets::scores_url(url, pulled));
        }
        Self::from(s)
    }
}

impl From<ScoreStatus> for ScoreView {
    fn from(s: ScoreStatus) -> Self {
        Self {
            scoreboard: s.scoreboard,
            source: s.source,
            updated_at: s.updated_at.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64())
            }),
            age: s.age,
            stale: s.stale,
            last_error: s.last_error,
            overlay: s.overlay,
            scores_url: s.scores_url,
        }
    }
}
