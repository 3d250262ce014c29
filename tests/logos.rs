//! Attacks through the scores API, against a real daemon: a decompression-bomb logo, logo
//! bodies over the byte limit (with and without Content-Length), a logo URL that changes on
//! every poll, and scores URLs that point inside the network. The daemon must keep running,
//! say why in the score status, and keep its memory (RSS, read from /proc) within bounds.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::scores::{solid_png, Answer, ScoresApi};
use common::*;
use serde_json::Value;

/// How far the daemon's RSS may grow during an attack.
const RSS_SLACK_MIB: f64 = 50.0;
/// A small program, so that the relay's encoder leaves the machine to the test.
const SMALL_PROGRAM: &str = "[program]\nx264_preset = \"ultrafast\"\nwidth = 320\nheight = 180\n\
                             fps = 10\n[hls]\nsegment_seconds = 2\n";

/// A scoreboard whose home team's logo is at `logo`.
fn board_with_logo(logo: &str) -> String {
    format!(
        r#"{{"home":{{"name":"NAVI","score":1,"logo":"{logo}"}},"away":{{"name":"G2","score":0}}}}"#
    )
}

/// A config with one relay `id` per `(id, overlay table body)`.
fn config(relays: &[(&str, String)]) -> String {
    let mut text = SMALL_PROGRAM.to_owned();
    for (id, overlay) in relays {
        text.push_str(&format!(
            "\n[[relay]]\nid = \"{id}\"\ningest = {{ stream_key = \"{id}-key\" }}\n\
             overlay = {{ {overlay} }}\n"
        ));
    }
    text
}

async fn score(daemon: &Daemon, relay: &str) -> Value {
    daemon.get(&format!("/api/v1/relays/{relay}/score")).await.1
}

/// Waits until relay `relay`'s score status has `last_error` containing `needle`.
async fn wait_error(daemon: &Daemon, relay: &str, needle: &str) -> String {
    wait_for(
        &format!("{relay}'s last_error to say {needle:?}"),
        Duration::from_secs(20),
        || async {
            score(daemon, relay).await["last_error"]
                .as_str()
                .filter(|e| e.contains(needle))
                .map(str::to_owned)
        },
    )
    .await
}

/// Waits until the scores API has answered `polls` more requests.
async fn wait_polls(api: &ScoresApi, polls: u64, timeout: Duration) {
    let target = api.hits("match") + polls;
    wait_for(&format!("{polls} more polls"), timeout, || async {
        (api.hits("match") >= target).then_some(())
    })
    .await;
}

fn crc32(bytes: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Deflate bits, least significant first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which deflate stores most significant bit first.
    fn code(&mut self, code: u32, bits: u32) {
        let reversed = (0..bits).fold(0, |r, i| (r << 1) | ((code >> i) & 1));
        self.put(reversed, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A real PNG of `side`x`side` black pixels, 1 bit each, whose zlib stream repeats a zero
/// byte with deflate's longest match: 20000x20000 takes about 300 KB and decodes to 50 MB
/// (1.6 GB as RGBA). Built by hand, so the test never holds the decoded image.
fn decompression_bomb(side: u32) -> Vec<u8> {
    let raw = u64::from(side) * (1 + u64::from(side.div_ceil(8)));
    let mut bits = Bits::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    let mut left = raw - 1;
    while left >= 258 {
        bits.code(0xc5, 8); // length 258 (code 285)
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0x30, 8);
    }
    bits.code(0, 7); // end of block
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.finish());
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let adler = (((raw % 65521) as u32) << 16) | 1;
    zlib.extend(adler.to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let ihdr = [
        &side.to_be_bytes()[..],
        &side.to_be_bytes(),
        &[1, 0, 0, 0, 0],
    ]
    .concat();
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn the_bomb_is_a_real_png() {
    // Small enough to decode here: the same construction, checked by the image crate.
    let small = image::load_from_memory(&decompression_bomb(300)).expect("a valid PNG");
    assert_eq!((small.width(), small.height()), (300, 300));
    assert!(small.to_luma8().pixels().all(|p| p.0 == [0]));
    let bomb = decompression_bomb(20_000);
    assert!(bomb.len() < 400 * 1024, "{} bytes", bomb.len());
    let dims = image::ImageReader::new(std::io::Cursor::new(&bomb))
        .with_guessed_format()
        .expect("guessed")
        .into_dimensions()
        .expect("a PNG header");
    assert_eq!(dims, (20_000, 20_000));
}

/// A server that answers every request with a PNG-looking body of `bytes` bytes, chunked and
/// without Content-Length.
async fn endless_logo_server(bytes: usize) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let mut head = Vec::new();
                write!(
                    head,
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                .expect("write");
                if conn.write_all(&head).await.is_err() {
                    return;
                }
                let piece = vec![0u8; 64 * 1024];
                let mut sent = 0;
                while sent < bytes {
                    let chunk =
                        [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
                    if conn.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += piece.len();
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_logos_are_refused_before_decoding_and_memory_stays_flat() {
    let api = ScoresApi::start(Answer::Score(String::new())).await;
    api.put_file("good.png", solid_png(64, 64, [250, 20, 20, 255]));
    api.put_file("bomb.png", decompression_bomb(20_000));
    api.put_file("huge.png", vec![0x89; 3 * 1024 * 1024]);
    api.set(Answer::Score(board_with_logo(&api.url("files/good.png"))));
    let endless = endless_logo_server(8 * 1024 * 1024).await;
    let daemon = Daemon::spawn(&config(&[(
        "final",
        format!(
            r#"scores_url = "{}", poll_interval = "200ms", allow_private = true"#,
            api.url("match")
        ),
    )]))
    .await;
    wait_for("the API's score", Duration::from_secs(20), || async {
        let s = score(&daemon, "final").await;
        (s["source"] == "api" && s["last_error"].is_null()).then_some(())
    })
    .await;
    daemon
        .wait_state("final", "live", Duration::from_secs(20))
        .await;
    wait_polls(&api, 10, Duration::from_secs(20)).await;
    let before = daemon.rss_mib();

    api.set(Answer::Score(board_with_logo(&api.url("files/bomb.png"))));
    let error = wait_error(&daemon, "final", "over the 1024×1024 limit").await;
    assert!(
        error.contains("home.logo") && error.contains("20000×20000 pixels"),
        "{error}"
    );
    // The refusal is remembered: the bomb is fetched once, however often the API names it.
    wait_polls(&api, 10, Duration::from_secs(20)).await;
    assert_eq!(api.hits("files/bomb.png"), 1);
    let after_bomb = daemon.rss_mib();

    // Bodies over 2 MiB, announced by Content-Length or not, are cut off.
    api.set(Answer::Score(board_with_logo(&api.url("files/huge.png"))));
    let error = wait_error(&daemon, "final", "body over 2 MiB").await;
    assert!(error.contains("huge.png"), "{error}");
    api.set(Answer::Score(board_with_logo(&format!(
        "http://{endless}/stream.png"
    ))));
    wait_error(&daemon, "final", "stream.png: body over 2 MiB").await;
    wait_polls(&api, 5, Duration::from_secs(20)).await;
    let after = daemon.rss_mib();
    eprintln!(
        "daemon RSS: {before:.1} MiB before, {after_bomb:.1} MiB after the 20000x20000 bomb, \
         {after:.1} MiB after the oversized bodies"
    );
    assert!(
        after_bomb - before < RSS_SLACK_MIB && after - before < RSS_SLACK_MIB,
        "RSS grew from {before:.1} MiB to {after_bomb:.1} / {after:.1} MiB"
    );
    // The relay runs on, and the scoreboard still comes from the API.
    let relay = daemon.relay("final").await;
    assert_eq!(relay["state"], "live", "{relay}");
    assert_eq!(score(&daemon, "final").await["source"], "api");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logo_url_signed_anew_on_every_poll_does_not_grow_memory() {
    let api = ScoresApi::start(Answer::Score(String::new())).await;
    // A logo at the limit: 1024x1024, 4 MiB decoded. Kept full size, 100 of them would be
    // 400 MiB; scaled to the scorebug and in a bounded cache, they are a few KiB each.
    api.put_file("logo.png", solid_png(1024, 1024, [30, 200, 90, 255]));
    let logo = api.url("files/logo.png");
    api.set(Answer::Each(Arc::new(move |n| {
        board_with_logo(&format!("{logo}?sig={n}"))
    })));
    let daemon = Daemon::spawn(&config(&[(
        "final",
        format!(
            r#"scores_url = "{}", poll_interval = "100ms", allow_private = true"#,
            api.url("match")
        ),
    )]))
    .await;
    wait_for("the API's score", Duration::from_secs(20), || async {
        (score(&daemon, "final").await["source"] == "api").then_some(())
    })
    .await;
    wait_polls(&api, 10, Duration::from_secs(30)).await;
    let before = daemon.rss_mib();
    let logos_before = api.hits("files/logo.png");
    wait_polls(&api, 100, Duration::from_secs(120)).await;
    let after = daemon.rss_mib();
    let fetched = api.hits("files/logo.png") - logos_before;
    eprintln!(
        "daemon RSS: {before:.1} MiB before, {after:.1} MiB after 100 polls \
         ({fetched} distinct logo URLs fetched)"
    );
    assert!(fetched >= 90, "each new URL is fetched: {fetched}");
    assert!(
        after - before < RSS_SLACK_MIB,
        "RSS grew from {before:.1} MiB to {after:.1} MiB"
    );
    let s = score(&daemon, "final").await;
    assert!(s["last_error"].is_null(), "{s}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scores_urls_inside_the_network_are_refused_unless_allowed() {
    let board = r#"{"home":{"name":"NAVI","score":1},"away":{"name":"G2","score":0}}"#;
    // One stand-in for the relays that must not reach it, one for the relay that may.
    let inside = ScoresApi::start(Answer::Score(board.to_owned())).await;
    let allowed = ScoresApi::start(Answer::Score(board.to_owned())).await;
    let port = inside.addr.port();
    let daemon = Daemon::start(&config(&[
        (
            "metadata",
            r#"scores_url = "http://169.254.169.254/latest/meta-data""#.to_owned(),
        ),
        (
            "loopback",
            format!(r#"scores_url = "http://127.0.0.1:{port}/match""#),
        ),
        (
            "named",
            format!(r#"scores_url = "http://localhost:{port}/match?token=s3cret""#),
        ),
        (
            "allowed",
            format!(
                r#"scores_url = "{}", allow_private = true"#,
                allowed.url("match")
            ),
        ),
    ]))
    .await;
    let error = wait_error(&daemon, "metadata", "refused").await;
    assert_eq!(
        error,
        "refused: 169.254.169.254 is link-local; set overlay.allow_private = true to allow it"
    );
    let error = wait_error(&daemon, "loopback", "refused").await;
    assert_eq!(
        error,
        "refused: 127.0.0.1 is loopback; set overlay.allow_private = true to allow it"
    );
    // A name is judged by what it resolves to, when the client resolves it.
    let error = wait_error(&daemon, "named", "refused").await;
    assert!(
        error.starts_with("refused: localhost resolves to ") && error.contains("loopback"),
        "{error}"
    );
    // With allow_private, the same loopback API is used.
    wait_for(
        "the allowed relay's score",
        Duration::from_secs(20),
        || async {
            let s = score(&daemon, "allowed").await;
            (s["source"] == "api" && s["scoreboard"]["home"]["name"] == "NAVI").then_some(())
        },
    )
    .await;
    // No refused relay ever reached its server, though each keeps trying.
    wait_for(
        "the refused relays to try again",
        Duration::from_secs(20),
        || async {
            let s = score(&daemon, "named").await;
            (s["age"].is_null() && allowed.hits("match") >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(inside.hits("match"), 0, "a refused relay connected");
    for relay in ["metadata", "loopback", "named"] {
        let s = score(&daemon, relay).await;
        assert!(s["scoreboard"].is_null(), "{relay}: {s}");
    }
    let log = daemon.log();
    assert!(
        !log.contains("s3cret"),
        "the scores URL's query reached the log"
    );
    assert!(
        log.contains("http://localhost:"),
        "the redacted URL is logged"
    );
    daemon.stop().await;
}
