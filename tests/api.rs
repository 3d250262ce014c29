//! The HTTP API over real HTTP, without media: relay CRUD, error bodies, and the routes
//! compatible with the older relay service.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

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

/// Sends one request over raw HTTP/1.1, so the path reaches the server exactly as written,
/// and returns the status and the JSON body.
async fn raw_request(api: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    parse_reply(&raw_http(api, &request).await)
}

/// The status and JSON body of a raw HTTP/1.1 reply (warp's JSON replies carry a length).
fn parse_reply(reply: &str) -> (u16, Value) {
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Sends `head` and then a chunked body of `chunks` chunks of 64 KiB, reading the reply while
/// it writes (the server may answer and close before the body is all sent).
async fn chunked_request(api: &str, head: &str, chunks: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "{head}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
        write.write_all(head.as_bytes()).await?;
        for _ in 0..chunks {
            write.write_all(chunk.as_bytes()).await?;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut reply)).await;
    // The server may close before the body is all written; that is what is tested.
    let _ = writer.await;
    parse_reply(&String::from_utf8_lossy(&reply))
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
        "POST /api/v1/relays HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
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

    // HLS serving cannot leave its directory (sent raw: an HTTP client would resolve `..`).
    for path in [
        "/hls/../../etc/passwd",
        "/hls/%2e%2e/%2e%2e/etc/passwd",
        "/hls/..%2f..%2fetc%2fpasswd",
        "/hls/%2fetc%2fpasswd",
    ] {
        let (status, _) = raw_request(&daemon.api, "GET", path, "").await;
        assert_eq!(status, 404, "{path}");
    }

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
        (r#""hls":{"format":"mp4"}"#, "expected `ts` or `fmp4`"),
        (
            r#""hls":{"format":"fmp4","low_latency":true}"#,
            "hls.low_latency",
        ),
        (r#""hls":{"dvr":"forever"}"#, "hls.dvr"),
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
    // Its public id is not the stream key, and says nothing of it.
    let id = reply["id"].as_str().expect("the relay's id").to_owned();
    assert!(id.starts_with("s-") && !id.contains("match1"), "{reply}");
    assert_eq!(reply["hls"], format!("/hls/{id}/master.m3u8"), "{reply}");
    let (status, reply) = daemon.post("/start_stream", &start).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["error"].is_string());

    // The relay it made is visible in the v1 API too, running on the slate until the caster
    // comes.
    daemon
        .wait_on_air(&id, "slate", Duration::from_secs(20))
        .await;
    let relay = daemon
        .wait_state(&id, "live", Duration::from_secs(20))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");
    assert_eq!(relay["ingest"]["stream_key"], "match1", "{relay}");
    assert_eq!(daemon.get("/api/v1/relays/match1").await.0, 404);

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

/// One bad request and what it must get: status, `/api/v1` error code (`None` on the
/// compatible routes, whose body is `{"error": "..."}`), and words the message must hold.
struct Bad {
    method: &'static str,
    path: String,
    body: String,
    status: u16,
    code: Option<&'static str>,
    needle: String,
}

fn bad(
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<String>,
    status: u16,
    code: Option<&'static str>,
    needle: impl Into<String>,
) -> Bad {
    Bad {
        method,
        path: path.into(),
        body: body.into(),
        status,
        code,
        needle: needle.into(),
    }
}

/// Checks one reply against what the bad request must get.
fn check_bad(case: &Bad, status: u16, reply: &Value) {
    let what = format!(
        "{} {} {:.80} -> {status} {reply}",
        case.method, case.path, case.body
    );
    assert_eq!(status, case.status, "{what}");
    let message = match case.code {
        Some(code) => {
            assert_eq!(reply["error"]["code"], code, "{what}");
            reply["error"]["message"].as_str()
        }
        None => reply["error"].as_str(),
    };
    let message = message.unwrap_or_else(|| panic!("no error message: {what}"));
    assert!(
        message.contains(&case.needle),
        "{what}: wants {:?}",
        case.needle
    );
}

/// Malformed JSON, unknown fields, huge bodies and bad ids get a 4xx naming the field or the
/// limit on every route that takes a body or an id, and a running relay is untouched by them.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_and_leaves_a_running_relay_alone() {
    let daemon = Daemon::start("").await;
    let api = daemon.api.clone();
    let url = "rtmp://127.0.0.1:1/live2/KEY";
    let (status, body) = daemon
        .post(
            "/api/v1/relays",
            &json!({"id": "live", "ingest": {"stream_key": "live-key"},
                    "outputs": [{"id": "youtube", "url": url}]})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = daemon.post("/api/v1/relays/live/start", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "starting", "{body}");
    let score = r#"{"home":{"name":"NAVI","score":2},"away":{"name":"G2","score":0}}"#;
    let (status, body) = raw_request(&api, "PUT", "/api/v1/relays/live/score", score).await;
    assert_eq!(status, 200, "{body}");
    let before = daemon
        .wait_on_air("live", "slate", Duration::from_secs(20))
        .await;
    let (_, score_before) = daemon.get("/api/v1/relays/live/score").await;

    let long = "x".repeat(65);
    let relay = |id: &str, key: &str| json!({"id": id, "ingest": {"stream_key": key}}).to_string();
    let output = r#"{"id":"twitch","url":"rtmp://h/a/k"}"#;
    let invalid_body = Some("invalid_body");
    let invalid_relay = Some("invalid_relay");
    let invalid_id = Some("invalid_id");
    let mut cases = vec![
        // Malformed JSON, on every route with a body.
        bad("POST", "/api/v1/relays", r#"{"id":"#, 400, invalid_body, "invalid JSON body"),
        bad("PATCH", "/api/v1/relays/live", "{not json", 400, invalid_body, "invalid JSON body"),
        bad("PATCH", "/api/v1/relays/live", "", 400, invalid_body, "empty"),
        bad("PATCH", "/api/v1/relays/live", "[]", 400, invalid_body, "JSON object"),
        bad("POST", "/api/v1/relays/live/outputs", "[1,", 400, invalid_body, "invalid JSON body"),
        bad("PUT", "/api/v1/relays/live/score", r#"{"home":"#, 400, invalid_body, "invalid JSON body"),
        // Unknown fields, named.
        bad(
            "POST",
            "/api/v1/relays",
            r#"{"id":"x","ingest":{"stream_key":"x-key"},"outptus":[]}"#,
            400,
            invalid_body,
            "unknown field `outptus`",
        ),
        bad(
            "POST",
            "/api/v1/relays",
            r#"{"id":"x","ingest":{"stream_key":"x-key","bogus":1}}"#,
            400,
            invalid_body,
            "unknown field `bogus`",
        ),
        bad("PATCH", "/api/v1/relays/live", r#"{"outptus":[]}"#, 400, invalid_body, "unknown field `outptus`"),
        bad(
            "POST",
            "/api/v1/relays/live/outputs",
            r#"{"id":"twitch","url":"rtmp://h/a/k","colour":"red"}"#,
            400,
            invalid_body,
            "unknown field `colour`",
        ),
        bad(
            "PUT",
            "/api/v1/relays/live/score",
            r#"{"home":{"name":"A","score":1},"away":{"name":"B","score":2},"extra":1}"#,
            400,
            invalid_body,
            "unknown field `extra`",
        ),
        // Bad ids in bodies, with the field and the rule named.
        bad("POST", "/api/v1/relays", relay("", "x-key"), 400, invalid_relay, "id: must be 1 to 64 characters"),
        bad("POST", "/api/v1/relays", relay(&long, "x-key"), 400, invalid_relay, "id: must be 1 to 64 characters"),
        bad("POST", "/api/v1/relays", relay("..", "x-key"), 400, invalid_relay, r#"id: ".." may only hold"#),
        bad("POST", "/api/v1/relays", relay("../etc", "x-key"), 400, invalid_relay, "id: "),
        bad("POST", "/api/v1/relays", relay("x", "../k"), 400, invalid_relay, "ingest.stream_key: "),
        bad(
            "POST",
            "/api/v1/relays",
            json!({"id": "x", "ingest": {"stream_key": "x-key"}, "outputs": [{"id": "a/b", "url": url}]})
                .to_string(),
            400,
            invalid_relay,
            "outputs[0].id: ",
        ),
        bad(
            "POST",
            "/api/v1/relays/live/outputs",
            json!({"id": "..", "url": url}).to_string(),
            400,
            invalid_relay,
            r#"id: ".." may only hold"#,
        ),
        bad("PATCH", "/api/v1/relays/live", r#"{"id":"other"}"#, 400, invalid_relay, "id: a relay's id cannot change"),
        bad(
            "PATCH",
            "/api/v1/relays/live",
            r#"{"ingest":{"stream_key":"a b"}}"#,
            400,
            invalid_relay,
            "ingest.stream_key: ",
        ),
        // A good patch on a running relay is refused, and says why.
        bad("PATCH", "/api/v1/relays/live", r#"{"outputs":[]}"#, 409, Some("relay_state"), "stop it before changing it"),
        // Empty ids in the path.
        bad("POST", "/api/v1/relays//start", "", 400, invalid_id, "id in the path: must be 1 to 64 characters"),
        bad("GET", "/api/v1/relays//score", "", 400, invalid_id, "id in the path: must be 1 to 64"),
        bad("DELETE", "/api/v1/relays/", "", 400, invalid_id, "id in the path: must be 1 to 64"),
        bad("PATCH", "/api/v1/relays/", "{}", 400, invalid_id, "id in the path: must be 1 to 64"),
        bad(
            "DELETE",
            "/api/v1/relays/live/outputs/",
            "",
            400,
            invalid_id,
            "output_id in the path: must be 1 to 64",
        ),
    ];
    // Bad ids in the path, on every route that takes one.
    for id in ["..", "%2e%2e", "a%2Fb", ".hidden", "a%20b", long.as_str()] {
        let needle = if id.len() > 64 {
            "id in the path: must be 1 to 64 characters".to_owned()
        } else {
            format!("id in the path: {:?} may only hold", id)
        };
        for (method, path, body) in [
            ("GET", format!("/api/v1/relays/{id}"), ""),
            ("PATCH", format!("/api/v1/relays/{id}"), "{}"),
            ("DELETE", format!("/api/v1/relays/{id}"), ""),
            ("POST", format!("/api/v1/relays/{id}/start"), ""),
            ("POST", format!("/api/v1/relays/{id}/stop"), ""),
            ("POST", format!("/api/v1/relays/{id}/outputs"), output),
            ("DELETE", format!("/api/v1/relays/{id}/outputs/youtube"), ""),
            ("GET", format!("/api/v1/relays/{id}/score"), ""),
            ("PUT", format!("/api/v1/relays/{id}/score"), score),
        ] {
            cases.push(bad(method, path, body, 400, invalid_id, needle.clone()));
        }
        cases.push(bad(
            "DELETE",
            format!("/api/v1/relays/live/outputs/{id}"),
            "",
            400,
            invalid_id,
            format!("output_{needle}"),
        ));
    }
    // The compatible routes: the same checks, in the old service's error body.
    let start =
        |name: &str, url: &str| json!({"youtube_url": url, "stream_name": name}).to_string();
    cases.extend([
        bad(
            "POST",
            "/start_stream",
            r#"{"youtube_url":"#,
            400,
            None,
            "invalid JSON body",
        ),
        bad(
            "POST",
            "/start_stream",
            json!({"youtube_url": url, "stream_name": "m", "extra": 1}).to_string(),
            400,
            None,
            "unknown field `extra`",
        ),
        bad(
            "POST",
            "/start_stream",
            start("../x", url),
            400,
            None,
            r#"stream_name: "../x" may only hold"#,
        ),
        bad(
            "POST",
            "/start_stream",
            start("a/b", url),
            400,
            None,
            "stream_name: ",
        ),
        bad(
            "POST",
            "/start_stream",
            start(&long, url),
            400,
            None,
            "stream_name: must be 1 to 64 characters",
        ),
        bad(
            "POST",
            "/start_stream",
            start("m", "http://x"),
            400,
            None,
            "youtube_url: ",
        ),
        bad(
            "POST",
            "/start_stream",
            start("live-key", url),
            409,
            None,
            "Stream live-key is already active",
        ),
        bad(
            "POST",
            "/stop_stream",
            r#"{"stream_name":"#,
            400,
            None,
            "invalid JSON body",
        ),
        bad(
            "POST",
            "/stop_stream",
            r#"{"stream_name":"live-key","force":true}"#,
            400,
            None,
            "unknown field `force`",
        ),
        bad(
            "POST",
            "/stop_stream",
            r#"{"stream_name":"../live-key"}"#,
            400,
            None,
            "stream_name: ",
        ),
        bad(
            "POST",
            "/stop_stream",
            json!({"stream_name": long}).to_string(),
            400,
            None,
            "stream_name: must be 1 to 64",
        ),
    ]);
    for case in &cases {
        let (status, reply) = raw_request(&api, case.method, &case.path, &case.body).await;
        check_bad(case, status, &reply);
    }

    // Bodies over 1 MiB, announced or chunked, on every route with a body.
    let limit = "1048576 bytes";
    for (method, path, code) in [
        ("POST", "/api/v1/relays", Some("body_too_large")),
        ("PATCH", "/api/v1/relays/live", Some("body_too_large")),
        (
            "POST",
            "/api/v1/relays/live/outputs",
            Some("body_too_large"),
        ),
        ("PUT", "/api/v1/relays/live/score", Some("body_too_large")),
        ("POST", "/start_stream", None),
        ("POST", "/stop_stream", None),
    ] {
        let case = bad(method, path, "", 413, code, limit);
        let announced = raw_http(
            &api,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Content-Length: 2097152\r\nConnection: close\r\n\r\n{{"
            ),
        )
        .await;
        let (status, reply) = parse_reply(&announced);
        check_bad(&case, status, &reply);
        let (status, reply) = chunked_request(&api, &format!("{method} {path} HTTP/1.1"), 17).await;
        check_bad(&case, status, &reply);
    }

    // Nothing was made, and the running relay is as it was: same spec, same state, same score,
    // and never restarted (its uptime only grew).
    let (_, list) = daemon.get("/api/v1/relays").await;
    let ids: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["live"], "{list}");
    let after = daemon.relay("live").await;
    let (up_before, up_after) = (&before["uptime"], &after["uptime"]);
    assert!(
        up_after.as_f64() >= up_before.as_f64() && up_before.as_f64().is_some(),
        "uptime {up_before} then {up_after}"
    );
    assert_eq!(lasting(&after), lasting(&before));
    let (_, mut score_after) = daemon.get("/api/v1/relays/live/score").await;
    let mut score_before = score_before;
    score_after["age"].take();
    score_before["age"].take();
    assert_eq!(score_after, score_before);
    assert_eq!(score_after["source"], "manual", "{score_after}");
    let (_, streams) = daemon.get("/list_streams").await;
    assert!(streams["live-key"].is_object(), "{streams}");
}

/// What a relay's JSON keeps while nothing is done to it: its spec, its state and what it shows,
/// but not its counters.
fn lasting(relay: &Value) -> Value {
    let outputs: Vec<Value> = relay["outputs"]
        .as_array()
        .map(|outputs| {
            outputs
                .iter()
                .map(|o| json!({"id": o["id"], "url": o["url"], "preset": o["preset"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": relay["id"],
        "ingest": relay["ingest"],
        "transcode": relay["transcode"],
        "state": relay["state"],
        "showing": relay["on_air"]["showing"],
        "publisher": relay["publisher"],
        "outputs": outputs,
    })
}

/// PATCH changes a stopped relay (a JSON merge patch of its spec) and keeps a hand-set score.
#[tokio::test(flavor = "multi_thread")]
async fn patch_changes_a_stopped_relay() {
    let daemon = Daemon::start("").await;
    let url = "rtmp://127.0.0.1:1/live2/KEY";
    for (id, key) in [("a", "a-key"), ("b", "b-key")] {
        let spec =
            json!({"id": id, "ingest": {"stream_key": key}, "overlay": {"stale_after": "5s"}});
        let (status, body) = daemon.post("/api/v1/relays", &spec.to_string()).await;
        assert_eq!(status, 201, "{body}");
    }
    let score = r#"{"home":{"name":"NAVI","score":2},"away":{"name":"G2","score":0}}"#;
    let (status, _) = raw_request(&daemon.api, "PUT", "/api/v1/relays/a/score", score).await;
    assert_eq!(status, 200);

    let patch = json!({"overlay": null, "hls": {"renditions": ["480p", "360p"]},
                       "outputs": [{"id": "yt", "url": url}]});
    let (status, body) =
        raw_request(&daemon.api, "PATCH", "/api/v1/relays/a", &patch.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("overlay").is_none(), "{body}");
    assert_eq!(body["hls"]["renditions"], json!(["480p", "360p"]), "{body}");
    assert_eq!(body["outputs"][0]["id"], "yt", "{body}");
    assert_eq!(body["state"], "stopped", "{body}");
    assert_eq!(daemon.relay("a").await["outputs"][0]["url"], url);
    let (_, board) = daemon.get("/api/v1/relays/a/score").await;
    assert_eq!(
        (
            board["source"].as_str(),
            board["scoreboard"]["home"]["score"].as_str()
        ),
        (Some("manual"), Some("2")),
        "{board}"
    );

    // Another relay's stream key, an unknown relay, a running relay.
    let (status, body) = raw_request(
        &daemon.api,
        "PATCH",
        "/api/v1/relays/a",
        r#"{"ingest":{"stream_key":"b-key"}}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("stream_key_in_use")),
        "{body}"
    );
    let (status, body) = raw_request(&daemon.api, "PATCH", "/api/v1/relays/nope", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("relay_not_found")),
        "{body}"
    );
    let (status, _) = daemon.post("/api/v1/relays/a/start", "").await;
    assert_eq!(status, 200);
    let (status, body) = raw_request(
        &daemon.api,
        "PATCH",
        "/api/v1/relays/a",
        r#"{"outputs":[]}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("relay_state")),
        "{body}"
    );
    assert_eq!(daemon.relay("a").await["outputs"][0]["id"], "yt");
}

/// `GET /api/v1/openapi.json` is the running router's truth: every documented route answers
/// (asked about a relay no one has, with a body that is not JSON, so nothing changes), and no
/// other method on a documented path is routed.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_router() {
    let daemon = Daemon::start("").await;
    let (status, doc) = daemon.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 16, "{doc}");
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "nope")
            .replace("{output_id}", "nope")
            .replace("{name}", "nope")
            .replace("{recording}", "123")
            .replace("{seconds}", "60")
            .replace("{relay}", "nope")
            .replace("{rendition}", "720p")
            .replace("{file}", "index.m3u8");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let documented = item.get(method.to_lowercase()).is_some();
            let reply = daemon.send(method, &concrete, "{", None).await;
            let status = reply.status().as_u16();
            // A 2xx may be a stream that never ends (the events): its body is not read.
            let body: Value = if reply.status().is_success() {
                Value::Null
            } else {
                reply.json().await.unwrap_or(Value::Null)
            };
            let routed =
                !(status == 405 || (status == 404 && body["error"]["message"] == "no such route"));
            assert_eq!(
                routed, documented,
                "{method} {path} (as {concrete}): {status} {body}"
            );
        }
    }
}
