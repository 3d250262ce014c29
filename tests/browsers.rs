//! What a hostile web page can do to the API, over real HTTP against the daemon: cross-site
//! form and fetch POSTs (CSRF) and DNS rebinding are refused and change nothing, while the
//! console (same origin), curl-style scripts, allowed origins and hosts, and HLS players keep
//! working.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const EVIL: &str = "http://evil.example";
const RELAY: &str = r#"{"id":"final","ingest":{"stream_key":"final-key"}}"#;
const OUTPUT: &str = r#"{"id":"extra","url":"rtmp://127.0.0.1:1/live/exfiltrate"}"#;

/// Sends a request with exactly these headers (besides what the HTTP client adds: Host, unless
/// given, and Content-Length); returns the status and the JSON body.
async fn request(
    daemon: &Daemon,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = daemon.http.request(
        method.parse().expect("an HTTP method"),
        format!("{}{path}", daemon.api),
    );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let reply = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// The daemon's `host:port`, as a browser on the same origin sends it in `Host`.
fn authority(daemon: &Daemon) -> &str {
    daemon.api.trim_start_matches("http://")
}

/// Asserts a refusal: its status and, in the `/api/v1` shape, its code.
fn assert_refused(reply: (u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(reply.0, status, "{what}: {}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{what}: {}", reply.1);
}

/// The relay list and relay `final`'s JSON.
async fn snapshot(daemon: &Daemon) -> (Value, Value) {
    let (status, list) = daemon.get("/api/v1/relays").await;
    assert_eq!(status, 200, "{list}");
    (list, daemon.relay("final").await)
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_change_nothing() {
    let daemon = Daemon::start("").await;
    // curl-style: JSON, no Origin.
    let (status, body) = daemon.post("/api/v1/relays", RELAY).await;
    assert_eq!(status, 201, "{body}");
    let before = snapshot(&daemon).await;

    let evil = ("origin", EVIL);
    let plain = ("content-type", "text/plain;charset=UTF-8");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json");
    let spec = r#"{"id":"evil","ingest":{"stream_key":"evil-key"}}"#;

    // What a page on evil.example can send without a preflight: a form or a text/plain
    // fetch, creating a relay or adding a destination to the existing one.
    let r = request(
        &daemon,
        "POST",
        "/api/v1/relays",
        &[evil, plain],
        Some(spec),
    )
    .await;
    assert_refused(r, 403, "forbidden_origin", "text/plain create");
    let path = "/api/v1/relays/final/outputs";
    let r = request(&daemon, "POST", path, &[evil, plain], Some(OUTPUT)).await;
    assert_refused(r, 403, "forbidden_origin", "text/plain output");
    let r = request(&daemon, "POST", path, &[evil, form], Some("id=extra")).await;
    assert_refused(r, 403, "forbidden_origin", "form output");
    // Body-less ones too: start, delete.
    let r = request(&daemon, "POST", "/api/v1/relays/final/start", &[evil], None).await;
    assert_refused(r, 403, "forbidden_origin", "body-less start");
    let r = request(&daemon, "DELETE", "/api/v1/relays/final", &[evil], None).await;
    assert_refused(r, 403, "forbidden_origin", "delete");
    // JSON with a foreign Origin (which a browser only sends after a preflight that this
    // server never answers, but a refusal must not depend on that).
    let r = request(&daemon, "POST", "/api/v1/relays", &[evil, json], Some(spec)).await;
    assert_refused(r, 403, "forbidden_origin", "JSON create");
    let r = request(&daemon, "POST", path, &[evil, json], Some(OUTPUT)).await;
    assert_refused(r, 403, "forbidden_origin", "JSON output");
    // A browser that sends no Origin (an old one, or a privacy setting): the body is not JSON.
    let r = request(&daemon, "POST", path, &[plain], Some(OUTPUT)).await;
    assert_refused(r, 415, "unsupported_media_type", "text/plain, no Origin");
    let r = request(&daemon, "POST", path, &[], Some(OUTPUT)).await;
    assert_refused(r, 415, "unsupported_media_type", "no Content-Type");
    let score = r#"{"home":{"name":"A","score":9},"away":{"name":"B","score":0}}"#;
    let r = request(
        &daemon,
        "PUT",
        "/api/v1/relays/final/score",
        &[plain],
        Some(score),
    )
    .await;
    assert_refused(r, 415, "unsupported_media_type", "score");
    // The compatible routes answer in their old shape.
    let start = r#"{"youtube_url":"rtmp://127.0.0.1:1/live2/KEY","stream_name":"evil-key"}"#;
    for (headers, status) in [(&[evil, plain][..], 403), (&[plain][..], 415)] {
        let (got, body) = request(&daemon, "POST", "/start_stream", headers, Some(start)).await;
        assert_eq!(got, status, "{body}");
        assert!(body["error"].is_string(), "old error body: {body}");
    }
    let r = request(&daemon, "GET", "/list_streams", &[evil], None).await;
    assert_eq!(r.0, 403, "{}", r.1);
    assert!(r.1["error"].is_string(), "old error body: {}", r.1);

    assert_eq!(
        snapshot(&daemon).await,
        before,
        "a refused request changed something"
    );

    // The console: same origin, JSON bodies, and its body-less POSTs.
    let own = format!("http://{}", authority(&daemon));
    let console = ("origin", own.as_str());
    let (status, body) = request(&daemon, "POST", path, &[console, json], Some(OUTPUT)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        output_of(&daemon.relay("final").await, "extra")["id"],
        "extra"
    );
    let (status, body) = request(
        &daemon,
        "DELETE",
        "/api/v1/relays/final/outputs/extra",
        &[console],
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // curl: JSON with a charset, and `curl -X POST` with no body and no Content-Type.
    let utf8 = ("content-type", "application/json; charset=utf-8");
    let (status, body) = request(&daemon, "POST", path, &[utf8], Some(OUTPUT)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = request(&daemon, "POST", "/api/v1/relays/final/start", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(
        &daemon,
        "POST",
        "/api/v1/relays/final/stop",
        &[console],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_origin_may_use_the_api() {
    let daemon = Daemon::start("[server]\nallowed_origins = [\"https://ops.example.com\"]\n").await;
    let json = ("content-type", "application/json");
    let other = ("origin", "https://other.example.com");
    let r = request(
        &daemon,
        "POST",
        "/api/v1/relays",
        &[other, json],
        Some(RELAY),
    )
    .await;
    assert_refused(r, 403, "forbidden_origin", "an origin not listed");
    assert_eq!(
        daemon.get("/api/v1/relays").await,
        (200, Value::Array(vec![]))
    );

    let ops = ("origin", "https://ops.example.com");
    let (status, body) =
        request(&daemon, "POST", "/api/v1/relays", &[ops, json], Some(RELAY)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = request(&daemon, "GET", "/api/v1/relays/final", &[ops], None).await;
    assert_eq!(
        (status, &body["id"]),
        (200, &Value::from("final")),
        "{body}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_rebinding_is_refused_and_hls_is_still_served() {
    let config = format!("{TEST_PROGRAM}[server]\nallowed_hosts = [\"scorecast.test\"]\n");
    let daemon = Daemon::start(&config).await;
    let (status, body) = daemon.post("/api/v1/relays", RELAY).await;
    assert_eq!(status, 201, "{body}");
    // A body-less POST, as operators' scripts send it: the relay runs on the slate and
    // writes HLS.
    let (status, body) = request(&daemon, "POST", "/api/v1/relays/final/start", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let (_, master) = wait_for("the master playlist", Duration::from_secs(30), || {
        daemon.get_text("/hls/final/master.m3u8")
    })
    .await;
    let before = snapshot(&daemon).await;

    // evil.example, rebound to 127.0.0.1: its page's requests carry its own name as Host, and
    // as Origin (so the Origin rule alone would let them through).
    let port = authority(&daemon).rsplit(':').next().unwrap_or_default();
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://{rebound_host}");
    let rebound = [
        ("host", rebound_host.as_str()),
        ("origin", rebound_origin.as_str()),
    ];
    for path in [
        "/api/v1/relays",
        "/api/v1/relays/final",
        "/api/v1/events",
        "/metrics",
        "/",
    ] {
        let (status, body) = request(&daemon, "GET", path, &rebound, None).await;
        assert_eq!(status, 403, "GET {path}: {body}");
        assert_eq!(
            body["error"]["code"], "forbidden_host",
            "GET {path}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("server.allowed_hosts"), "{message}");
    }
    // Without the Origin header too (a plain GET, a navigation).
    let r = request(&daemon, "GET", "/api/v1/relays", &rebound[..1], None).await;
    assert_refused(r, 403, "forbidden_host", "rebound GET without Origin");
    let json = ("content-type", "application/json");
    let with_json = [rebound[0], rebound[1], json];
    let spec = r#"{"id":"evil","ingest":{"stream_key":"evil-key"}}"#;
    let r = request(&daemon, "POST", "/api/v1/relays", &with_json, Some(spec)).await;
    assert_refused(r, 403, "forbidden_host", "rebound create");
    let r = request(
        &daemon,
        "POST",
        "/api/v1/relays/final/outputs",
        &with_json,
        Some(OUTPUT),
    )
    .await;
    assert_refused(r, 403, "forbidden_host", "rebound output");
    let r = request(&daemon, "POST", "/api/v1/relays/final/stop", &rebound, None).await;
    assert_refused(r, 403, "forbidden_host", "rebound stop");
    let (status, body) = request(&daemon, "POST", "/start_stream", &with_json, Some("{}")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "old error body: {body}");

    // HLS is public by design: players fetch it under any name, from any page.
    let hls = request_text(&daemon, "/hls/final/master.m3u8", &rebound).await;
    assert_eq!(hls, (200, master.clone()));

    let (list, relay) = snapshot(&daemon).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(relay["outputs"], before.1["outputs"], "{relay}");
    assert_eq!(relay["state"], before.1["state"], "{relay}");

    // A name in server.allowed_hosts, with its own origin: the API answers.
    let listed_host = rebound_host.replace("evil.example", "scorecast.test");
    let listed_origin = format!("http://{listed_host}");
    let listed = [
        ("host", listed_host.as_str()),
        ("origin", listed_origin.as_str()),
    ];
    let (status, body) = request(&daemon, "GET", "/api/v1/relays", &listed, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = request_text(&daemon, "/", &listed[..1]).await;
    assert_eq!(status, 200, "the console page under an allowed name");
    let with_json = [listed[0], listed[1], json];
    let r = request(
        &daemon,
        "POST",
        "/api/v1/relays/final/outputs",
        &with_json,
        Some(OUTPUT),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let (status, body) = request(&daemon, "POST", "/api/v1/relays/final/stop", &listed, None).await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

/// GETs `path` with `headers`; the status and the body as text.
async fn request_text(daemon: &Daemon, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = daemon.http.get(format!("{}{path}", daemon.api));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        reply.status().as_u16(),
        reply.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_exempts_from_the_host_rule_only() {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    let config =
        format!("[[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n");
    let daemon = Daemon::start(&config).await;
    let bearer = format!("Bearer {ADMIN}");
    let token = ("authorization", bearer.as_str());
    let wrong = ("authorization", "Bearer not-the-token-0123456789");
    let proxied = ("host", "scorecast.example.com");
    let json = ("content-type", "application/json");

    // A script through a reverse proxy under a name: it holds the token, which no page can
    // attach by itself.
    let (status, body) = request(
        &daemon,
        "POST",
        "/api/v1/relays",
        &[proxied, token, json],
        Some(RELAY),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = request(&daemon, "GET", "/api/v1/relays", &[proxied, token], None).await;
    assert_eq!(status, 200, "{body}");
    // No token or a wrong one: the name is refused.
    for headers in [&[proxied][..], &[proxied, wrong][..]] {
        let r = request(&daemon, "GET", "/api/v1/relays", headers, None).await;
        assert_refused(r, 403, "forbidden_host", "a name without a valid token");
    }
    // The token does not exempt from the Origin and Content-Type rules.
    let evil = ("origin", EVIL);
    let r = request(
        &daemon,
        "DELETE",
        "/api/v1/relays/final",
        &[token, evil],
        None,
    )
    .await;
    assert_refused(r, 403, "forbidden_origin", "a token with a foreign Origin");
    let r = request(
        &daemon,
        "POST",
        "/api/v1/relays/final/outputs",
        &[token],
        Some(OUTPUT),
    )
    .await;
    assert_refused(
        r,
        415,
        "unsupported_media_type",
        "a token with no Content-Type",
    );
    let (status, relay) = request(&daemon, "GET", "/api/v1/relays/final", &[token], None).await;
    assert_eq!(status, 200, "{relay}");
    assert!(output_of(&relay, "extra").is_null(), "{relay}");
    daemon.stop().await;
}
