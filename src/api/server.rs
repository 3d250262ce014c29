//! The API's listener: accepts connections, holds them to the caps, and serves each with
//! hyper's HTTP/1.1 under a header-read timeout. warp 0.4's own server sets no timer (so no
//! timeout) and takes every connection; this loop replaces it and serves the same filter.
//!
//! Owns the listening socket, the table of open connections and their limits
//! ([`HttpLimits`], `[server]` in the config). It must not know about routes.
//!
//! - A request head must be complete within `header_timeout` of the connection opening, or of
//!   the last response on it ending: the same timer closes slow-header clients and idle
//!   kept-alive connections.
//! - At most `max_connections_per_address` from one address: over it, a new connection is
//!   closed at accept, before anything is read.
//! - At most `max_connections` in all: when full, a new connection takes the slot of a
//!   connection that is waiting for a request head (none in flight), from the address that
//!   holds the most, oldest first; with no such connection, the new one is closed at accept.
//!   A flood of slow clients therefore cannot keep `/healthz` or an operator out: theirs are
//!   the connections given up.
//!
//! Connections closed at accept are logged in one line per [`CLOSED_LOG_INTERVAL`] at most.
//! When `shutdown` completes, the listener closes and the loop waits for open connections to
//! finish their responses (live event streams end first: see [`crate::events::EventBus::close`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use warp::reply::Response;
use warp::Filter;

use super::tls::Tls;

/// A request head must be complete within this (`server.header_timeout_seconds`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once (`server.max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections open at once from one address (`server.max_connections_per_address`).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Given-up connections whose sockets may still be open at once, past the cap.
const EVICTIONS_PENDING: usize = 16;
/// How long a given-up connection counts as pending at most.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// At most one log line per this interval about connections closed at accept.
pub const CLOSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the API's listener lets clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// One open connection.
struct Conn {
    address: IpAddr,
    /// Requests whose response has not ended; 0 while it waits for a request head.
    in_flight: Arc<AtomicUsize>,
    /// Closes it to give its slot away; it answers on the sender it is given once its socket
    /// is closed.
    evict: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    Full,
}

/// Every open connection, by the order they came in.
#[derive(Default)]
struct Table {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
    per_address: HashMap<IpAddr, usize>,
    /// Closed at accept, and given up for a newcomer, since the last log line.
    refused: usize,
    evicted: usize,
    last_log: Option<Instant>,
}

/// A connection let in.
struct Admitted {
    id: u64,
    in_flight: Arc<AtomicUsize>,
    /// Fires when its slot is given to a newcomer, with where to say it has closed.
    evicted: oneshot::Receiver<oneshot::Sender<()>>,
    /// When it took the slot of another, fires once that one's socket is closed.
    victim_closed: Option<oneshot::Receiver<()>>,
}

impl Table {
    /// Takes a slot for a connection from `address`, giving up another's if it must.
    fn admit(&mut self, address: IpAddr, limits: &HttpLimits) -> Result<Admitted, Refusal> {
        if self.per_address.get(&address).copied().unwrap_or(0)
            >= limits.max_connections_per_address
        {
            return Err(Refusal::PerAddress);
        }
        let mut victim_closed = None;
        if self.conns.len() >= limits.max_connections {
            let victim = self
                .conns
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                // The most connections from its address first; among them, the oldest.
                .max_by_key(|(id, c)| (self.per_address.get(&c.address), std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
                .ok_or(Refusal::Full)?;
            if let Some(mut conn) = self.release(victim) {
                if let Some(evict) = conn.evict.take() {
                    let (closed, closed_rx) = oneshot::channel();
                    if evict.send(closed).is_ok() {
                        victim_closed = Some(closed_rx);
                    }
                }
                self.evicted += 1;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (evict, evicted) = oneshot::channel();
        self.conns.insert(
            id,
            Conn {
                address,
                in_flight: in_flight.clone(),
                evict: Some(evict),
            },
        );
        *self.per_address.entry(address).or_default() += 1;
        Ok(Admitted {
            id,
            in_flight,
            evicted,
            victim_closed,
        })
    }

    /// Frees connection `id`'s slot (at its end, or given up).
    fn release(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&conn.address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&conn.address);
            }
        }
        Some(conn)
    }

    /// Logs what was closed at accept or given up, at most once per [`CLOSED_LOG_INTERVAL`].
    fn log_closed(&mut self, limits: &HttpLimits) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|last| now - last < CLOSED_LOG_INTERVAL)
        {
            return;
        }
        if self.refused + self.evicted == 0 {
            return;
        }
        warn!(
            refused = self.refused,
            given_up = self.evicted,
            open = self.conns.len(),
            max_connections = limits.max_connections,
            max_connections_per_address = limits.max_connections_per_address,
            "http connections closed at accept or given up for new ones: the connection caps are reached"
        );
        self.refused = 0;
        self.evicted = 0;
        self.last_log = Some(now);
    }
}

/// A connection's slot, freed when its task ends.
struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table
            .lock()
            .expect("http connection table lock poisoned")
            .release(self.id);
    }
}

/// One request in flight on its connection, until its response ends.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection's TLS handshake ended.
enum Handshake {
    Done(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    /// Refused or timed out (logged).
    Failed,
    /// Given up for a newcomer first: the handshake and its socket are dropped by the time
    /// this is returned, so the sender can say the socket is closed.
    GivenUp(oneshot::Sender<()>),
}

/// A TLS handshake with `peer` under `timeout`, unless the connection is given up first.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    evicted: &mut oneshot::Receiver<oneshot::Sender<()>>,
    peer: std::net::SocketAddr,
) -> Handshake {
    let accept = tokio::time::timeout(timeout, acceptor.accept(stream));
    tokio::select! {
        done = accept => match done {
            Ok(Ok(stream)) => Handshake::Done(Box::new(stream)),
            Ok(Err(e)) => {
                debug!(peer = %peer, error = %e, "tls handshake failed");
                Handshake::Failed
            }
            Err(_) => {
                debug!(peer = %peer, "tls handshake not done within the header timeout");
                Handshake::Failed
            }
        },
        Ok(closed) = evicted => Handshake::GivenUp(closed),
    }
}

/// A client's byte stream: the socket, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A response body that holds its request's [`InFlight`] until hyper drops it, and passes on
/// everything else, the size hint included (hyper writes `Content-Length` from it).
struct Counted<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The API's bound socket and how it is served.
pub struct Listener {
    pub socket: TcpListener,
    pub limits: HttpLimits,
    /// HTTPS only, with this certificate; plain HTTP without.
    pub tls: Option<Tls>,
}

/// Serves `filter` on `listener` under its limits until `shutdown` completes, then waits for
/// the open connections to end.
pub async fn run<F>(
    listener: Listener,
    filter: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let Listener {
        socket: listener,
        limits,
        tls,
    } = listener;
    let table = Arc::new(Mutex::new(Table::default()));
    let evictions = Arc::new(tokio::sync::Semaphore::new(EVICTIONS_PENDING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = {
            let mut table = table.lock().expect("http connection table lock poisoned");
            let admitted = table.admit(peer.ip(), &limits);
            if admitted.is_err() {
                table.refused += 1;
            }
            table.log_closed(&limits);
            admitted
        };
        let Admitted {
            id,
            in_flight,
            evicted,
            victim_closed,
        } = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                debug!(peer = %peer, ?refusal, "http connection closed at accept");
                continue;
            }
        };
        // The cap holds in sockets, not only in the table, within EVICTIONS_PENDING: a given-up
        // connection closes its socket in its own task, a moment later, and the loop accepts
        // no more while that many have not yet (or EVICTION_WAIT has not passed).
        if let Some(closed) = victim_closed {
            if let Ok(permit) = evictions.clone().acquire_owned().await {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EVICTION_WAIT, closed).await;
                    drop(permit);
                });
            }
        }
        let slot = Slot {
            table: table.clone(),
            id,
        };
        let service = TowerToHyperService::new(warp::service(filter.clone()));
        let service = hyper::service::service_fn(move |request| {
            let request_in_flight = InFlight::new(in_flight.clone());
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await?;
                // Counted until hyper drops the body: once the last byte is written, or the
                // connection is gone.
                Ok::<_, Infallible>(response.map(|inner| Counted {
                    inner,
                    _in_flight: request_in_flight,
                }))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(Tls::acceptor);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let mut evicted = evicted;
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(stream),
                // The handshake is held to the header timeout too.
                Some(acceptor) => {
                    match handshake(acceptor, stream, header_timeout, &mut evicted, peer).await {
                        Handshake::Done(stream) => stream,
                        Handshake::Failed => return,
                        Handshake::GivenUp(closed) => {
                            let _ = closed.send(());
                            return;
                        }
                    }
                }
            };
            let mut connection =
                Box::pin(watcher.watch(http.serve_connection(TokioIo::new(io), service)));
            let given_up = tokio::select! {
                served = &mut connection => {
                    if let Err(e) = served {
                        debug!(peer = %peer, error = %e, "http connection ended with an error");
                    }
                    None
                }
                Ok(closed) = &mut evicted => Some(closed),
            };
            if let Some(closed) = given_up {
                drop(connection);
                debug!(peer = %peer, "http connection waiting for a request given up for a new one");
                let _ = closed.send(());
            }
        });
    }
    drop(listener);
    info!("http listener closed; waiting for open responses to end");
    graceful.shutdown().await;
}

/// An accept that failed. Out of file descriptors (`EMFILE`), waiting a little lets some
/// close; a connection reset before it was taken needs nothing.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    warn!(error = %e, "http accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        max_connections: 4,
        max_connections_per_address: 3,
        header_timeout: DEFAULT_HEADER_TIMEOUT,
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn one_address_is_held_to_its_cap() {
        let mut table = Table::default();
        for _ in 0..3 {
            table.admit(ip(2), &LIMITS).expect("under the cap");
        }
        assert_eq!(table.admit(ip(2), &LIMITS).err(), Some(Refusal::PerAddress));
        table.admit(ip(1), &LIMITS).expect("another address");
    }

    #[test]
    fn when_full_a_waiting_connection_of_the_biggest_address_gives_way() {
        let mut table = Table::default();
        let mut first = table.admit(ip(2), &LIMITS).expect("room");
        table.admit(ip(2), &LIMITS).expect("room");
        let busy = table.admit(ip(3), &LIMITS).expect("room").in_flight;
        table.admit(ip(3), &LIMITS).expect("room");
        busy.fetch_add(1, Ordering::AcqRel);
        // Full: 127.0.0.2 and .3 hold two each; .2's oldest waits, so it goes, and the
        // newcomer hears when it has closed.
        let mut newcomer = table
            .admit(ip(1), &LIMITS)
            .expect("a waiting one gives way");
        let closed = first.evicted.try_recv().expect("told to close");
        closed.send(()).expect("the newcomer waits");
        assert!(newcomer
            .victim_closed
            .as_mut()
            .expect("waits")
            .try_recv()
            .is_ok());
        let first = first.id;
        assert!(!table.conns.contains_key(&first));
        assert_eq!(table.conns.len(), 4);
        assert_eq!(table.evicted, 1);
    }

    #[test]
    fn when_every_connection_is_busy_the_new_one_is_refused() {
        let mut table = Table::default();
        for n in 0..4 {
            let admitted = table.admit(ip(n), &LIMITS).expect("room");
            admitted.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        assert_eq!(table.admit(ip(9), &LIMITS).err(), Some(Refusal::Full));
    }
}
