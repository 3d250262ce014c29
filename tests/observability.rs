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
        &format!(
            r#"outputs = [ {{ id = "youtube", url = "{}" }} ]"#,
            nginx.url("final")
        ),
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    wait_for("the destination live", Duration::from_secs(20), || async {
        let relay = daemon.relay("final").await;
        (relay["outputs"][0]["state"] == "live").then_some(())
    })
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
}
