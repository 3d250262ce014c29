//! The RTMP ingest server: publishers push to `rtmp://HOST:PORT/live/<stream_key>`.
//!
//! Owns the listening socket, each connection's socket and its deadlines; the protocol itself
//! lives in a sans-IO core that the fuzz target drives without sockets: [`protocol`]
//! (handshake, session, publish decisions and the limits on what a peer may send), `gate`
//! (chunk and AMF checks before `rml_rtmp` parses anything), [`flv`] (FLV framing) and
//! [`harness`] (the fuzz target's driver and a recorded publisher). This module must not build
//! pipelines: an accepted stream is handed to its relay's actor as FLV.
//!
//! A connection answers to a deadline at each stage: the handshake within
//! [`DEFAULT_HANDSHAKE_TIMEOUT`] of connecting, an accepted publish within
//! [`DEFAULT_PUBLISH_TIMEOUT`], a first video picture within
//! [`DEFAULT_FIRST_PICTURE_TIMEOUT`] of the publish (a publisher of audio alone is dropped:
//! the program would wait for video for ever), and then data at least every
//! [`DEFAULT_IDLE_TIMEOUT`]. A peer that misbehaves loses its own connection; nothing else.
//!
//! A publish with a stream key no relay has is answered only after
//! [`DEFAULT_REFUSAL_DELAY`], and an address with [`DEFAULT_MAX_FAILURES`] such refusals
//! within [`DEFAULT_FAILURE_WINDOW`] has its next connections closed at once until the window
//! passes: guessing keys is slow.

pub mod flv;
mod gate;
pub mod harness;
pub mod protocol;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::relay::registry::Registry;
use crate::relay::{FeedClosed, IngestFeed};
pub use protocol::APP_NAME;
use protocol::{Action, Limits, MediaTag, Protocol, ProtocolError};

/// A peer must finish the handshake within this time of connecting.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer must have a publish accepted within this time of connecting (or of ending its last
/// publish on the same connection).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// A publisher must send a video picture within this time of its publish being accepted.
pub const DEFAULT_FIRST_PICTURE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with nothing to read for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write the peer does not take within this time closes the connection.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish with an unknown stream key waits for its refusal.
pub const DEFAULT_REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// Refused publishes from one address within [`DEFAULT_FAILURE_WINDOW`] before it is shut out.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("publish refused: {0}")]
    Refused(String),
    #[error("relay {relay}: no video picture within {waited:?} of the publish")]
    NoPicture { relay: String, waited: Duration },
    #[error("relay {relay}: {source}")]
    Feed {
        relay: String,
        #[source]
        source: FeedClosed,
    },
}

/// Publishes refused for an unknown stream key, per address, in the current window.
#[derive(Default)]
struct Failures(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl Failures {
    /// Counts a refusal; `true` when the address has just reached the limit.
    fn record(&self, ip: IpAddr) -> bool {
        let mut map = self.0.lock().expect("failures lock poisoned");
        let now = Instant::now();
        map.retain(|_, (_, since)| now.duration_since(*since) < DEFAULT_FAILURE_WINDOW);
        let (count, _) = map.entry(ip).or_insert((0, now));
        *count += 1;
        *count == DEFAULT_MAX_FAILURES
    }

    /// Whether the address is shut out for now.
    fn shut_out(&self, ip: IpAddr) -> bool {
        let map = self.0.lock().expect("failures lock poisoned");
        map.get(&ip).is_some_and(|(count, since)| {
            *count >= DEFAULT_MAX_FAILURES && since.elapsed() < DEFAULT_FAILURE_WINDOW
        })
    }
}

/// Accepts RTMP connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let failures = Arc::new(Failures::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if failures.shut_out(peer.ip()) => {
                    debug!(%peer, "rtmp connection closed: too many unknown stream keys");
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    let failures = failures.clone();
                    let registry = registry.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        match handle(stream, peer, registry, failures, shutdown).await {
                            Ok(()) => debug!(%peer, "rtmp connection closed"),
                            Err(IngestError::Refused(reason)) => {
                                warn!(%peer, reason = %reason, "rtmp publish refused")
                            }
                            Err(IngestError::NoPicture { relay, waited }) => warn!(
                                %peer,
                                relay = %relay,
                                waited = ?waited,
                                "publisher dropped: no video picture (audio alone cannot \
                                 start the program); the relay waits for the next publisher"
                            ),
                            Err(e) => info!(%peer, error = %e, "rtmp connection ended"),
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// One connection: bytes in through the protocol, its actions carried out, until the peer
/// leaves, breaks a rule or misses a deadline.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    failures: Arc<Failures>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    stream.set_nodelay(true)?;
    let connected_at = Instant::now();
    let mut protocol = Protocol::new(Limits::default());
    let mut conn = Connection {
        peer,
        registry,
        failures,
        publish: None,
        waiting_since: connected_at,
    };
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let now = Instant::now();
        let due = conn.due(&protocol, connected_at);
        if let Some((at, due)) = &due {
            // Checked here too: a peer sending steadily never lets a read time out.
            if now >= *at {
                return Err(due.expired());
            }
        }
        let idle_at = now + DEFAULT_IDLE_TIMEOUT;
        let read_by = due.as_ref().map_or(idle_at, |(at, _)| (*at).min(idle_at));
        let n = tokio::select! {
            read = tokio::time::timeout_at(read_by, stream.read(&mut buf)) => match read {
                Ok(read) => read?,
                Err(_) => match due {
                    Some((at, due)) if at <= idle_at => return Err(due.expired()),
                    _ => return Err(IngestError::Timeout("waiting for data")),
                },
            },
            _ = shutdown.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        protocol.feed(&buf[..n])?;
        while let Some(action) = protocol.poll()? {
            conn.act(&mut stream, &mut protocol, action).await?;
        }
    }
}

/// What one connection has been granted.
struct Connection {
    peer: SocketAddr,
    registry: Arc<Registry>,
    failures: Arc<Failures>,
    publish: Option<Publishing>,
    /// Since when the connection has been without a publish.
    waiting_since: Instant,
}

/// An accepted publish.
struct Publishing {
    relay: String,
    feed: IngestFeed,
    since: Instant,
    picture_seen: bool,
}

/// The deadline a connection answers to now.
enum Due {
    Handshake,
    Publish,
    Picture { relay: String },
}

impl Due {
    fn expired(&self) -> IngestError {
        match self {
            Due::Handshake => IngestError::Timeout("in the handshake"),
            Due::Publish => IngestError::Timeout("waiting for a publish"),
            Due::Picture { relay } => IngestError::NoPicture {
                relay: relay.clone(),
                waited: DEFAULT_FIRST_PICTURE_TIMEOUT,
            },
        }
    }
}

impl Connection {
    fn due(&self, protocol: &Protocol, connected_at: Instant) -> Option<(Instant, Due)> {
        if !protocol.handshake_done() {
            return Some((connected_at + DEFAULT_HANDSHAKE_TIMEOUT, Due::Handshake));
        }
        match &self.publish {
            None => Some((self.waiting_since + DEFAULT_PUBLISH_TIMEOUT, Due::Publish)),
            Some(p) if !p.picture_seen => Some((
                p.since + DEFAULT_FIRST_PICTURE_TIMEOUT,
                Due::Picture {
                    relay: p.relay.clone(),
                },
            )),
            Some(_) => None,
        }
    }

    /// Carries out one action of the protocol.
    async fn act(
        &mut self,
        stream: &mut TcpStream,
        protocol: &mut Protocol,
        action: Action,
    ) -> Result<(), IngestError> {
        match action {
            Action::Send(bytes) => send(stream, &bytes).await,
            Action::Publish { stream_key } => {
                let refusal = match self.ask_relay(&stream_key).await {
                    Ok(publishing) => {
                        protocol.accept_publish()?;
                        info!(peer = %self.peer, relay = %publishing.relay, "publish accepted");
                        self.publish = Some(publishing);
                        return Ok(());
                    }
                    Err((code, reason)) => protocol.refuse_publish(code, reason)?,
                };
                match refusal {
                    Action::Refuse { response, reason } => refuse(stream, &response, reason).await,
                    _ => Err(ProtocolError::Closed.into()),
                }
            }
            Action::Tag(tag) => self.forward(tag),
            Action::PublishFinished => {
                // Dropping the feed ends the program's input.
                self.publish = None;
                self.waiting_since = Instant::now();
                Ok(())
            }
            Action::Refuse { response, reason } => refuse(stream, &response, reason).await,
        }
    }

    /// Asks the relay behind `stream_key` to take this publisher; on refusal, the RTMP status
    /// code and the reason.
    async fn ask_relay(&self, stream_key: &str) -> Result<Publishing, (&'static str, String)> {
        let Some(relay) = self.registry.by_stream_key(stream_key) else {
            if self.failures.record(self.peer.ip()) {
                warn!(peer = %self.peer, failures = DEFAULT_MAX_FAILURES, window = ?DEFAULT_FAILURE_WINDOW, "too many unknown stream keys: this address is shut out for the rest of the window");
            }
            tokio::time::sleep(DEFAULT_REFUSAL_DELAY).await;
            return Err(("NetStream.Publish.BadName", "unknown stream key".to_owned()));
        };
        let feed = relay
            .publish(self.peer.to_string())
            .await
            .map_err(|e| ("NetStream.Publish.Denied", e.to_string()))?;
        feed.push(flv::header()).map_err(|e| {
            (
                "NetStream.Publish.Denied",
                format!("relay {}: {e}", relay.id()),
            )
        })?;
        Ok(Publishing {
            relay: relay.id().to_owned(),
            feed,
            since: Instant::now(),
            picture_seen: false,
        })
    }

    fn forward(&mut self, tag: MediaTag) -> Result<(), IngestError> {
        let Some(p) = &mut self.publish else {
            return Ok(());
        };
        if tag.picture {
            p.feed.mark_first_frame(tag.timestamp_ms);
            p.picture_seen = true;
        }
        p.feed.push(tag.bytes).map_err(|source| IngestError::Feed {
            relay: p.relay.clone(),
            source,
        })
    }
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), IngestError> {
    tokio::time::timeout(DEFAULT_WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| IngestError::Timeout("writing to the peer"))?
        .map_err(IngestError::from)
}

/// Tells the peer why (best effort), then ends the connection with `reason`.
async fn refuse(
    stream: &mut TcpStream,
    response: &[u8],
    reason: String,
) -> Result<(), IngestError> {
    if send(stream, response).await.is_ok() {
        let _ = tokio::time::timeout(DEFAULT_WRITE_TIMEOUT, stream.flush()).await;
    }
    Err(IngestError::Refused(reason))
}
