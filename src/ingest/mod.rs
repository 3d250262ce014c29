//! The RTMP ingest server: publishers push to `rtmp://HOST:PORT/live/<stream_key>`.
//!
//! Owns the listening socket, each connection's socket and its deadlines, and what the
//! server as a whole lets peers take (connections, failed publishes, bytes before a publish);
//! the protocol itself lives in a sans-IO core that the fuzz target drives without sockets:
//! [`protocol`] (handshake, session, publish decisions and the limits on what a peer may
//! send), `gate` (chunk and AMF checks before `rml_rtmp` parses anything), [`flv`] (FLV
//! framing) and [`harness`] (the fuzz target's driver and a recorded publisher). This module
//! must not build pipelines: an accepted stream is handed to its relay's actor as FLV.
//!
//! A connection answers to a deadline at each stage: the handshake within
//! [`DEFAULT_HANDSHAKE_TIMEOUT`] of connecting, an accepted publish within
//! [`DEFAULT_PUBLISH_TIMEOUT`], a first video picture within
//! [`DEFAULT_FIRST_PICTURE_TIMEOUT`] of the publish (a publisher of audio alone is dropped:
//! the program would wait for video for ever), and then data at least every
//! [`DEFAULT_IDLE_TIMEOUT`]. A peer that misbehaves loses its own connection; nothing else.
//!
//! Floods are bounded ([`IngestSettings`], `[ingest]` in the config): at most
//! `max_connections` open at once and `max_connections_per_address` from one address (over
//! either, a connection is closed at accept, before anything is read); a connection may send
//! `max_bytes_before_publish` before its publish is accepted, and all such connections
//! together `max_bytes_before_publish_total`. A publish with a stream key no relay has is
//! answered only after [`DEFAULT_REFUSAL_DELAY`]. Every failed publish counts against its
//! address, on whichever connection it came: an address with `max_failed_publishes` of them
//! within [`DEFAULT_FAILURE_WINDOW`] is shut out for that long. Its new connections are closed
//! at accept, and a publish on a connection it already has is refused: guessing keys is slow.
//! Connections closed at accept are logged in one line per [`CLOSED_LOG_INTERVAL`] at most.

pub mod flv;
mod gate;
pub mod harness;
pub mod hold;
mod hook;
pub mod protocol;
pub mod srt;
pub mod ts;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::IngestSettings;
use crate::pipeline::input::Container;
use crate::relay::registry::Registry;
use crate::relay::{FeedClosed, IngestFeed, Seat, SeatCall};
use hold::Hold;
pub use protocol::APP_NAME;
use protocol::{Action, Limits, MediaTag, Protocol, ProtocolError};

/// A peer must finish the handshake within this time of connecting.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer must have a publish accepted within this time of connecting (or of ending its last
/// publish on the same connection). A real publisher needs well under a second.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// A publisher must send a video picture within this time of its publish being accepted.
pub const DEFAULT_FIRST_PICTURE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with nothing to read for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write the peer does not take within this time closes the connection.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish with an unknown stream key waits for its refusal.
pub const DEFAULT_REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// Connections open at once (`ingest.max_connections`): a tournament has tens of publishers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one address (`ingest.max_connections_per_address`).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// Failed publishes from one address within [`DEFAULT_FAILURE_WINDOW`] before it is shut out
/// (`ingest.max_failed_publishes`).
pub const DEFAULT_MAX_FAILED_PUBLISHES: u32 = 10;
/// The window failed publishes are counted in, and how long a shut-out lasts.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Bytes one connection may send before its publish is accepted
/// (`ingest.max_bytes_before_publish`); a real publisher sends about 4 KiB.
pub const DEFAULT_MAX_BYTES_BEFORE_PUBLISH: usize = 64 << 10;
/// Bytes all connections without an accepted publish may have sent, together
/// (`ingest.max_bytes_before_publish_total`).
pub const DEFAULT_MAX_BYTES_BEFORE_PUBLISH_TOTAL: usize = 4 << 20;
/// At most one log line per this interval about connections closed at accept.
pub const CLOSED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A publisher's reads.
const READ_BUFFER: usize = 64 * 1024;
/// Reads of a connection without an accepted publish (its commands are a few hundred bytes).
const PENDING_READ_BUFFER: usize = 4 * 1024;

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
    #[error("publish refused: this address is shut out for too many failed publishes")]
    ShutOut,
    #[error("sent more than {limit} bytes before a publish was accepted")]
    TooMuchBeforePublish { limit: usize },
    #[error(
        "connections without an accepted publish have sent {limit} bytes between them, the \
         server's budget"
    )]
    PendingBudget { limit: usize },
    #[error("relay {relay}: no video picture within {waited:?} of the publish")]
    NoPicture { relay: String, waited: Duration },
    #[error("relay {relay}: caster {caster}'s turn is over or they were kicked")]
    TurnOver { relay: String, caster: String },
    #[error("relay {relay}: {source}")]
    Feed {
        relay: String,
        #[source]
        source: FeedClosed,
    },
}

/// One address's failed publishes.
#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    count: u32,
    /// When the window they are counted in began.
    since: Instant,
    /// Reached the limit: shut out until then.
    shut_out_until: Option<Instant>,
}

/// Failed publishes per address, over every connection from it.
struct Failures {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, FailureRecord>>,
}

impl Failures {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failed publish; `true` when the address has just been shut out.
    fn record(&self, ip: IpAddr) -> bool {
        self.record_at(ip, Instant::now())
    }

    fn record_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.map.lock().expect("failures lock poisoned");
        let window = self.window;
        map.retain(|_, r| {
            now.duration_since(r.since) < window || r.shut_out_until.is_some_and(|t| now < t)
        });
        let record = map.entry(ip).or_insert(FailureRecord {
            count: 0,
            since: now,
            shut_out_until: None,
        });
        if record.shut_out_until.is_some_and(|t| now >= t) {
            *record = FailureRecord {
                count: 0,
                since: now,
                shut_out_until: None,
            };
        }
        record.count += 1;
        if record.count >= self.max && record.shut_out_until.is_none() {
            record.shut_out_until = Some(now + window);
            return true;
        }
        false
    }

    /// Whether the address is shut out now.
    fn shut_out(&self, ip: IpAddr) -> bool {
        self.shut_out_at(ip, Instant::now())
    }

    fn shut_out_at(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.map.lock().expect("failures lock poisoned");
        map.get(&ip)
            .and_then(|r| r.shut_out_until)
            .is_some_and(|until| now < until)
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// `max_connections` are open.
    Server,
    /// `max_connections_per_address` are open from its address.
    Address,
}

/// The connections open now, in all and per address.
#[derive(Default)]
struct Slots {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// What every connection of one server shares.
struct Shared {
    settings: IngestSettings,
    /// Asks the relays' publish hooks about keys nobody has.
    hooks: hook::Hooks,
    registry: Arc<Registry>,
    failures: Failures,
    slots: Mutex<Slots>,
    /// Bytes sent by connections without an accepted publish, across the server.
    pending_bytes: AtomicUsize,
}

impl Shared {
    fn new(settings: IngestSettings, registry: Arc<Registry>) -> Self {
        Self {
            hooks: hook::Hooks::default(),
            failures: Failures::new(settings.max_failed_publishes, DEFAULT_FAILURE_WINDOW),
            settings,
            registry,
            slots: Mutex::default(),
            pending_bytes: AtomicUsize::new(0),
        }
    }

    /// A place for a connection from `ip`, given back when the [`Slot`] drops.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut slots = self.slots.lock().expect("slots lock poisoned");
        if slots.total >= self.settings.max_connections {
            return Err(Full::Server);
        }
        let from_ip = slots.per_address.entry(ip).or_insert(0);
        if *from_ip >= self.settings.max_connections_per_address {
            return Err(Full::Address);
        }
        *from_ip += 1;
        slots.total += 1;
        Ok(Slot {
            shared: self.clone(),
            ip,
            pending: 0,
        })
    }
}

/// One open connection's place among the caps, and the bytes it has sent without an
/// accepted publish.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    pending: usize,
}

impl Slot {
    /// Counts `n` more bytes read before a publish was accepted, against this connection's
    /// allowance and the server's budget.
    fn take_pending(&mut self, n: usize) -> Result<(), IngestError> {
        let settings = &self.shared.settings;
        let limit = settings.max_bytes_before_publish;
        if self.pending + n > limit {
            return Err(IngestError::TooMuchBeforePublish { limit });
        }
        let total = settings.max_bytes_before_publish_total;
        self.shared
            .pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= total).then_some(used + n)
            })
            .map_err(|_| IngestError::PendingBudget { limit: total })?;
        self.pending += n;
        Ok(())
    }

    /// The publish was accepted (or the connection ends): its bytes leave the budget.
    fn release_pending(&mut self) {
        let held = std::mem::take(&mut self.pending);
        self.shared.pending_bytes.fetch_sub(held, Ordering::AcqRel);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_pending();
        let mut slots = self.shared.slots.lock().expect("slots lock poisoned");
        slots.total -= 1;
        if let Some(n) = slots.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                slots.per_address.remove(&self.ip);
            }
        }
    }
}

/// Connections closed at accept since the last line about them: logged at most once per
/// [`CLOSED_LOG_INTERVAL`], with counts, never one line per connection.
#[derive(Default)]
struct ClosedAtAccept {
    server_full: u64,
    address_full: u64,
    shut_out: u64,
    last_address: Option<IpAddr>,
    logged_at: Option<Instant>,
}

impl ClosedAtAccept {
    fn count(&mut self, ip: IpAddr, why: Option<Full>) {
        match why {
            Some(Full::Server) => self.server_full += 1,
            Some(Full::Address) => self.address_full += 1,
            None => self.shut_out += 1,
        }
        self.last_address = Some(ip);
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= CLOSED_LOG_INTERVAL)
        {
            self.log();
        }
    }

    /// When the counts not yet logged are due.
    fn due(&self) -> Option<Instant> {
        let at = self.logged_at?;
        (self.server_full + self.address_full + self.shut_out > 0)
            .then_some(at + CLOSED_LOG_INTERVAL)
    }

    fn log(&mut self) {
        if let Some(ip) = self.last_address.take() {
            warn!(
                over_max_connections = self.server_full,
                over_max_connections_per_address = self.address_full,
                shut_out = self.shut_out,
                last_address = %ip,
                every = ?CLOSED_LOG_INTERVAL,
                "rtmp connections closed at accept (counts since the last such line)"
            );
        }
        *self = Self {
            logged_at: Some(Instant::now()),
            ..Self::default()
        };
    }
}

/// Accepts RTMP connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    settings: IngestSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared::new(settings, registry));
    let mut closed = ClosedAtAccept::default();
    loop {
        let log_due = closed.due();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = if shared.failures.shut_out(peer.ip()) {
                        Err(None)
                    } else {
                        shared.admit(peer.ip()).map_err(Some)
                    };
                    match admitted {
                        Ok(slot) => spawn_connection(stream, peer, slot, shutdown.clone()),
                        Err(why) => {
                            // Closed before anything is read: no buffers, no task.
                            drop(stream);
                            closed.count(peer.ip(), why);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::time::sleep_until(log_due.unwrap_or_else(Instant::now)), if log_due.is_some() => {
                closed.log();
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        match handle(stream, peer, slot, shutdown).await {
            Ok(()) => debug!(%peer, "rtmp connection closed"),
            Err(IngestError::Refused(reason)) => {
                warn!(%peer, reason = %reason, "rtmp publish refused")
            }
            Err(e @ IngestError::ShutOut) => debug!(%peer, error = %e, "rtmp connection ended"),
            Err(e @ IngestError::TurnOver { .. }) => {
                info!(%peer, reason = %e, "caster disconnected")
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

/// One connection: bytes in through the protocol, its actions carried out, until the peer
/// leaves, breaks a rule or misses a deadline.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    stream.set_nodelay(true)?;
    let connected_at = Instant::now();
    let mut protocol = Protocol::new(Limits::default());
    let mut conn = Connection {
        peer,
        shared: slot.shared.clone(),
        slot,
        publish: None,
        waiting_since: connected_at,
    };
    let mut buf = Vec::new();
    loop {
        let now = Instant::now();
        let due = conn.due(&protocol, connected_at);
        if let Some((at, due)) = &due {
            // Checked here too: a peer sending steadily never lets a read time out.
            if now >= *at {
                return Err(due.expired());
            }
        }
        // Small reads until a publish is accepted: an idle connection holds little.
        let size = if conn.publish.is_some() {
            READ_BUFFER
        } else {
            PENDING_READ_BUFFER
        };
        if buf.len() != size {
            buf = vec![0u8; size];
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
            call = next_call(conn.publish.as_mut().and_then(|p| p.seat.as_mut())) => {
                conn.on_call(call)?;
                continue;
            }
            _ = shutdown.changed() => {
                // Given up first, before the feed ends: a queued caster keeps their place.
                if let Some(seat) = conn.publish.as_mut().and_then(|p| p.seat.take()) {
                    seat.daemon_stopping();
                }
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if conn.publish.is_none() {
            // Counted before the protocol buffers any of it.
            conn.slot.take_pending(n)?;
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
    shared: Arc<Shared>,
    slot: Slot,
    publish: Option<Publishing>,
    /// Since when the connection has been without a publish.
    waiting_since: Instant,
}

/// An accepted publish.
struct Publishing {
    relay: String,
    /// Into the program, while on air. Declared before `seat`, so it drops first: the relay
    /// learns that the feed ended, then that the caster left.
    feed: Option<IngestFeed>,
    /// A queue relay's caster's place in line.
    seat: Option<Seat>,
    /// A waiting caster's latest pictures.
    hold: Hold,
    since: Instant,
    picture_seen: bool,
}

/// The relay's next call to a queued caster's connection (RTMP or SRT); pending for ever
/// without a seat.
async fn next_call(seat: Option<&mut Seat>) -> Option<SeatCall> {
    match seat {
        Some(seat) => seat.next().await,
        None => std::future::pending().await,
    }
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
                let ip = self.peer.ip();
                // Checked at every publish, not only at accept: a connection opened before
                // the address was shut out gets no more guesses than a new one.
                if self.shared.failures.shut_out(ip) {
                    let refusal = protocol.refuse_publish(
                        "NetStream.Publish.Denied",
                        "too many failed publishes from this address".to_owned(),
                    )?;
                    if let Action::Refuse { response, reason } = refusal {
                        let _ = refuse(stream, &response, reason).await;
                    }
                    return Err(IngestError::ShutOut);
                }
                let refusal = match self.ask_relay(&stream_key).await {
                    Ok(publishing) => {
                        protocol.accept_publish()?;
                        info!(peer = %self.peer, relay = %publishing.relay, "publish accepted");
                        self.publish = Some(publishing);
                        self.slot.release_pending();
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

    /// Asks the relay behind `stream_key` (a relay's key, a caster's, or one a relay's
    /// publish hook admits) to take this publisher; on refusal, the RTMP status code and the
    /// reason. Every refusal counts against the peer's address.
    async fn ask_relay(&self, stream_key: &str) -> Result<Publishing, (&'static str, String)> {
        let registry = &self.shared.registry;
        let found = match registry.by_publish_key(stream_key) {
            Some(found) => Some(found),
            None => {
                let hooked = registry.hooks();
                self.shared.hooks.ask(&hooked, stream_key, self.peer).await
            }
        };
        let Some((relay, caster)) = found else {
            // Counted before the delay: guesses arriving meanwhile already see a shut-out.
            self.count_failure();
            tokio::time::sleep(DEFAULT_REFUSAL_DELAY).await;
            return Err(("NetStream.Publish.BadName", "unknown stream key".to_owned()));
        };
        let taken = async {
            let admitted = relay
                .publish(self.peer.to_string(), caster, Container::Flv, None)
                .await
                .map_err(|e| ("NetStream.Publish.Denied", e.to_string()))?;
            if let Some(feed) = &admitted.feed {
                feed.push(flv::header()).map_err(|e| {
                    (
                        "NetStream.Publish.Denied",
                        format!("relay {}: {e}", relay.id()),
                    )
                })?;
            }
            if let Some(place) = admitted.seat.as_ref().and_then(Seat::place) {
                info!(peer = %self.peer, relay = %relay.id(), place, "caster waits in the queue");
            }
            Ok(Publishing {
                relay: relay.id().to_owned(),
                feed: admitted.feed,
                seat: admitted.seat,
                hold: Hold::default(),
                since: Instant::now(),
                picture_seen: false,
            })
        }
        .await;
        if taken.is_err() {
            self.count_failure();
        }
        taken
    }

    /// The relay called this queued caster: to the air (their held pictures first), or off.
    fn on_call(&mut self, call: Option<SeatCall>) -> Result<(), IngestError> {
        let Some(p) = &mut self.publish else {
            return Ok(());
        };
        let caster = || {
            p.seat
                .as_ref()
                .map_or_else(String::new, |s| s.name().to_owned())
        };
        let Some(SeatCall::OnAir(feed)) = call else {
            return Err(IngestError::TurnOver {
                relay: p.relay.clone(),
                caster: caster(),
            });
        };
        let (tags, latest) = p.hold.take();
        // The latest held picture is dated now; the ones before it only prime the decoder.
        if let Some(timestamp_ms) = latest {
            feed.mark_first_frame(timestamp_ms);
        }
        let feed_error = |source| IngestError::Feed {
            relay: p.relay.clone(),
            source,
        };
        feed.push(flv::header()).map_err(feed_error)?;
        for tag in tags {
            feed.push(tag).map_err(feed_error)?;
        }
        debug!(peer = %self.peer, relay = %p.relay, "held caster handed to the program");
        p.feed = Some(feed);
        Ok(())
    }

    /// A failed publish from this connection's address; warns once when it shuts it out.
    fn count_failure(&self) {
        let ip = self.peer.ip();
        if self.shared.failures.record(ip) {
            warn!(
                address = %ip,
                failed_publishes = self.shared.failures.max,
                window = ?DEFAULT_FAILURE_WINDOW,
                "too many failed publishes: this address is shut out for the window"
            );
        }
    }

    fn forward(&mut self, tag: MediaTag) -> Result<(), IngestError> {
        let Some(p) = &mut self.publish else {
            return Ok(());
        };
        if tag.picture {
            p.picture_seen = true;
        }
        let Some(feed) = &p.feed else {
            p.hold.keep(tag.bytes, tag.picture, tag.timestamp_ms);
            return Ok(());
        };
        if tag.picture {
            feed.mark_first_frame(tag.timestamp_ms);
        }
        feed.push(tag.bytes).map_err(|source| IngestError::Feed {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::RelayContext;

    fn shared(settings: IngestSettings) -> Arc<Shared> {
        let registry = Registry::new(
            RelayContext {
                program: Default::default(),
                hls: Default::default(),
                hls_root: std::env::temp_dir(),
                slates: Default::default(),
                events: Default::default(),
                queues_dir: None,
                recordings_root: None,
                record: Default::default(),
                graphics_dir: None,
            },
            None,
        );
        Arc::new(Shared::new(settings, Arc::new(registry)))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn connections_over_either_cap_are_turned_away() {
        let shared = shared(IngestSettings {
            max_connections: 5,
            max_connections_per_address: 3,
            ..IngestSettings::default()
        });
        let mut first: Vec<Slot> = (0..3).map(|_| shared.admit(ip(2)).unwrap()).collect();
        assert_eq!(shared.admit(ip(2)).err(), Some(Full::Address));
        let others: Vec<Slot> = (0..2).map(|_| shared.admit(ip(3)).unwrap()).collect();
        assert_eq!(shared.admit(ip(4)).err(), Some(Full::Server));
        // A closed connection gives its place back, to its own address or another.
        first.pop();
        let again = shared.admit(ip(2)).expect("a place is free again");
        drop((first, others, again));
        let slots = shared.slots.lock().unwrap();
        assert_eq!(slots.total, 0);
        assert!(slots.per_address.is_empty(), "no entry left behind");
    }

    #[test]
    fn bytes_before_a_publish_are_bounded_per_connection_and_in_all() {
        let shared = shared(IngestSettings {
            max_bytes_before_publish: 10_000,
            max_bytes_before_publish_total: 25_000,
            ..IngestSettings::default()
        });
        let mut a = shared.admit(ip(2)).unwrap();
        let mut b = shared.admit(ip(3)).unwrap();
        let mut c = shared.admit(ip(4)).unwrap();
        a.take_pending(6_000).unwrap();
        assert!(matches!(
            a.take_pending(4_001),
            Err(IngestError::TooMuchBeforePublish { limit: 10_000 })
        ));
        a.take_pending(4_000).unwrap();
        b.take_pending(10_000).unwrap();
        assert!(matches!(
            c.take_pending(5_001),
            Err(IngestError::PendingBudget { limit: 25_000 })
        ));
        // A publish accepted, or a connection gone, frees its share.
        a.release_pending();
        c.take_pending(10_000).unwrap();
        drop(b);
        assert_eq!(shared.pending_bytes.load(Ordering::Acquire), 10_000);
        drop(c);
        assert_eq!(shared.pending_bytes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn failed_publishes_shut_an_address_out_for_the_window() {
        let failures = Failures::new(3, DEFAULT_FAILURE_WINDOW);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(!failures.record_at(ip(2), at(0)));
        assert!(!failures.record_at(ip(2), at(1)));
        assert!(!failures.shut_out_at(ip(2), at(1)));
        assert!(
            failures.record_at(ip(2), at(2)),
            "the third failure shuts it out"
        );
        assert!(
            !failures.record_at(ip(2), at(3)),
            "shut out once, warned once"
        );
        assert!(failures.shut_out_at(ip(2), at(3)));
        assert!(
            !failures.shut_out_at(ip(3), at(3)),
            "another address is not"
        );
        // For a whole window from the shut-out, then no longer.
        assert!(failures.shut_out_at(ip(2), at(61)));
        assert!(!failures.shut_out_at(ip(2), at(62)));
        // The count starts again after a shut-out.
        assert!(!failures.record_at(ip(2), at(62)));
        assert!(!failures.shut_out_at(ip(2), at(62)));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_add_up() {
        let failures = Failures::new(3, DEFAULT_FAILURE_WINDOW);
        let t0 = Instant::now();
        failures.record_at(ip(2), t0);
        failures.record_at(ip(2), t0 + Duration::from_secs(1));
        assert!(!failures.record_at(ip(2), t0 + DEFAULT_FAILURE_WINDOW));
        assert!(!failures.shut_out_at(ip(2), t0 + DEFAULT_FAILURE_WINDOW));
    }
}
