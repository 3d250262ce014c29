//! Bad input on the RTMP port, against a running daemon whose relay `main` is live with an
//! ffmpeg publisher: garbage, a truncated handshake, absurd chunk sizes and an endless message,
//! slow-loris clients, and a publisher of audio alone. Each fault must cost only its own
//! connection, closed within a bounded time, while `main` keeps encoding and its HLS playlist
//! keeps growing.

mod common;
mod rtmp_peer;

use std::time::Duration;

use common::*;
use rtmp_peer::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const MAIN: &str = "main";
const SPARE: &str = "spare";
const MAIN_PLAYLIST: &str = "/hls/main/720p/index.m3u8";
/// The handshake and publish deadlines of the server (`ingest::DEFAULT_*`) and some slack.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5 + 5);
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10 + 5);
/// How soon a plainly broken peer must be gone.
const PROMPTLY: Duration = Duration::from_secs(5);

/// The daemon with `main` live from ffmpeg and `spare` waiting for a publisher.
struct Setup {
    daemon: Daemon,
    _publisher: Process,
}

/// How far `main` has got: its publisher, frames encoded, and the end of its playlist.
#[derive(Debug)]
struct Progress {
    peer: String,
    frames: u64,
    playlist_end: u64,
}

impl Setup {
    async fn start() -> Self {
        let config = format!(
            "{}\n[[relay]]\nid = \"{SPARE}\"\ningest = {{ stream_key = \"spare-key\" }}\n",
            relay_config(MAIN, r#"stream_key = "main-key""#, "")
        );
        let daemon = Daemon::spawn(&config).await;
        let publisher = ffmpeg_publisher(&daemon.publish_url("main-key"), 120);
        daemon
            .wait_on_air(MAIN, "input", Duration::from_secs(20))
            .await;
        wait_for("main's first segment", Duration::from_secs(20), || async {
            let (_, text) = daemon.get_text(MAIN_PLAYLIST).await?;
            (!check_media_playlist(&text).segments.is_empty()).then_some(())
        })
        .await;
        Self {
            daemon,
            _publisher: publisher,
        }
    }

    async fn progress(&self) -> Progress {
        let relay = self.daemon.relay(MAIN).await;
        let (_, text) = self
            .daemon
            .get_text(MAIN_PLAYLIST)
            .await
            .expect("main's playlist is served");
        let playlist = check_media_playlist(&text);
        Progress {
            peer: relay["publisher"]["peer"]
                .as_str()
                .expect("main has its publisher")
                .to_owned(),
            frames: relay["frames_encoded"].as_u64().unwrap_or(0),
            playlist_end: playlist.media_sequence + playlist.segments.len() as u64,
        }
    }

    /// Asserts `main` carried on past `before`: same publisher, more frames, a new segment.
    async fn assert_main_carries_on(&self, before: &Progress) {
        let after = wait_for(
            "main to encode more and list a new segment",
            Duration::from_secs(20),
            || async {
                let now = self.progress().await;
                (now.frames > before.frames && now.playlist_end > before.playlist_end)
                    .then_some(now)
            },
        )
        .await;
        assert_eq!(after.peer, before.peer, "main's publisher was replaced");
        assert_eq!(self.daemon.relay(MAIN).await["state"], "live");
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.daemon.rtmp_port))
            .await
            .expect("connect to the RTMP port")
    }

    /// Waits until the daemon's log holds `text`; panics with the log after 10 s.
    async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.daemon.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the log does not say {text:?}:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_rtmp_port_loses_only_its_connection() {
    let setup = Setup::start().await;
    let before = setup.progress().await;

    // Not RTMP at all: refused at the first byte.
    let mut http = setup.connect().await;
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    wait_closed(&mut http, PROMPTLY, "an HTTP request").await;
    setup.wait_log("handshake").await;

    // A good handshake, then noise where chunks should be.
    let mut noisy = setup.connect().await;
    handshake(&mut noisy).await;
    let _ = noisy.write_all(&garbage(64 * 1024)).await;
    wait_closed(&mut noisy, PUBLISH_DEADLINE, "garbage after the handshake").await;

    setup.assert_main_carries_on(&before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_handshake_is_closed_at_the_deadline() {
    let setup = Setup::start().await;
    let before = setup.progress().await;

    // Half of C1, then silence.
    let mut half_c1 = setup.connect().await;
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 700]);
    half_c1.write_all(&c0c1).await.expect("write");
    // All of C1, S0-S2 read, then half of C2.
    let mut half_c2 = setup.connect().await;
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    half_c2.write_all(&c0c1).await.expect("write");
    let mut s = vec![0u8; 1 + 1536 * 2];
    half_c2.read_exact(&mut s).await.expect("read S0+S1+S2");
    half_c2.write_all(&s[1..769]).await.expect("write");

    let (a, b) = tokio::join!(
        wait_closed(&mut half_c1, HANDSHAKE_DEADLINE, "half a C1"),
        wait_closed(&mut half_c2, HANDSHAKE_DEADLINE, "half a C2"),
    );
    eprintln!("truncated handshakes closed after {a:?} and {b:?}");
    setup.wait_log("timed out in the handshake").await;
    setup.assert_main_carries_on(&before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_chunk_sizes_and_an_endless_message_are_cut_off() {
    let setup = Setup::start().await;
    let before = setup.progress().await;

    // A chunk size of 0 (RTMP allows 1 and up).
    let mut zero = setup.connect().await;
    handshake(&mut zero).await;
    zero.write_all(&set_chunk_size(0)).await.expect("write");
    wait_closed(&mut zero, PROMPTLY, "chunk size 0").await;
    setup.wait_log("chunk size 0 is out of range").await;

    // A chunk size with the top bit set.
    let mut top_bit = setup.connect().await;
    handshake(&mut top_bit).await;
    top_bit
        .write_all(&set_chunk_size(0x8000_0000))
        .await
        .expect("write");
    wait_closed(&mut top_bit, PROMPTLY, "chunk size 2^31").await;

    // The largest chunk size, then a video message that claims 16 MiB and never ends: with
    // no publish accepted, the daemon must stop taking it at its 64 KiB allowance (the 8 MiB
    // limit on a message is the gate's, unit-tested), so writing 16 MiB fails.
    let mut endless = setup.connect().await;
    let written = write_endless_message(&mut endless, Duration::from_secs(20)).await;
    let written = written.expect("the daemon took a 16 MiB message without closing");
    eprintln!("the endless message was cut off after {written} bytes");
    setup.wait_log("before a publish was accepted").await;

    setup.assert_main_carries_on(&before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_loris_clients_are_closed_at_their_deadlines() {
    let setup = Setup::start().await;
    let before = setup.progress().await;

    // One byte of the handshake every 250 ms: C0+C1 would take over six minutes.
    let (mut in_handshake, mut trickle_handshake) = setup.connect().await.into_split();
    let handshake_bytes: Vec<u8> = std::iter::once(3u8).chain([0u8; 1536]).collect();
    let first = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        for byte in handshake_bytes {
            tick.tick().await;
            if trickle_handshake.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    // A quick handshake, then connect() one byte every 400 ms (about 25 s of it).
    let mut stream = setup.connect().await;
    handshake(&mut stream).await;
    let (mut in_session, mut trickle_connect) = stream.into_split();
    let second = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(400));
        for byte in connect_command() {
            tick.tick().await;
            if trickle_connect.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        // Then hold the connection open (dropping the half would send FIN).
        std::future::pending::<()>().await;
    });

    let (a, b) = tokio::join!(
        closed_within(&mut in_handshake, HANDSHAKE_DEADLINE),
        closed_within(&mut in_session, PUBLISH_DEADLINE),
    );
    assert!(a, "a trickled handshake was kept past its deadline");
    assert!(b, "a trickled connect was kept past the publish deadline");
    first.abort();
    second.abort();
    setup.wait_log("timed out waiting for a publish").await;
    setup.assert_main_carries_on(&before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_of_audio_alone_is_dropped_and_the_relay_waits_for_the_next() {
    let setup = Setup::start().await;
    let before = setup.progress().await;

    require_tool("ffmpeg");
    let mut audio_only = Process::spawn(
        "ffmpeg audio-only publisher",
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", "60", "-c:a", "aac", "-b:a", "128k"])
            .args(["-f", "flv", &setup.daemon.publish_url("spare-key")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    // Taken first (the relay cannot know yet that no video will come) ...
    wait_for(
        "the audio-only publish to be accepted",
        Duration::from_secs(15),
        || async {
            let relay = setup.daemon.relay(SPARE).await;
            relay["publisher"].is_object().then_some(())
        },
    )
    .await;
    let accepted = Instant::now();
    // ... then dropped once the first-picture deadline (5 s) passes.
    let status = audio_only
        .wait_exit(
            "the audio-only publisher to be dropped",
            Duration::from_secs(15),
        )
        .await;
    let dropped_after = accepted.elapsed();
    assert!(!status.success(), "ffmpeg should fail when dropped");
    assert!(
        dropped_after >= Duration::from_secs(3),
        "dropped after {dropped_after:?}: before the 5 s deadline"
    );
    setup.wait_log("no video picture").await;
    let log = setup.daemon.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("no video picture")
            && l.contains("relay=spare")),
        "a warning names the relay:\n{log}"
    );
    let relay = setup
        .daemon
        .wait_on_air(SPARE, "slate", Duration::from_secs(10))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");
    // Its input was stopped before it was dropped (it once was not, and crashed the daemon).
    let log = setup.daemon.log();
    assert!(
        !log.contains("Trying to dispose element"),
        "an input was dropped while still running:\n{log}"
    );

    // The relay takes the next publisher, with video this time.
    let _next = ffmpeg_publisher(&setup.daemon.publish_url("spare-key"), 30);
    setup
        .daemon
        .wait_on_air(SPARE, "input", Duration::from_secs(30))
        .await;

    setup.assert_main_carries_on(&before).await;
}
