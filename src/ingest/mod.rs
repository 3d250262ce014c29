//! The RTMP ingest server: publishers push to `rtmp://HOST:PORT/live/<stream_key>`.
//!
//! Built on `rml_rtmp`, a sans-IO RTMP implementation: it parses the handshake, chunks and AMF
//! and tells us what the peer asked for, while we own the sockets, the timeouts and the size
//! limits (and can fuzz its parsing on its own). Owns connections and their protocol state; it
//! must not build pipelines: an accepted stream is handed to its relay's actor as FLV.

pub mod flv;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::relay::registry::Registry;
use crate::relay::IngestFeed;

/// The only RTMP application publishers may use.
pub const APP_NAME: &str = "live";
/// A peer must finish the handshake within this time.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with nothing to read for this long is closed.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("rtmp session: {0}")]
    Session(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("publish refused: {0}")]
    Refused(String),
}

/// Accepts RTMP connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let registry = registry.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        match handle(stream, peer, registry, shutdown).await {
                            Ok(()) => debug!(%peer, "rtmp connection closed"),
                            Err(IngestError::Refused(reason)) => {
                                warn!(%peer, reason = %reason, "rtmp publish refused")
                            }
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

/// One connection: handshake, then session events until the peer leaves.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    stream.set_nodelay(true)?;
    let remaining = tokio::time::timeout(DEFAULT_HANDSHAKE_TIMEOUT, handshake(&mut stream))
        .await
        .map_err(|_| IngestError::Timeout("in the handshake"))??;

    let (mut session, results) = ServerSession::new(ServerSessionConfig::new())
        .map_err(|e| IngestError::Session(e.to_string()))?;
    let mut conn = Connection {
        peer,
        registry,
        feed: None,
        stream_key: None,
    };
    conn.apply(&mut stream, &mut session, results).await?;
    let results = session
        .handle_input(&remaining)
        .map_err(|e| IngestError::Session(e.to_string()))?;
    conn.apply(&mut stream, &mut session, results).await?;

    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = tokio::select! {
            read = tokio::time::timeout(DEFAULT_IDLE_TIMEOUT, stream.read(&mut buf)) => {
                read.map_err(|_| IngestError::Timeout("waiting for data"))??
            }
            _ = shutdown.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let results = session
            .handle_input(&buf[..n])
            .map_err(|e| IngestError::Session(e.to_string()))?;
        conn.apply(&mut stream, &mut session, results).await?;
    }
}

/// Runs the server side of the RTMP handshake; returns bytes read past its end.
async fn handshake(stream: &mut TcpStream) -> Result<Vec<u8>, IngestError> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(IngestError::Handshake(
                "peer closed the connection".to_owned(),
            ));
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| IngestError::Handshake(format!("{e:?}")))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                stream.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                stream.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// What one connection has been granted.
struct Connection {
    peer: SocketAddr,
    registry: Arc<Registry>,
    feed: Option<IngestFeed>,
    stream_key: Option<String>,
}

impl Connection {
    /// Sends outbound packets and acts on raised events, in order.
    async fn apply(
        &mut self,
        stream: &mut TcpStream,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
    ) -> Result<(), IngestError> {
        let mut queue: std::collections::VecDeque<_> = results.into();
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    stream.write_all(&packet.bytes).await?;
                }
                ServerSessionResult::RaisedEvent(event) => {
                    match self.on_event(session, event).await? {
                        Outcome::Continue(more) => queue.extend(more),
                        Outcome::Refuse { results, reason } => {
                            // Tell the peer why before closing.
                            for result in results {
                                if let ServerSessionResult::OutboundResponse(packet) = result {
                                    stream.write_all(&packet.bytes).await?;
                                }
                            }
                            let _ = stream.flush().await;
                            return Err(IngestError::Refused(reason));
                        }
                    }
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        session: &mut ServerSession,
        event: ServerSessionEvent,
    ) -> Result<Outcome, IngestError> {
        let session_error =
            |e: rml_rtmp::sessions::ServerSessionError| IngestError::Session(e.to_string());
        let mut refuse = |request_id: u32, code: &str, reason: String| {
            let results = session
                .reject_request(request_id, code, &reason)
                .map_err(session_error)?;
            Ok(Outcome::Refuse { results, reason })
        };
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name == APP_NAME {
                    accepted(session.accept_request(request_id))
                } else {
                    refuse(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        format!(
                            "unknown application {app_name:?}; publish to /{APP_NAME}/<stream_key>"
                        ),
                    )
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name: _,
                stream_key,
                mode: _,
            } => {
                if self.feed.is_some() {
                    return refuse(
                        request_id,
                        "NetStream.Publish.BadName",
                        "a second publish on one connection".to_owned(),
                    );
                }
                let Some(relay) = self.registry.by_stream_key(&stream_key) else {
                    return refuse(
                        request_id,
                        "NetStream.Publish.BadName",
                        "unknown stream key".to_owned(),
                    );
                };
                match relay.publish(self.peer.to_string()).await {
                    Ok(feed) => {
                        feed.push(flv::header())
                            .map_err(|e| IngestError::Session(e.to_string()))?;
                        self.feed = Some(feed);
                        self.stream_key = Some(stream_key);
                        info!(peer = %self.peer, relay = %relay.id(), "publish accepted");
                        accepted(session.accept_request(request_id))
                    }
                    Err(e) => refuse(request_id, "NetStream.Publish.Denied", e.to_string()),
                }
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.forward(flv::TAG_VIDEO, timestamp.value, &data)?;
                Ok(Outcome::Continue(Vec::new()))
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.forward(flv::TAG_AUDIO, timestamp.value, &data)?;
                Ok(Outcome::Continue(Vec::new()))
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                // Dropping the feed ends the program's input.
                self.feed = None;
                Ok(Outcome::Continue(Vec::new()))
            }
            ServerSessionEvent::ReleaseStreamRequested { request_id, .. } => {
                accepted(session.accept_request(request_id))
            }
            other => {
                debug!(peer = %self.peer, event = ?other, "rtmp event ignored");
                Ok(Outcome::Continue(Vec::new()))
            }
        }
    }

    fn forward(&mut self, kind: u8, timestamp: u32, data: &[u8]) -> Result<(), IngestError> {
        let Some(feed) = &self.feed else {
            return Ok(());
        };
        if flv::is_picture(kind, data) {
            feed.mark_first_frame(timestamp);
        }
        feed.push(flv::tag(kind, timestamp, data)).map_err(|e| {
            IngestError::Session(format!(
                "stream {:?}: {e}",
                self.stream_key.as_deref().unwrap_or_default()
            ))
        })
    }
}

/// What the connection does after an event.
enum Outcome {
    Continue(Vec<ServerSessionResult>),
    /// Send `results` (the rejection), then close with `reason`.
    Refuse {
        results: Vec<ServerSessionResult>,
        reason: String,
    },
}

fn accepted(
    results: Result<Vec<ServerSessionResult>, rml_rtmp::sessions::ServerSessionError>,
) -> Result<Outcome, IngestError> {
    results
        .map(Outcome::Continue)
        .map_err(|e| IngestError::Session(e.to_string()))
}
