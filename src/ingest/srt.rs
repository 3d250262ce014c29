//! The SRT ingest listener (`server.srt_listen`): publishers send MPEG-TS to
//! `srt://HOST:PORT?streamid=publish:<stream_key>` (MediaMTX's form; the bare key and the
//! SRT access-control form `#!::r=<key>,m=publish` are taken too).
//!
//! The same keys as RTMP admit a publisher, and the same rules refuse one: an unknown key is
//! answered after [`super::DEFAULT_REFUSAL_DELAY`] and counts against the address, and an
//! address with `ingest.max_failed_publishes` failures in a minute is shut out for a minute.
//! A relay with `ingest.srt_passphrase` takes only publishers that encrypt with it (SRT's
//! handshake refuses the others). What comes in is handed to the relay's program as
//! MPEG-TS; the link's statistics (round trip, loss, retransmits) go to the relay's
//! `publisher` view and `/metrics`.
//!
//! A queue relay's casters publish over SRT as over RTMP, with their own keys: a waiting
//! caster's latest pictures are held as MPEG-TS ([`super::ts`]) for their turn. This module
//! must not build pipelines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use srt_protocol::access::{
    AccessControlList, ConnectionMode, RejectReason, StandardAccessControlEntry,
};
use srt_protocol::packet::ServerRejectReason;
use srt_protocol::settings::{KeySettings, Passphrase};
use srt_tokio::{ConnectionRequest, SrtListener, SrtSocket};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::ts::TsHold;
use super::{next_call, Failures, DEFAULT_FAILURE_WINDOW, DEFAULT_REFUSAL_DELAY};
use crate::config::IngestSettings;
use crate::pipeline::input::Container;
use crate::relay::registry::Registry;
use crate::relay::{IngestFeed, Seat, SeatCall, SrtLink, SrtStats};

/// The latency the listener offers when `server.srt_latency_ms` is not set: libsrt's default.
pub const DEFAULT_SRT_LATENCY_MS: u64 = 120;
/// A publisher must send its first bytes within this time of connecting.
const FIRST_DATA_TIMEOUT: Duration = Duration::from_secs(5);
/// A publisher sending nothing for this long is dropped (SRT's own keepalive ends a dead
/// peer sooner; this covers a live peer that sends no media).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the SRT listener on `addr`, offering `latency`.
pub async fn bind(
    addr: SocketAddr,
    latency: Duration,
) -> std::io::Result<(SrtListener, srt_tokio::SrtIncoming)> {
    SrtListener::builder().latency(latency).bind(addr).await
}

/// What a publisher's stream id asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Publish(String),
    /// A player, which this listener does not serve.
    Read,
}

/// Reads a stream id: `publish:<key>`, `<key>`, or `#!::r=<key>,m=publish`.
fn parse_stream_id(id: &str) -> Result<Wanted, String> {
    if id.starts_with("#!::") {
        let acl: AccessControlList = id
            .parse()
            .map_err(|_| "the stream id is not SRT's #!:: form".to_owned())?;
        let (mut key, mut mode) = (None, None);
        for entry in acl.0 {
            match StandardAccessControlEntry::try_from(entry) {
                Ok(StandardAccessControlEntry::ResourceName(name)) => key = Some(name),
                Ok(StandardAccessControlEntry::Mode(m)) => mode = Some(m),
                _ => {}
            }
        }
        return match (key, mode) {
            (_, Some(m)) if m != ConnectionMode::Publish => Ok(Wanted::Read),
            (Some(key), _) if !key.is_empty() => Ok(Wanted::Publish(key)),
            _ => Err("the stream id names no resource (r=<stream key>)".to_owned()),
        };
    }
    match id.split_once(':') {
        Some(("publish", key)) if !key.is_empty() => Ok(Wanted::Publish(key.to_owned())),
        Some(("read" | "play", _)) => Ok(Wanted::Read),
        Some(_) => Err("the stream id is not publish:<stream key>".to_owned()),
        None if !id.is_empty() => Ok(Wanted::Publish(id.to_owned())),
        None => Err("the stream id is empty".to_owned()),
    }
}

/// Accepts SRT publishers until `shutdown` turns true.
pub async fn serve(
    mut incoming: srt_tokio::SrtIncoming,
    registry: Arc<Registry>,
    settings: IngestSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let failures = Arc::new(Failures::new(
        settings.max_failed_publishes,
        DEFAULT_FAILURE_WINDOW,
    ));
    loop {
        tokio::select! {
            request = incoming.incoming().next() => {
                let Some(request) = request else { break };
                let registry = registry.clone();
                let failures = failures.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let peer = request.remote();
                    if let Err(why) = handle(request, &registry, &failures, shutdown).await {
                        warn!(%peer, reason = %why, "srt publish refused or ended");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// One connection request: admitted to its relay and fed until it ends.
async fn handle(
    request: ConnectionRequest,
    registry: &Registry,
    failures: &Failures,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let peer = request.remote();
    if failures.shut_out(peer.ip()) {
        let _ = request
            .reject(RejectReason::Server(ServerRejectReason::Forbidden))
            .await;
        return Err("this address is shut out for too many failed publishes".to_owned());
    }
    let id = request
        .stream_id()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let key = match parse_stream_id(&id) {
        Ok(Wanted::Publish(key)) => key,
        Ok(Wanted::Read) => {
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::BadMode))
                .await;
            return Err("a player asked to read; this listener takes publishers".to_owned());
        }
        Err(why) => {
            failures.record(peer.ip());
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::BadRequest))
                .await;
            return Err(why);
        }
    };
    let Some((relay, caster)) = registry.by_publish_key(&key) else {
        failures.record(peer.ip());
        tokio::time::sleep(DEFAULT_REFUSAL_DELAY).await;
        let _ = request
            .reject(RejectReason::Server(ServerRejectReason::Forbidden))
            .await;
        return Err("unknown stream key".to_owned());
    };
    let passphrase = relay
        .status()
        .await
        .map_err(|e| e.to_string())?
        .spec
        .ingest
        .srt_passphrase;
    // The handshake first: a publisher with the wrong passphrase never reaches the relay.
    let keys = passphrase.map(|p| KeySettings {
        key_size: request.key_size(),
        passphrase: Passphrase::from(p.as_str()),
    });
    let mut socket = match request.accept(keys).await {
        Ok(socket) => socket,
        Err(e) => {
            failures.record(peer.ip());
            return Err(format!(
                "relay {}: the SRT handshake failed: {e}",
                relay.id()
            ));
        }
    };
    let link = Arc::new(SrtLink::default());
    let admitted = relay
        .publish(
            peer.to_string(),
            caster,
            Container::MpegTs,
            Some(link.clone()),
        )
        .await;
    let caster = match admitted {
        Ok(admitted) => Caster {
            feed: admitted.feed,
            seat: admitted.seat,
            hold: TsHold::default(),
        },
        Err(e) => {
            failures.record(peer.ip());
            let _ = socket.close_and_finish().await;
            return Err(format!("relay {}: {e}", relay.id()));
        }
    };
    match caster.seat.as_ref().and_then(Seat::place) {
        Some(place) => info!(%peer, relay = %relay.id(), place, "srt caster waits in the queue"),
        None => info!(%peer, relay = %relay.id(), "srt publish accepted"),
    }
    let ended = forward(socket, caster, &link, &mut shutdown).await;
    info!(%peer, relay = %relay.id(), reason = %ended, "srt publisher left");
    Ok(())
}

/// An admitted SRT publisher: on air (a feed), or a queue relay's caster waiting in line
/// (a seat, and their latest pictures held).
struct Caster {
    /// Into the program, while on air. Declared before `seat`, so it drops first: the relay
    /// learns that the feed ended, then that the caster left.
    feed: Option<IngestFeed>,
    seat: Option<Seat>,
    hold: TsHold,
}

/// Hands the socket's MPEG-TS to the program (or, while the caster waits in line, to their
/// hold) until the peer leaves, stops sending, their turn ends or the daemon stops; returns
/// why it ended.
async fn forward(
    mut socket: SrtSocket,
    mut caster: Caster,
    link: &SrtLink,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let latency = socket.settings().recv_tsbpd_latency;
    let mut stats = socket.statistics().clone();
    let mut deadline = Instant::now() + FIRST_DATA_TIMEOUT;
    loop {
        tokio::select! {
            packet = tokio::time::timeout_at(deadline, socket.next()) => match packet {
                Ok(Some(Ok((_, bytes)))) => {
                    match &caster.feed {
                        Some(feed) => {
                            if let Err(e) = feed.push(bytes) {
                                return e.to_string();
                            }
                        }
                        None => caster.hold.keep(&bytes),
                    }
                    deadline = Instant::now() + IDLE_TIMEOUT;
                }
                Ok(Some(Err(e))) => return format!("read failed: {e}"),
                Ok(None) => return "the peer closed the connection".to_owned(),
                Err(_) => return "no data in time".to_owned(),
            },
            read = stats.next() => if let Some(s) = read {
                // srt-tokio 0.4 leaves the receiver's loss count and round trip at zero:
                // a missing packet is one that came again or never came in time.
                let rtt = s.rx_average_rtt.as_secs_f64() * 1000.0;
                link.set(SrtStats {
                    rtt_ms: (rtt > 0.0).then_some(rtt),
                    latency_ms: latency.as_millis() as u64,
                    packets_received: s.rx_data,
                    packets_lost: s
                        .rx_loss_data
                        .max(s.rx_retransmit_data + s.rx_dropped_data),
                    packets_retransmitted: s.rx_retransmit_data,
                    packets_dropped: s.rx_dropped_data,
                    bytes_received: s.rx_bytes,
                });
                debug!(?s, "srt link statistics");
            },
            call = next_call(caster.seat.as_mut()) => match call {
                Some(SeatCall::OnAir(feed)) => {
                    // Their turn: the held pictures first, from a keyframe.
                    if let Some(held) = caster.hold.take() {
                        if let Err(e) = feed.push(held) {
                            return e.to_string();
                        }
                    }
                    caster.feed = Some(feed);
                }
                _ => return "the caster's turn is over or they were kicked".to_owned(),
            },
            _ = shutdown.changed() => {
                // Given up first, before the feed ends: a queued caster keeps their place.
                if let Some(seat) = caster.seat.take() {
                    seat.daemon_stopping();
                }
                return "the daemon stops".to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_in_each_form_name_the_key() {
        let key = || Ok(Wanted::Publish("k-1".to_owned()));
        assert_eq!(parse_stream_id("publish:k-1"), key());
        assert_eq!(parse_stream_id("k-1"), key());
        assert_eq!(parse_stream_id("#!::r=k-1,m=publish"), key());
        assert_eq!(parse_stream_id("#!::r=k-1"), key());
        assert_eq!(parse_stream_id("read:k-1"), Ok(Wanted::Read));
        assert_eq!(parse_stream_id("#!::r=k-1,m=request"), Ok(Wanted::Read));
        assert!(parse_stream_id("").is_err());
        assert!(parse_stream_id("publish:").is_err());
        assert!(parse_stream_id("record:k").is_err());
    }
}
