//! One RTMP connection's protocol without sockets: bytes from the peer go in, [`Action`]s come
//! out (bytes to send, a publish to decide, FLV tags for the relay, a refusal). It runs the
//! handshake and `rml_rtmp`'s server session and puts our limits in front of them.
//!
//! Owns the protocol state of one connection, the limits on what a peer may send and the
//! guard around every call into `rml_rtmp`. It must not do I/O, keep time or talk to relays:
//! the server in `ingest/mod.rs` does that, and the fuzz target (`fuzz/fuzz_targets/ingest.rs`)
//! drives this module alone through [`harness::drive`](super::harness::drive). It must not
//! parse chunks or AMF itself either: the gate (`ingest/gate.rs`) does.
//!
//! `rml_rtmp` trusts its input more than a server facing the internet may. Before a read
//! reaches the session, the gate frames the same bytes with the same chunk deserializer and
//! refuses what the session would choke on: a chunk size of 0, a message still incomplete
//! after [`DEFAULT_MAX_MESSAGE_BYTES`], AMF messages over [`DEFAULT_MAX_COMMAND_BYTES`] or
//! nested deeper than [`DEFAULT_MAX_AMF_DEPTH`], and commands too short for `rml_rtmp`.
//!
//! Every call into `rml_rtmp` is wrapped in `catch_unwind` besides: a panic inside it (it has
//! arithmetic that overflows on crafted chunk streams) ends this connection, never the daemon.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult,
};
use tracing::debug;

use super::flv;
use super::gate::Gate;

/// The only RTMP application publishers may use.
pub const APP_NAME: &str = "live";
/// Bytes a peer may send towards one message before it completes (counted per read of at most
/// [`DEFAULT_MAX_READ`]): a generous key frame. RTMP's own cap is 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Largest AMF command or data message (connect, publish, onMetaData are a few hundred bytes).
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 64 << 10;
/// Deepest nesting of AMF objects and arrays in one message.
pub const DEFAULT_MAX_AMF_DEPTH: usize = 16;
/// Bytes handed to the parsers in one step; longer input is split.
pub const DEFAULT_MAX_READ: usize = 64 << 10;

/// What a peer may send; [`Limits::default`] holds the `DEFAULT_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_command_bytes: usize,
    pub max_amf_depth: usize,
    pub max_read: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_command_bytes: DEFAULT_MAX_COMMAND_BYTES,
            max_amf_depth: DEFAULT_MAX_AMF_DEPTH,
            max_read: DEFAULT_MAX_READ,
        }
    }
}

/// Why a connection's protocol gave up. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("rtmp chunks: {0}")]
    Chunks(String),
    #[error("rtmp session: {0}")]
    Session(String),
    #[error("rml_rtmp panicked in the {stage}: {message}")]
    ParserPanicked {
        stage: &'static str,
        message: String,
    },
    #[error("chunk size {size} is out of range (1 to 2147483647)")]
    ChunkSize { size: u32 },
    #[error("more than {limit} bytes sent without completing a message")]
    MessageTooLarge { limit: usize },
    #[error("AMF message (type {type_id}) of {len} bytes is over the {limit} byte limit")]
    CommandTooLarge {
        type_id: u8,
        len: usize,
        limit: usize,
    },
    #[error("AMF message (type {type_id}) nests deeper than {limit} levels")]
    AmfTooDeep { type_id: u8, limit: usize },
    #[error("malformed AMF message (type {type_id}): {reason}")]
    Amf { type_id: u8, reason: &'static str },
    #[error("FLV: {0}")]
    Flv(#[from] flv::FlvError),
    #[error("a publish request is waiting for its answer")]
    DecisionPending,
    #[error("no publish request is waiting for an answer")]
    NoDecisionPending,
    #[error("the connection is closed")]
    Closed,
}

/// What the server must do next for this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the peer.
    Send(Bytes),
    /// The peer asks to publish `stream_key`. Answer with [`Protocol::accept_publish`] or
    /// [`Protocol::refuse_publish`] before polling again.
    Publish { stream_key: String },
    /// An FLV tag (header, body, PreviousTagSize) of the published stream.
    Tag(MediaTag),
    /// The peer ended its publish (it may publish again on this connection).
    PublishFinished,
    /// Write `response` (the refusal the peer is owed), then close the connection.
    Refuse { response: Bytes, reason: String },
}

/// One audio or video message as an FLV tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTag {
    pub kind: u8,
    pub timestamp_ms: u32,
    /// A video picture (not a codec header or an end marker).
    pub picture: bool,
    pub bytes: Bytes,
}

enum Stage {
    Handshake(Box<Handshake>),
    Session {
        session: Box<ServerSession>,
        gate: Box<Gate>,
    },
    Closed,
}

enum Step {
    Send(Vec<u8>),
    Session(ServerSessionResult),
}

/// The protocol state of one connection. Feed it what the peer sends, then poll it until it
/// has nothing more to do.
pub struct Protocol {
    limits: Limits,
    stage: Stage,
    queue: VecDeque<Step>,
    /// The publish request waiting for the server's answer.
    deciding: Option<u32>,
    connected: bool,
    publishing: bool,
}

impl Protocol {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            stage: Stage::Handshake(Box::new(Handshake::new(PeerType::Server))),
            queue: VecDeque::new(),
            deciding: None,
            connected: false,
            publishing: false,
        }
    }

    /// Whether the handshake is over.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.stage, Stage::Handshake(_))
    }

    /// Whether a publish is accepted and not finished.
    pub fn publishing(&self) -> bool {
        self.publishing
    }

    /// Hands bytes read from the peer to the protocol; then [`poll`](Self::poll) until `None`.
    /// After an error the connection is closed and every later call fails.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        if self.deciding.is_some() {
            return Err(ProtocolError::DecisionPending);
        }
        for piece in bytes.chunks(self.limits.max_read.max(1)) {
            if let Err(e) = self.feed_piece(piece) {
                self.close();
                return Err(e);
            }
        }
        Ok(())
    }

    fn feed_piece(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        match &mut self.stage {
            Stage::Closed => Err(ProtocolError::Closed),
            Stage::Handshake(handshake) => {
                let result = guard("handshake", || handshake.process_bytes(bytes))?
                    .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
                match result {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        self.queue_send(response_bytes);
                        Ok(())
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        self.queue_send(response_bytes);
                        let (session, results) = guard("session start", || {
                            ServerSession::new(ServerSessionConfig::new())
                        })?
                        .map_err(session_error)?;
                        self.queue.extend(results.into_iter().map(Step::Session));
                        self.stage = Stage::Session {
                            session: Box::new(session),
                            gate: Box::new(Gate::new(self.limits)),
                        };
                        if remaining_bytes.is_empty() {
                            Ok(())
                        } else {
                            self.feed_piece(&remaining_bytes)
                        }
                    }
                }
            }
            Stage::Session { session, gate } => {
                gate.check(bytes)?;
                let results =
                    guard("session", || session.handle_input(bytes))?.map_err(session_error)?;
                self.queue.extend(results.into_iter().map(Step::Session));
                Ok(())
            }
        }
    }

    fn queue_send(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.queue.push_back(Step::Send(bytes));
        }
    }

    fn close(&mut self) {
        self.stage = Stage::Closed;
        self.queue.clear();
        self.deciding = None;
        self.publishing = false;
    }

    /// The next thing to do, in order; `None` once everything fed so far is handled.
    pub fn poll(&mut self) -> Result<Option<Action>, ProtocolError> {
        if self.deciding.is_some() {
            return Err(ProtocolError::DecisionPending);
        }
        while let Some(step) = self.queue.pop_front() {
            let action = match step {
                Step::Send(bytes) => Some(self.send_with_following(bytes)),
                Step::Session(ServerSessionResult::OutboundResponse(packet)) => {
                    Some(self.send_with_following(packet.bytes))
                }
                Step::Session(ServerSessionResult::UnhandleableMessageReceived(payload)) => {
                    debug!(type_id = payload.type_id, "rtmp message not handled");
                    None
                }
                Step::Session(ServerSessionResult::RaisedEvent(event)) => {
                    match self.on_event(event) {
                        Ok(action) => action,
                        Err(e) => {
                            self.close();
                            return Err(e);
                        }
                    }
                }
            };
            if action.is_some() {
                return Ok(action);
            }
        }
        Ok(None)
    }

    /// One send action for `first` and the sends queued right after it.
    fn send_with_following(&mut self, mut first: Vec<u8>) -> Action {
        while let Some(step) = self.queue.pop_front() {
            match step {
                Step::Send(bytes) => first.extend_from_slice(&bytes),
                Step::Session(ServerSessionResult::OutboundResponse(packet)) => {
                    first.extend_from_slice(&packet.bytes)
                }
                other => {
                    self.queue.push_front(other);
                    break;
                }
            }
        }
        Action::Send(first.into())
    }

    fn on_event(&mut self, event: ServerSessionEvent) -> Result<Option<Action>, ProtocolError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if self.connected {
                    return self.refuse(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        "a second connect on one connection".to_owned(),
                    );
                }
                if app_name != APP_NAME {
                    return self.refuse(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        format!(
                            "unknown application {app_name:?}; publish to /{APP_NAME}/<stream_key>"
                        ),
                    );
                }
                self.connected = true;
                self.accept(request_id)?;
                Ok(None)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.publishing {
                    return self.refuse(
                        request_id,
                        "NetStream.Publish.BadName",
                        "a second publish on one connection".to_owned(),
                    );
                }
                self.deciding = Some(request_id);
                Ok(Some(Action::Publish { stream_key }))
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => self.refuse(
                request_id,
                "NetStream.Play.Failed",
                "this server takes publishers only".to_owned(),
            ),
            ServerSessionEvent::ReleaseStreamRequested { request_id, .. } => {
                self.accept(request_id)?;
                Ok(None)
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.media(flv::TAG_VIDEO, timestamp.value, &data),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.media(flv::TAG_AUDIO, timestamp.value, &data),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if !self.publishing {
                    return Ok(None);
                }
                self.publishing = false;
                Ok(Some(Action::PublishFinished))
            }
            other => {
                debug!(event = ?other, "rtmp event ignored");
                Ok(None)
            }
        }
    }

    fn media(
        &mut self,
        kind: u8,
        timestamp_ms: u32,
        body: &[u8],
    ) -> Result<Option<Action>, ProtocolError> {
        // An empty body has no codec byte: nothing a demuxer could use.
        if !self.publishing || body.is_empty() {
            return Ok(None);
        }
        Ok(Some(Action::Tag(MediaTag {
            kind,
            timestamp_ms,
            picture: flv::is_picture(kind, body),
            bytes: flv::tag(kind, timestamp_ms, body)?,
        })))
    }

    fn session(&mut self) -> Result<&mut ServerSession, ProtocolError> {
        match &mut self.stage {
            Stage::Session { session, .. } => Ok(session),
            _ => Err(ProtocolError::Closed),
        }
    }

    /// Queues the answer to `request_id` ahead of what is left of the current read.
    fn accept(&mut self, request_id: u32) -> Result<(), ProtocolError> {
        let session = self.session()?;
        let results =
            guard("session", || session.accept_request(request_id))?.map_err(session_error)?;
        for result in results.into_iter().rev() {
            self.queue.push_front(Step::Session(result));
        }
        Ok(())
    }

    /// Turns down `request_id` and closes: the action carries the rejection to send first.
    fn refuse(
        &mut self,
        request_id: u32,
        code: &str,
        reason: String,
    ) -> Result<Option<Action>, ProtocolError> {
        let session = self.session()?;
        let results = guard("session", || {
            session.reject_request(request_id, code, &reason)
        })?
        .map_err(session_error)?;
        let mut response = Vec::new();
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                response.extend_from_slice(&packet.bytes);
            }
        }
        self.close();
        Ok(Some(Action::Refuse {
            response: response.into(),
            reason,
        }))
    }

    /// Accepts the publish that [`Action::Publish`] asked about.
    pub fn accept_publish(&mut self) -> Result<(), ProtocolError> {
        let request_id = self
            .deciding
            .take()
            .ok_or(ProtocolError::NoDecisionPending)?;
        self.publishing = true;
        if let Err(e) = self.accept(request_id) {
            self.close();
            return Err(e);
        }
        Ok(())
    }

    /// Refuses the publish that [`Action::Publish`] asked about, with an RTMP status `code`
    /// (`NetStream.Publish.BadName`, `NetStream.Publish.Denied`); returns the
    /// [`Action::Refuse`] to carry out.
    pub fn refuse_publish(&mut self, code: &str, reason: String) -> Result<Action, ProtocolError> {
        let request_id = self
            .deciding
            .take()
            .ok_or(ProtocolError::NoDecisionPending)?;
        match self.refuse(request_id, code, reason) {
            Ok(Some(action)) => Ok(action),
            Ok(None) => Err(ProtocolError::Closed),
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }
}

fn session_error(e: ServerSessionError) -> ProtocolError {
    ProtocolError::Session(e.to_string())
}

/// Runs a call into `rml_rtmp`, turning a panic inside it into an error.
pub(super) fn guard<T>(stage: &'static str, call: impl FnOnce() -> T) -> Result<T, ProtocolError> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(call));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.map_err(|payload| ProtocolError::ParserPanicked {
        stage,
        message: payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default(),
    })
}

thread_local! {
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is inside a guarded call into `rml_rtmp`: a panic now will be caught
/// and end only its connection. The fuzz target's panic hook asks, to tell known `rml_rtmp`
/// panics from panics in our code.
#[doc(hidden)]
pub fn inside_guarded_call() -> bool {
    GUARDED.with(|g| g.get() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::gate::message;
    use crate::ingest::harness::samples::{AAC_FRAME, AVC_HEADER, AVC_KEYFRAME};
    use crate::ingest::harness::{record_publisher, DRIVE_STREAM_KEY};

    /// Runs reads through a fresh protocol, accepting publishes; returns the actions.
    fn run<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Action>, Option<ProtocolError>) {
        let mut p = Protocol::new(Limits::default());
        let mut actions = Vec::new();
        for piece in reads {
            let step = p.feed(piece).and_then(|()| {
                while let Some(a) = p.poll()? {
                    if matches!(a, Action::Publish { .. }) {
                        p.accept_publish()?;
                    }
                    actions.push(a);
                }
                Ok(())
            });
            if let Err(e) = step {
                return (actions, Some(e));
            }
        }
        (actions, None)
    }

    #[test]
    fn a_publisher_gets_its_media_out_as_flv_tags() {
        let flights = record_publisher(&[
            (flv::TAG_VIDEO, 0, AVC_HEADER),
            (flv::TAG_AUDIO, 0, AAC_FRAME),
            (flv::TAG_VIDEO, 33, AVC_KEYFRAME),
        ]);
        let bytes = flights.concat();
        // As sent, and in reads too short to hold an unanswered request and the next one.
        let as_sent: Vec<&[u8]> = flights.iter().map(Vec::as_slice).collect();
        for read in [0, 1, 7, 17] {
            let reads = match read {
                0 => as_sent.clone(),
                n => bytes.chunks(n).collect(),
            };
            let (actions, error) = run(reads);
            assert!(error.is_none(), "read {read}: {error:?}");
            let publishes: Vec<_> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Publish { stream_key } => Some(stream_key.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(publishes, [DRIVE_STREAM_KEY], "read {read}");
            let tags: Vec<_> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Tag(t) => Some(t),
                    _ => None,
                })
                .collect();
            assert_eq!(tags.len(), 3, "read {read}: {actions:?}");
            assert_eq!(
                tags[2].bytes,
                flv::tag(flv::TAG_VIDEO, 33, AVC_KEYFRAME).unwrap()
            );
            assert_eq!(
                tags.iter().map(|t| t.picture).collect::<Vec<_>>(),
                [false, false, true]
            );
        }
    }

    fn after_handshake(rest: &[u8]) -> Vec<u8> {
        let mut bytes = vec![3u8];
        bytes.extend_from_slice(&[0u8; 1536 * 2]);
        bytes.extend_from_slice(rest);
        bytes
    }

    #[test]
    fn garbage_before_the_handshake_is_refused() {
        let (_, error) = run(b"GET / HTTP/1.1\r\n\r\n".chunks(4096));
        assert!(
            matches!(error, Some(ProtocolError::Handshake(_))),
            "{error:?}"
        );
    }

    #[test]
    fn deep_amf_is_refused_before_rml_amf0_recurses() {
        // "connect", 1, then 100 000 nested strict arrays: would overflow rml_amf0's stack.
        let mut amf = vec![0x02, 0, 7];
        amf.extend_from_slice(b"connect");
        amf.push(0x00);
        amf.extend_from_slice(&1f64.to_be_bytes());
        for _ in 0..100_000 {
            amf.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        let limits = Limits {
            max_command_bytes: usize::MAX,
            ..Limits::default()
        };
        let mut p = Protocol::new(limits);
        let mut chunked = message(1, &0x7fff_ffffu32.to_be_bytes());
        chunked.extend(message(20, &amf));
        let error = p.feed(&after_handshake(&chunked)).err();
        assert!(
            matches!(error, Some(ProtocolError::AmfTooDeep { type_id: 20, .. })),
            "{error:?}"
        );
    }

    #[test]
    fn a_panic_in_rml_rtmp_ends_only_the_connection() {
        // Chunks of two messages interleaved: rml_rtmp 0.8 keeps one payload buffer for all
        // chunk streams and subtracts past zero (fuzz/regressions/rml-chunk-length-underflow).
        let mut rest = vec![0x03, 0, 0, 0, 0, 0, 200, 9, 1, 0, 0, 0];
        rest.extend_from_slice(&[0x17; 128]);
        rest.extend_from_slice(&[0x04, 0, 0, 0, 0, 0, 10, 8, 1, 0, 0, 0]);
        rest.extend_from_slice(&[0xaf; 10]);
        let mut p = Protocol::new(Limits::default());
        let error = p.feed(&after_handshake(&rest)).err();
        assert!(
            matches!(error, Some(ProtocolError::ParserPanicked { .. })),
            "{error:?}"
        );
        assert!(!inside_guarded_call());
        assert!(matches!(p.feed(&[0x03]), Err(ProtocolError::Closed)));
    }
}
