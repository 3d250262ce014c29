//! A driver that plays bytes through one connection's [`Protocol`] as the server would, with
//! no sockets: [`drive`] is the fuzz target's entry point (`fuzz/fuzz_targets/ingest.rs`) and
//! replays its findings and seeds (`fuzz/regressions/`, `fuzz/seeds/`) in the unit tests;
//! [`record_publisher`] and [`publisher_prefix`] give it, and the tests, a real publisher's
//! bytes to start from.
//!
//! Owns the fuzz input's format (what its first byte picks) and the checks on what comes out.
//! It must not be on the server's path (the daemon never calls it) and must reach the protocol
//! only through its public calls, as the server does.

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

use super::flv;
use super::protocol::{Action, Limits, MediaTag, Protocol, ProtocolError, APP_NAME};

/// What [`drive`] saw.
#[derive(Debug, Default)]
pub struct Drive {
    pub publishes: usize,
    pub tags: usize,
    pub pictures: usize,
    pub sent_bytes: usize,
    pub refused: Option<String>,
    pub error: Option<ProtocolError>,
}

/// The stream key [`publisher_prefix`] publishes to.
pub const DRIVE_STREAM_KEY: &str = "fuzz";

/// Plays `input` as everything a peer sends on one connection, as the server would, and
/// checks what comes out (each FLV tag's framing; nothing accepted after an error). Used by
/// the fuzz target and by the regression tests that replay its findings.
///
/// `input[0]` picks how: bit 0 puts [`publisher_prefix`] (a finished handshake and an
/// accepted publish, each flight in a read of its own) before the rest; bit 1 refuses
/// publishes instead of accepting them; bits 2-4 pick the read size for the rest (1 byte to
/// 64 KiB: a recorded publisher replays in reads of at most 17 bytes, see
/// [`record_publisher`]).
#[doc(hidden)]
pub fn drive(input: &[u8]) -> Drive {
    const READ_SIZES: [usize; 8] = [1, 3, 17, 128, 1000, 4096, 16384, 65536];
    let Some((&mode, rest)) = input.split_first() else {
        return Drive::default();
    };
    let accept = mode & 0b10 == 0;
    let read = READ_SIZES[usize::from(mode >> 2) & 0b111];
    let mut protocol = Protocol::new(Limits::default());
    let mut seen = Drive::default();
    let prefix: &[Vec<u8>] = if mode & 1 == 1 {
        publisher_prefix()
    } else {
        &[]
    };
    let flights = prefix.iter().map(Vec::as_slice);
    for piece in flights.chain(rest.chunks(read)) {
        let step = protocol.feed(piece).and_then(|()| {
            while let Some(action) = protocol.poll()? {
                match action {
                    Action::Send(bytes) => seen.sent_bytes += bytes.len(),
                    Action::Publish { stream_key: _ } if accept => {
                        seen.publishes += 1;
                        protocol.accept_publish()?;
                    }
                    Action::Publish { stream_key: _ } => {
                        let refusal = protocol
                            .refuse_publish("NetStream.Publish.BadName", "refused".to_owned())?;
                        assert!(matches!(refusal, Action::Refuse { .. }), "{refusal:?}");
                        seen.refused = Some("publish refused".to_owned());
                        return Err(ProtocolError::Closed);
                    }
                    Action::Tag(tag) => {
                        check_tag(&tag);
                        seen.tags += 1;
                        seen.pictures += usize::from(tag.picture);
                    }
                    Action::PublishFinished => {}
                    Action::Refuse { reason, .. } => {
                        seen.refused = Some(reason);
                        return Err(ProtocolError::Closed);
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = step {
            assert!(
                matches!(protocol.feed(b"\x03"), Err(ProtocolError::Closed)),
                "a failed connection must stay closed"
            );
            seen.error = Some(e);
            break;
        }
    }
    seen
}

/// Asserts an FLV tag is framed as its header says.
fn check_tag(tag: &MediaTag) {
    let b = &tag.bytes[..];
    assert!(b.len() >= 15, "tag shorter than its framing");
    let size = u32::from_be_bytes([0, b[1], b[2], b[3]]) as usize;
    assert_eq!(b[0], tag.kind, "tag type");
    assert!(matches!(b[0], flv::TAG_AUDIO | flv::TAG_VIDEO), "tag type");
    assert_eq!(b.len(), 11 + size + 4, "data size field");
    let stamp = u32::from_be_bytes([b[7], b[4], b[5], b[6]]);
    assert_eq!(stamp, tag.timestamp_ms, "timestamp");
    let previous = u32::from_be_bytes([
        b[b.len() - 4],
        b[b.len() - 3],
        b[b.len() - 2],
        b[b.len() - 1],
    ]);
    assert_eq!(previous as usize, 11 + size, "PreviousTagSize");
    assert_eq!(tag.picture, flv::is_picture(tag.kind, &b[11..11 + size]));
}

/// What a real publisher sends up to an accepted publish on [`DRIVE_STREAM_KEY`]: handshake,
/// connect, createStream, publish, as the flights it sent between the server's answers.
/// Recorded once per process from `rml_rtmp`'s client talking to a [`Protocol`] (our server
/// checks no handshake digest, so the bytes replay).
#[doc(hidden)]
pub fn publisher_prefix() -> &'static [Vec<u8>] {
    static PREFIX: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| record_publisher(&[]))
}

/// Records a client's flights of bytes (each sent after the server's last answer): handshake,
/// connect and publish, then `media` as (kind, timestamp, body) messages. Panics if our server
/// does not take it.
///
/// Replay a flight only once the server has answered the one before: like `rml_rtmp`, our
/// server reads a whole read before it answers, so a command pipelined behind a request that
/// is still unanswered (createStream behind connect) fails as it would on a real socket.
#[doc(hidden)]
pub fn record_publisher(media: &[(u8, u32, &[u8])]) -> Vec<Vec<u8>> {
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;

    let mut server = Protocol::new(Limits::default());
    let mut sent = Vec::new();
    // Feeds the client's bytes to the server (accepting publishes); returns its answer.
    let mut exchange = |bytes: &[u8], sent: &mut Vec<Vec<u8>>| -> Vec<u8> {
        sent.push(bytes.to_vec());
        server
            .feed(bytes)
            .expect("our server takes the client's bytes");
        let mut answer = Vec::new();
        while let Some(action) = server.poll().expect("our server takes the client") {
            match action {
                Action::Send(b) => answer.extend_from_slice(&b),
                Action::Publish { .. } => server.accept_publish().expect("accept"),
                _ => {}
            }
        }
        answer
    };

    let mut handshake = Handshake::new(PeerType::Client);
    let c0c1 = handshake
        .generate_outbound_p0_and_p1()
        .expect("client handshake");
    let s0s1s2 = exchange(&c0c1, &mut sent);
    // The server's answer to C2 opens its session (window size, bandwidth, chunk size).
    let opening = match handshake.process_bytes(&s0s1s2).expect("server handshake") {
        HandshakeProcessResult::Completed { response_bytes, .. } => {
            exchange(&response_bytes, &mut sent)
        }
        HandshakeProcessResult::InProgress { .. } => panic!("handshake not finished"),
    };

    let (mut client, mut outbound) =
        ClientSession::new(ClientSessionConfig::new()).expect("client");
    outbound.extend(client.handle_input(&opening).expect("server's opening"));
    outbound.push(
        client
            .request_connection(APP_NAME.to_owned())
            .expect("connect"),
    );
    let mut publishing = false;
    for _ in 0..16 {
        let mut bytes = Vec::new();
        for result in outbound.drain(..) {
            if let ClientSessionResult::OutboundResponse(packet) = result {
                bytes.extend_from_slice(&packet.bytes);
            }
        }
        let answer = exchange(&bytes, &mut sent);
        for result in client.handle_input(&answer).expect("client input") {
            match result {
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    outbound.push(
                        client
                            .request_publishing(
                                DRIVE_STREAM_KEY.to_owned(),
                                PublishRequestType::Live,
                            )
                            .expect("publish"),
                    );
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::PublishRequestAccepted) => {
                    publishing = true;
                }
                other => outbound.push(other),
            }
        }
        if publishing {
            break;
        }
    }
    assert!(publishing, "our server never accepted the publish");
    for &(kind, timestamp, body) in media {
        let body = Bytes::copy_from_slice(body);
        let stamp = RtmpTimestamp::new(timestamp);
        let packet = if kind == flv::TAG_VIDEO {
            client.publish_video_data(body, stamp, false)
        } else {
            client.publish_audio_data(body, stamp, false)
        };
        if let ClientSessionResult::OutboundResponse(packet) = packet.expect("media") {
            exchange(&packet.bytes, &mut sent);
        }
    }
    sent
}

/// FLV tag bodies for tests: an AVC sequence header, an AVC key frame, an AAC frame.
#[cfg(test)]
pub(super) mod samples {
    pub const AVC_HEADER: &[u8] = &[0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f];
    pub const AVC_KEYFRAME: &[u8] = &[0x17, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88];
    pub const AAC_FRAME: &[u8] = &[0xaf, 0x01, 0x21, 0x10];
}

#[cfg(test)]
mod tests {
    use super::samples::{AAC_FRAME, AVC_HEADER, AVC_KEYFRAME};
    use super::*;

    #[test]
    fn the_fuzz_driver_accepts_the_recorded_publisher() {
        let mut input = vec![0b0000_0001];
        input.extend_from_slice(&[0xc3]);
        let seen = drive(&input);
        assert_eq!(seen.publishes, 1, "{seen:?}");
    }

    /// Refreshes the fuzz target's starting corpus in `fuzz/seeds/`:
    /// `cargo test --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand to refresh fuzz/seeds"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        std::fs::create_dir_all(&dir).expect("fuzz/seeds");
        let flights = record_publisher(&[
            (flv::TAG_VIDEO, 0, AVC_HEADER),
            (flv::TAG_AUDIO, 0, AAC_FRAME),
            (flv::TAG_VIDEO, 33, AVC_KEYFRAME),
            (flv::TAG_AUDIO, 21, AAC_FRAME),
        ]);
        let whole = flights.concat();
        let media = flights[record_publisher(&[]).len()..].concat();
        const READ_17: u8 = 2 << 2;
        const READ_4096: u8 = 5 << 2;
        let seeds: [(&str, u8, &[u8]); 4] = [
            ("publisher-in-17-byte-reads", READ_17, &whole),
            ("publisher-byte-by-byte", 0, &whole),
            ("publisher-refused", READ_17 | 0b10, &whole),
            ("media-after-prefix", READ_4096 | 1, &media),
        ];
        for (name, mode, bytes) in seeds {
            let mut input = vec![mode];
            input.extend_from_slice(bytes);
            std::fs::write(dir.join(name), input).expect("write seed");
        }
    }

    /// Inputs the fuzzer found, kept in `fuzz/regressions/`, and its seeds: none may panic
    /// out of the core. Each regression input must end its connection with an error.
    #[test]
    fn fuzz_inputs_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let files = |dir: &str| {
            let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("fuzz/{dir}: {e}"))
                .map(|entry| entry.expect("directory entry").path())
                .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
                .collect();
            paths.sort();
            paths
        };
        let seeds = files("seeds");
        assert!(!seeds.is_empty(), "no seeds in fuzz/seeds");
        for path in seeds {
            let seen = drive(&std::fs::read(&path).expect("seed"));
            eprintln!("{}: {seen:?}", path.display());
            assert!(
                seen.publishes + usize::from(seen.refused.is_some()) > 0,
                "{}",
                path.display()
            );
        }
        let regressions = files("regressions");
        assert!(!regressions.is_empty(), "no inputs in fuzz/regressions");
        for path in regressions {
            let seen = drive(&std::fs::read(&path).expect("regression input"));
            eprintln!("{}: {seen:?}", path.display());
            assert!(
                seen.error.is_some(),
                "{}: the connection should have ended: {seen:?}",
                path.display()
            );
        }
    }
}
