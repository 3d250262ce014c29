//! A raw RTMP peer for the ingest's fault and flood tests: TCP connections from a chosen
//! loopback address, the client side of the handshake, hand-made chunks, and a real client
//! (`rml_rtmp`'s) that connects and asks to publish a key.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// A TCP connection to `127.0.0.1:port` from `from` (any 127.x.y.z is this machine on Linux,
/// and a different address to the daemon).
pub async fn connect_from(from: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(([127, 0, 0, 1], port).into()).await
}

/// Reads (and discards) until the daemon closes the connection; whether it did within
/// `within`.
pub async fn closed_within<R: AsyncRead + Unpin>(reader: &mut R, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Asserts the daemon closes `stream` within `within`; returns how long it took.
pub async fn wait_closed(stream: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    assert!(
        closed_within(stream, within).await,
        "{what}: the daemon kept the connection open for {within:?}"
    );
    started.elapsed()
}

/// The client side of the plain RTMP handshake: C0+C1, read S0+S1+S2, C2.
pub async fn handshake(stream: &mut TcpStream) {
    try_handshake(stream)
        .await
        .expect("the daemon takes the handshake");
}

/// [`handshake`], failing if the daemon closes the connection.
pub async fn try_handshake(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut c0c1 = vec![3u8];
    c0c1.extend((0..1536u32).map(|i| (i * 7) as u8));
    stream.write_all(&c0c1).await?;
    let mut s = vec![0u8; 1 + 1536 * 2];
    stream.read_exact(&mut s).await?;
    stream.write_all(&s[1..1537]).await
}

/// One message in chunks of 128 bytes on chunk stream 3: a full header, then type-3 headers.
pub fn message(type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x03, 0, 0, 0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xc3);
        }
        out.extend_from_slice(piece);
    }
    out
}

pub fn set_chunk_size(size: u32) -> Vec<u8> {
    message(1, 0, &size.to_be_bytes())
}

/// The largest chunk size, then the header of a video message that claims 16 MiB: what
/// follows it (any bytes) is that message's body, which never ends.
pub fn endless_message_head() -> Vec<u8> {
    let mut head = set_chunk_size(0x7fff_ffff);
    head.extend_from_slice(&[0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]);
    head
}

/// After a handshake, sends a message that claims 16 MiB and never ends, 64 KiB at a time,
/// until the daemon stops taking it: the bytes written when a write failed (the kernel's
/// socket buffers included), or `None` if all 16 MiB went in. Panics if writing stalls for
/// `within` instead of failing.
pub async fn write_endless_message(stream: &mut TcpStream, within: Duration) -> Option<usize> {
    handshake(stream).await;
    stream
        .write_all(&endless_message_head())
        .await
        .expect("write");
    let zeros = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        let mut written = 0usize;
        while written < 16 << 20 {
            if stream.write_all(&zeros).await.is_err() {
                return Some(written);
            }
            written += zeros.len();
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("writing to the daemon stalled for {within:?} instead of failing"))
}

/// `connect("live")` as an AMF0 command message.
pub fn connect_command() -> Vec<u8> {
    let string = |s: &str| {
        let mut v = vec![0x02];
        v.extend_from_slice(&(s.len() as u16).to_be_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    };
    let mut amf = string("connect");
    amf.push(0x00);
    amf.extend_from_slice(&1f64.to_be_bytes());
    amf.push(0x03);
    amf.extend_from_slice(&3u16.to_be_bytes());
    amf.extend_from_slice(b"app");
    amf.extend(string("live"));
    amf.extend_from_slice(&[0, 0, 0x09]);
    message(20, 0, &amf)
}

/// Bytes that look like nothing in particular (xorshift, fixed seed).
pub fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `rml_rtmp`'s client on a socket: handshake and `connect("live")` done, ready to publish.
pub struct RtmpClient {
    stream: TcpStream,
    session: ClientSession,
}

/// How long a client waits for each answer of the server.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl RtmpClient {
    /// Connects from `from`, shakes hands and has `connect("live")` accepted; `None` if the
    /// server closes the connection first.
    pub async fn connect(from: IpAddr, port: u16) -> Option<Self> {
        let mut stream = connect_from(from, port).await.ok()?;
        let mut handshake = Handshake::new(PeerType::Client);
        let c0c1 = handshake.generate_outbound_p0_and_p1().expect("C0+C1");
        stream.write_all(&c0c1).await.ok()?;
        let mut buf = vec![0u8; 16 * 1024];
        let rest = loop {
            let bytes = read(&mut stream, &mut buf).await?;
            match handshake.process_bytes(bytes).expect("server handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream.write_all(&response_bytes).await.ok()?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream.write_all(&response_bytes).await.ok()?;
                    break remaining_bytes;
                }
            }
        };
        let (session, opening) = ClientSession::new(ClientSessionConfig::new()).expect("client");
        let mut client = Self { stream, session };
        let mut out = opening;
        out.extend(client.session.handle_input(&rest).expect("server input"));
        out.push(
            client
                .session
                .request_connection("live".to_owned())
                .expect("connect"),
        );
        client
            .exchange(out, |event| {
                matches!(event, ClientSessionEvent::ConnectionRequestAccepted)
            })
            .await?;
        Some(client)
    }

    /// Asks to publish `key`; whether the server accepted (`false`: it refused and closed).
    pub async fn publish(&mut self, key: &str) -> bool {
        let request = self
            .session
            .request_publishing(key.to_owned(), PublishRequestType::Live)
            .expect("publish");
        self.exchange(vec![request], |event| {
            matches!(event, ClientSessionEvent::PublishRequestAccepted)
        })
        .await
        .is_some()
    }

    /// Sends `out`, then reads until an event for which `done` holds (`Some`) or the server
    /// closes the connection (`None`).
    async fn exchange(
        &mut self,
        mut out: Vec<ClientSessionResult>,
        done: impl Fn(&ClientSessionEvent) -> bool,
    ) -> Option<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            for result in out.drain(..) {
                match result {
                    ClientSessionResult::OutboundResponse(packet) => {
                        self.stream.write_all(&packet.bytes).await.ok()?;
                    }
                    ClientSessionResult::RaisedEvent(event) if done(&event) => return Some(()),
                    _ => {}
                }
            }
            let bytes = read(&mut self.stream, &mut buf).await?;
            out = self.session.handle_input(bytes).ok()?;
        }
    }
}

/// One read within [`ANSWER_TIMEOUT`]; `None` at the end of the stream or on an error.
async fn read<'a>(stream: &mut TcpStream, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let n = tokio::time::timeout(ANSWER_TIMEOUT, stream.read(buf))
        .await
        .expect("the server answers within 10 s")
        .ok()?;
    (n > 0).then_some(&buf[..n])
}
