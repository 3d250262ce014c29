//! The HTTP API over real HTTP, without media: relay CRUD, error bodies, and the routes
//! compatible with the older relay service.

mod common;

use std::time::Duration;

use common::*;

/// Sends raw bytes over HTTP/1.1 and returns everything the server answers.
async fn raw_http(api: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_crud_and_errors() {
    let daemon = Daemon::start("").await;
    let (status, body) = daemon.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(
        daemon.get("/api/v1/relays").await,
        (200, serde_json::json!([]))
    );

    let spec = r#"{"id":"final","ingest":{"stream_key":"final-key"},
                   "outputs":[{"id":"youtube","url":"rtmp://127.0.0.1:1/live2/KEY"}]}"#;
    let (status, body) = daemon.post("/api/v1/relays", spec).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "stopped");
    assert_eq!(body["hls"]["master"], "/hls/final/master.m3u8");
    assert_eq!(body["outputs"][0]["state"], "stopped");

    // Duplicates conflict, by id and by stream key.
    let (status, body) = daemon.post("/api/v1/relays", spec).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "relay_exists");
    let (status, body) = daemon
        .post(
            "/api/v1/relays",
            r#"{"id":"other","ingest":{"stream_key":"final-key"}}"#,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stream_key_in_use");

    // Malformed bodies get a 400 that says what is wrong.
    let cases = [
        ("{not json", "invalid_body", "key must be a string"),
        (
            r#"{"id":"x","ingest":{"stream_key":"k"},"outptus":[]}"#,
            "invalid_body",
            "outptus",
        ),
        (
            r#"{"ingest":{"stream_key":"k"}}"#,
            "invalid_body",
            "missing field `id`",
        ),
        (
            r#"{"id":"a b","ingest":{"stream_key":"k"}}"#,
            "invalid_relay",
            "id:",
        ),
        (
            r#"{"id":"x","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"http://x"}]}"#,
            "invalid_relay",
            "outputs[0].url",
        ),
        ("", "invalid_body", "empty"),
    ];
    for (body, code, needle) in cases {
        let (status, reply) = daemon.post("/api/v1/relays", body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        assert_eq!(reply["error"]["code"], code, "{body} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body} -> {message}");
    }

    // A body announced over 1 MiB is refused before it is read.
    let reply = raw_http(
        &daemon.api,
        "POST /api/v1/relays HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: 2097152\r\nConnection: close\r\n\r\n{",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body_too_large"), "{reply}");

    // Unknown relays and routes are 404 with a JSON error.
    let (status, body) = daemon.get("/api/v1/relays/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("relay_not_found"))
    );
    let (status, body) = daemon.post("/api/v1/relays/nope/start", "").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = daemon.get("/api/v1/nothing").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].is_string());

    // HLS serving cannot leave its directory.
    let (status, _) = daemon.get("/hls/../../etc/passwd").await;
    assert_eq!(status, 404);

    // A rendition taller than the program is refused at start, with the field named.
    let (status, _) = daemon
        .post(
            "/api/v1/relays",
            r#"{"id":"big","ingest":{"stream_key":"big-key"},"hls":{"renditions":["1080p"]}}"#,
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = daemon.post("/api/v1/relays/big/start", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_relay");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("hls.renditions[0]") && message.contains("never upscale"),
        "{message}"
    );

    // Ladder and destination fields are checked with the field named.
    let cases = [
        (
            r#""hls":{"renditions":["720p","720p"]}"#,
            "hls.renditions[1]",
        ),
        (
            r#""hls":{"renditions":[{"name":"mid","width":961,"height":540,"video_kbps":2000}]}"#,
            "hls.renditions[0].width",
        ),
        (r#""hls":{"renditions":[{"name":"mid"}]}"#, "preset name"),
        (r#""hls":{"format":"fmp4"}"#, "hls.format"),
        (
            r#""outputs":[{"id":"y","url":"rtmp://h/a/k","preset":"vimeo"}]"#,
            "outputs[0].preset",
        ),
        (
            r#""outputs":[{"id":"y","url":"rtmp://h/a/k","preset":"twitch","video_kbps":9000}]"#,
            "outputs[0].video_kbps",
        ),
        (
            r#""transcode":false,"overlay":{}"#,
            "overlay: an overlay needs decoding",
        ),
    ];
    for (extra, needle) in cases {
        let body = format!(r#"{{"id":"x","ingest":{{"stream_key":"x-key"}},{extra}}}"#);
        let (status, reply) = daemon.post("/api/v1/relays", &body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body} -> {message}");
    }

    // Destinations are added and removed over the API (here on a stopped relay).
    let (status, body) = daemon
        .post(
            "/api/v1/relays/final/outputs",
            r#"{"id":"twitch","url":"rtmp://live.twitch.tv/app/KEY","preset":"twitch","height":480}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outputs"][1]["id"], "twitch", "{body}");
    assert_eq!(body["outputs"][1]["preset"], "twitch", "{body}");
    assert_eq!(body["outputs"][1]["state"], "stopped", "{body}");
    let (status, body) = daemon
        .post(
            "/api/v1/relays/final/outputs",
            r#"{"id":"twitch","url":"rtmp://h/a/k"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("output_exists")),
        "{body}"
    );
    let (status, body) = daemon
        .post(
            "/api/v1/relays/final/outputs",
            r#"{"id":"x","url":"ftp://h"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("url:"),
        "{body}"
    );
    let (status, _) = daemon
        .post(
            "/api/v1/relays/nope/outputs",
            r#"{"id":"x","url":"rtmp://h/a/k"}"#,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        daemon.delete("/api/v1/relays/final/outputs/nope").await,
        404
    );
    assert_eq!(
        daemon.delete("/api/v1/relays/final/outputs/twitch").await,
        204
    );
    let relay = daemon.relay("final").await;
    assert_eq!(
        relay["outputs"].as_array().map(Vec::len),
        Some(1),
        "{relay}"
    );

    // Start, stop, delete.
    // A started relay runs its program at once, on the slate.
    let (status, body) = daemon.post("/api/v1/relays/final/start", "").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("starting")));
    let (status, body) = daemon.post("/api/v1/relays/final/stop", "").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("stopped")));
    assert_eq!(daemon.delete("/api/v1/relays/final").await, 204);
    assert_eq!(daemon.get("/api/v1/relays/final").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn compatible_routes_behave_as_the_old_service() {
    let daemon = Daemon::start("").await;
    let url = "rtmp://127.0.0.1:1/live2/KEY";

    for body in [
        r#"{"stream_name":"match1"}"#.to_owned(),
        format!(r#"{{"youtube_url":"{url}"}}"#),
        "{broken".to_owned(),
    ] {
        let (status, reply) = daemon.post("/start_stream", &body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        assert!(reply["error"].is_string(), "old error body: {reply}");
    }
    let (status, reply) = daemon
        .post("/start_stream", r#"{"stream_name":"match1"}"#)
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("youtube_url"),
        "{reply}"
    );

    let start = format!(r#"{{"youtube_url":"{url}","stream_name":"match1"}}"#);
    let (status, reply) = daemon.post("/start_stream", &start).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["message"], "Stream match1 started successfully");
    assert_eq!(reply["youtube_url"], url);
    let (status, reply) = daemon.post("/start_stream", &start).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["error"].is_string());

    // The relay it made is visible in the v1 API too, running on the slate until the caster
    // comes.
    daemon
        .wait_on_air("match1", "slate", Duration::from_secs(20))
        .await;
    let relay = daemon
        .wait_state("match1", "live", Duration::from_secs(20))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");

    let listed = wait_for("uptime to rise", Duration::from_secs(5), || async {
        let (_, list) = daemon.get("/list_streams").await;
        (list["match1"]["uptime"].as_f64().unwrap_or(0.0) > 0.0).then_some(list)
    })
    .await;
    assert_eq!(listed["match1"]["youtube_url"], url);
    assert!(listed["match1"]["uptime"].is_f64());

    let (status, reply) = daemon
        .post("/stop_stream", r#"{"stream_name":"nope"}"#)
        .await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply["error"].is_string());
    let (status, reply) = daemon.post("/stop_stream", "{}").await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = daemon
        .post("/stop_stream", r#"{"stream_name":"match1"}"#)
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["message"], "Stream match1 stopped successfully");
    assert_eq!(
        daemon.get("/list_streams").await,
        (200, serde_json::json!({}))
    );
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[program]\nwidht = 1280\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scorecast"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .expect("run scorecast");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("widht"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[relay]]\nid = \"a\"\ningest = { stream_key = \"k\" }\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scorecast"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .expect("run scorecast");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
