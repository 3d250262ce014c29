//! Observability: `GET /metrics` read by a real Prometheus text parser (the Python
//! `prometheus_client` package's), before and after a publisher arrives.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Parses an exposition with `prometheus_client.parser`; returns its samples as
/// `{name, labels, value}` objects. Panics when the parser refuses the text.
fn parse_exposition(text: &str) -> Vec<Value> {
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append({'type': family.type, 'name': s.name, 'labels': s.labels, 'value': s.value})\n\
        print(json.dumps(out))\n";
    // Debian's own Python, which the package installs into (not a python3 of another PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The value of the sample `name` whose labels include every pair in `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

async fn metrics(daemon: &Daemon) -> (String, Vec<Value>) {
    let (mime, text) = daemon.get_text("/metrics").await.expect("GET /metrics");
    (mime, parse_exposition(&text))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_say_what_the_relay_does() {
    let nginx = Nginx::start_recording().await;
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &youtube_output(&nginx.url("final")),
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    daemon
        .wait_output("final", "youtube", "live", Duration::from_secs(20))
        .await;

    // On the slate, before any publisher.
    let (mime, samples) = metrics(&daemon).await;
    assert!(mime.starts_with("text/plain; version=0.0.4"), "{mime}");
    let relay = [("relay", "final")];
    let output = [("relay", "final"), ("output", "youtube")];
    assert_eq!(sample(&samples, "scorecast_relays", &[]), Some(1.0));
    for state in ["stopped", "waiting", "starting", "live", "retrying"] {
        let expected = if state == "live" { 1.0 } else { 0.0 };
        assert_eq!(
            sample(
                &samples,
                "scorecast_relay_state",
                &[("relay", "final"), ("state", state)]
            ),
            Some(expected),
            "state {state}"
        );
    }
    assert_eq!(
        sample(&samples, "scorecast_relay_slate_active", &relay),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "scorecast_relay_publisher_connected", &relay),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "scorecast_output_state",
            &[("relay", "final"), ("output", "youtube"), ("state", "live")]
        ),
        Some(1.0)
    );
    let bytes_before =
        sample(&samples, "scorecast_output_bytes_sent_total", &output).expect("bytes sent");
    assert!(bytes_before > 0.0, "{bytes_before}");
    let frames_before =
        sample(&samples, "scorecast_relay_frames_encoded_total", &relay).expect("frames encoded");

    // A publisher arrives: the input is on air and the counters go on rising.
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    let (_, samples) = metrics(&daemon).await;
    assert_eq!(
        sample(&samples, "scorecast_relay_slate_active", &relay),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "scorecast_relay_publisher_connected", &relay),
        Some(1.0)
    );
    let frames = sample(&samples, "scorecast_relay_frames_encoded_total", &relay).expect("frames");
    let bytes = sample(&samples, "scorecast_output_bytes_sent_total", &output).expect("bytes");
    assert!(frames > frames_before, "{frames_before} then {frames}");
    assert!(bytes > bytes_before, "{bytes_before} then {bytes}");
    let ingest = sample(&samples, "scorecast_relay_ingest_bytes_total", &relay).expect("ingest");
    assert!(ingest > 100_000.0, "the publisher pushed {ingest} bytes");
    for counter in [
        "scorecast_relay_input_frames_dropped_total",
        "scorecast_relay_input_frames_duplicated_total",
    ] {
        assert!(sample(&samples, counter, &relay).is_some(), "{counter}");
    }
    let offset = sample(&samples, "scorecast_relay_av_offset_seconds", &relay).expect("offset");
    eprintln!("A/V offset at the encoders: {offset:+.3} s");
    assert!(offset.abs() < 0.5, "A/V offset {offset} s");
    let live_for = sample(
        &samples,
        "scorecast_relay_state_seconds_total",
        &[("relay", "final"), ("state", "live")],
    )
    .expect("time live");
    let relay_json = daemon.relay("final").await;
    let uptime = relay_json["uptime"].as_f64().expect("uptime");
    assert!(
        live_for > 0.0 && live_for <= uptime + 0.5,
        "live for {live_for} s of an uptime of {uptime} s"
    );
}

/// A real HTTP client reading `/api/v1/events` as it arrives.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

/// One Server-Sent Event: its id, its name and its JSON data.
#[derive(Debug, Clone)]
struct Sse {
    id: u64,
    kind: String,
    data: Value,
}

impl EventStream {
    async fn open(daemon: &Daemon, last_id: Option<u64>) -> Self {
        let mut request = daemon.http.get(format!("{}/api/v1/events", daemon.api));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        // No overall timeout: the stream stays open.
        let response = request
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("GET /api/v1/events");
        assert_eq!(response.status(), 200);
        let mime = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(mime, "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or `None` when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(id) = id {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(Sse { id, kind, data });
                }
                continue;
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one of `kind` satisfies `wanted`; returns everything read.
    async fn until(&mut self, kind: &str, wanted: impl Fn(&Value) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = self.next().await {
                seen.push(event.clone());
                if event.kind == kind && wanted(&event.data["data"]) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "no {kind} event as wanted; got {seen:#?}"
        );
        seen
    }
}

/// The live events through a publisher's arrival, its loss and a score change, read by a real
/// client; a client that resumes with `Last-Event-ID` gets what it missed, in order; and an
/// open stream does not hold up the daemon's shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn events_follow_a_publisher_drop_and_resume_from_the_last_id() {
    let config = relay_config("final", r#"stream_key = "final-key""#, "");
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let mut events = EventStream::open(&daemon, None).await;

    let publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    let arrived = events.until("publisher", |d| d["connected"] == true).await;
    let connected = arrived.last().expect("the event").clone();
    assert_eq!(connected.data["relay"], "final", "{connected:?}");
    events.until("on_air", |d| d["showing"] == "input").await;

    publisher.signal("KILL");
    events.until("publisher", |d| d["connected"] == false).await;
    events.until("on_air", |d| d["showing"] == "slate").await;

    let score = r#"{"home":{"name":"NAVI","score":3},"away":{"name":"G2","score":1}}"#;
    let reply = daemon
        .http
        .put(format!("{}/api/v1/relays/final/score", daemon.api))
        .header("content-type", "application/json")
        .body(score)
        .send()
        .await
        .expect("PUT score");
    assert_eq!(reply.status(), 200);
    let after = events
        .until("score", |d| d["scoreboard"]["home"]["score"] == "3")
        .await;
    let last = after.last().expect("the score event").clone();
    assert_eq!(last.data["data"]["source"], "manual", "{last:?}");

    // A client that saw the connect and resumes gets everything after it, in order.
    let mut resumed = EventStream::open(&daemon, Some(connected.id)).await;
    let replayed = resumed
        .until("score", |d| d["scoreboard"]["home"]["score"] == "3")
        .await;
    let ids: Vec<u64> = replayed.iter().map(|e| e.id).collect();
    assert_eq!(ids[0], connected.id + 1, "{replayed:#?}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let kinds: Vec<&str> = replayed.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["on_air", "publisher", "score"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    // The shutdown SIGTERM starts, with both streams open: they end and the daemon stops.
    daemon.stop().await;
    assert!(
        resumed.next().await.is_none(),
        "the stream outlived the daemon"
    );
}
