//! Secrets, attacked as a read-only token holder and an anonymous viewer would: with a relay
//! live (a publisher on its stream key, a destination taking its push, a scores API with
//! credentials) and a relay made by `/start_stream`, every GET route, the live events, the
//! metrics, the HLS tree on disk and the daemon's log are searched for the stream keys, the
//! destination keys, the SRT passphrases and stream id, and the scores API's credentials. Only
//! an admin token gets them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";

/// The relay's stream key, the `/start_stream` relay's stream name, the destinations' keys and
/// the scores API's password and query token.
const KEY: &str = "ingest-K7x9q2w";
const NAME: &str = "compat-S4m8z1v";
const DEST_KEY: &str = "dest-D3v5k0p";
const COMPAT_DEST_KEY: &str = "yt-Y2b6n4r";
const PASSWORD: &str = "pass-P1u8e3";
const QUERY_TOKEN: &str = "query-Q1t6a9";
/// The relay's SRT passphrase, and an SRT destination's passphrase and stream id.
const SRT_PASS: &str = "srt-pass-R5c2h8";
const SRT_DEST_PASS: &str = "srt-dest-G9w3m6";
const SRT_STREAM_ID: &str = "srt-id-T4j7x2";

const SECRETS: [&str; 11] = [
    SRT_PASS,
    SRT_DEST_PASS,
    SRT_STREAM_ID,
    KEY,
    NAME,
    DEST_KEY,
    COMPAT_DEST_KEY,
    PASSWORD,
    QUERY_TOKEN,
    ADMIN,
    READER,
];

/// Fails naming where a secret was found.
fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds {secret}:\n{text}");
    }
}

/// GET `path` with `token`: the status and the body as text.
async fn get(daemon: &Daemon, path: &str, token: Option<&str>) -> (u16, String) {
    let reply = daemon.send("GET", path, "", token).await;
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap_or_default())
}

async fn get_json(daemon: &Daemon, path: &str, token: Option<&str>) -> Value {
    let (status, text) = get(daemon, path, token).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The live events from the start of the history, as `token` gets them, for `listen`.
async fn events(daemon: &Daemon, token: Option<&str>, listen: Duration) -> String {
    let mut request = daemon
        .http
        .get(format!("{}/api/v1/events", daemon.api))
        .header("last-event-id", "0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut reply = request.send().await.expect("GET /api/v1/events");
    let mut text = format!("{}\n", reply.status());
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, reply.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// Every file under `dir`: its path and, for playlists, its text.
fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("a readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            let text = match path.extension().and_then(|e| e.to_str()) {
                Some("m3u8") => std::fs::read_to_string(&path).unwrap_or_default(),
                _ => String::new(),
            };
            out.push((path.display().to_string(), text));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_and_anonymous_callers_never_see_a_secret() {
    let nginx = Nginx::start().await;
    let dest = nginx.url(DEST_KEY);
    let scores = format!("http://scorer:{PASSWORD}@127.0.0.1:1/match?token={QUERY_TOKEN}");
    // An SRT destination nobody answers: it keeps failing, with GStreamer's reasons.
    let srt_dest = format!("srt://127.0.0.1:1?passphrase={SRT_DEST_PASS}&streamid={SRT_STREAM_ID}");
    let config = format!(
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
         [[auth.tokens]]\nname = \"site\"\ntoken = \"{READER}\"\nrole = \"read-only\"\n{}",
        relay_config(
            "final",
            &format!(r#"stream_key = "{KEY}", srt_passphrase = "{SRT_PASS}""#),
            &format!(
                "outputs = [ {{ id = \"youtube\", url = \"{dest}\" }}, \
                 {{ id = \"venue\", url = \"{srt_dest}\" }} ]\n\
                 overlay = {{ scores_url = \"{scores}\", allow_private = true }}"
            ),
        )
    );
    let daemon = Daemon::spawn(&config).await;
    let admin = Some(ADMIN);

    // A relay made the old service's way, pushing to a destination that refuses it.
    let compat_dest = format!("rtmp://127.0.0.1:1/live2/{COMPAT_DEST_KEY}");
    let start = serde_json::json!({"youtube_url": compat_dest, "stream_name": NAME});
    let reply = daemon
        .send("POST", "/start_stream", &start.to_string(), admin)
        .await;
    assert_eq!(reply.status(), 200);
    let reply: Value = reply.json().await.expect("JSON");
    let compat = reply["id"].as_str().expect("an id").to_owned();
    assert_clean("the compatible relay's id", &compat);

    // The caster publishes; the destination goes live, the compatible one keeps failing.
    let _publisher = ffmpeg_publisher(&daemon.publish_url(KEY), 30);
    let relay = |id: String| {
        let daemon = &daemon;
        async move { get_json(daemon, &format!("/api/v1/relays/{id}"), admin).await }
    };
    wait_for(
        "final's destination live",
        Duration::from_secs(20),
        || async {
            let relay = relay("final".into()).await;
            (relay["on_air"]["showing"] == "input"
                && output_of(&relay, "youtube")["state"] == "live")
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the compatible destination to fail",
        Duration::from_secs(20),
        || async {
            let relay = relay(compat.clone()).await;
            output_of(&relay, "youtube")["last_error"]
                .is_string()
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the SRT destination to fail",
        Duration::from_secs(20),
        || async {
            let relay = relay("final".into()).await;
            output_of(&relay, "venue")["last_error"]
                .is_string()
                .then_some(())
        },
    )
    .await;
    wait_for("a segment of final", Duration::from_secs(20), || async {
        let (status, _) = get(&daemon, "/hls/final/master.m3u8", None).await;
        (status == 200).then_some(())
    })
    .await;

    // An admin sees everything.
    let full = relay("final".into()).await;
    assert_eq!(full["ingest"]["stream_key"], KEY, "{full}");
    assert_eq!(full["ingest"]["srt_passphrase"], SRT_PASS, "{full}");
    assert_eq!(output_of(&full, "venue")["url"], srt_dest, "{full}");
    assert_eq!(output_of(&full, "youtube")["url"], dest, "{full}");
    let score = get_json(&daemon, "/api/v1/relays/final/score", admin).await;
    assert_eq!(score["scores_url"], scores, "{score}");
    let streams = get_json(&daemon, "/list_streams", admin).await;
    assert_eq!(streams[NAME]["youtube_url"], compat_dest, "{streams}");
    assert_eq!(streams[KEY]["youtube_url"], dest, "{streams}");

    // A read-only token sees the same shapes, masked.
    let seen = get_json(&daemon, "/api/v1/relays/final", Some(READER)).await;
    assert_eq!(seen["ingest"]["stream_key"], "****", "{seen}");
    assert_eq!(seen["ingest"]["srt_passphrase"], "****", "{seen}");
    assert_eq!(
        output_of(&seen, "venue")["url"],
        "srt://127.0.0.1:1?****",
        "{seen}"
    );
    assert_eq!(
        output_of(&seen, "youtube")["url"],
        format!("rtmp://127.0.0.1:{}/live/****", nginx.port),
        "{seen}"
    );
    let score = get_json(&daemon, "/api/v1/relays/final/score", Some(READER)).await;
    assert_eq!(
        score["scores_url"], "http://****@127.0.0.1:1/match?****",
        "{score}"
    );
    let streams = get_json(&daemon, "/list_streams", Some(READER)).await;
    assert_eq!(
        streams[&compat]["youtube_url"], "rtmp://127.0.0.1:1/live2/****",
        "{streams}"
    );
    assert!(streams["final"].is_object(), "{streams}");

    // Every GET route, as a read-only token and as nobody.
    let paths = [
        "/api/v1/relays".to_owned(),
        "/api/v1/relays/final".to_owned(),
        format!("/api/v1/relays/{compat}"),
        "/api/v1/relays/final/score".to_owned(),
        format!("/api/v1/relays/{compat}/score"),
        "/list_streams".to_owned(),
        "/metrics".to_owned(),
        "/healthz".to_owned(),
        "/hls/final/master.m3u8".to_owned(),
        format!("/hls/{compat}/master.m3u8"),
    ];
    for token in [Some(READER), None] {
        for path in &paths {
            let (status, text) = get(&daemon, path, token).await;
            assert_clean(&format!("GET {path} ({status}, token {token:?})"), &text);
        }
        let events = events(&daemon, token, Duration::from_millis(1500)).await;
        assert_clean(&format!("the events (token {token:?})"), &events);
    }
    let (status, metrics) = get(&daemon, "/metrics", Some(READER)).await;
    assert!(
        status == 200 && metrics.contains("relay=\"final\""),
        "{status} {metrics}"
    );
    let events = events(&daemon, Some(READER), Duration::from_millis(500)).await;
    assert!(events.contains("output_state"), "{events}");

    // The HLS tree, as served and on disk: names and playlists.
    let (_, master) = get(&daemon, "/hls/final/master.m3u8", None).await;
    for uri in master.lines().filter(|l| l.ends_with(".m3u8")) {
        let path = format!("/hls/final/{uri}");
        let text = wait_for(&path, Duration::from_secs(20), || async {
            let (status, text) = get(&daemon, &path, None).await;
            (status == 200).then_some(text)
        })
        .await;
        assert_clean(uri, &text);
    }
    let mut files = Vec::new();
    walk(&daemon.dir.path().join("data/hls"), &mut files);
    assert!(files.len() > 2, "{files:?}");
    for (path, text) in &files {
        assert_clean(path, path);
        assert_clean(path, text);
    }

    // The log, through a publish, a live push, a failing one and a stop.
    let reply = daemon
        .send(
            "POST",
            "/stop_stream",
            &format!(r#"{{"stream_name":"{NAME}"}}"#),
            admin,
        )
        .await;
    assert_eq!(reply.status(), 200);
    let log = daemon.log();
    assert!(log.contains("output state"), "{log}");
    assert_clean("the daemon's log", &log);
}
