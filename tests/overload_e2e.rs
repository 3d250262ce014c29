//! A relay the CPU cannot keep up with (1080p at 120 fps, x264 `slow`, on this machine's
//! cores) drops frames before its encoder, counts them, warns once, and keeps the caster on
//! air: never the slate over a live publisher. The daemon runs at nice 19, so that the tests
//! beside it keep their share of the CPU.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_overloaded_relay_drops_frames_and_never_shows_the_slate_over_a_live_caster() {
    let config = "[program]\nwidth = 1920\nheight = 1080\nfps = 60\nx264_preset = \"slow\"\n\
                  video_kbps = 8000\n[hls]\nsegment_seconds = 2\n\
                  [[relay]]\nid = \"heavy\"\ningest = { stream_key = \"heavy-key\" }\n";
    let daemon = Daemon::spawn(config).await;
    let niced = Command::new("renice")
        .args(["-n", "19", "-p", &daemon.process().pid().to_string()])
        .output()
        .expect("renice runs");
    assert!(niced.status.success(), "renice: {niced:?}");
    daemon
        .wait_on_air("heavy", "slate", Duration::from_secs(30))
        .await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("heavy-key"), 60);
    daemon
        .wait_on_air("heavy", "input", Duration::from_secs(30))
        .await;

    let began = std::time::Instant::now();
    let mut polls = 0;
    while began.elapsed() < Duration::from_secs(12) {
        let relay = daemon.relay("heavy").await;
        assert!(
            relay["publisher"].is_object(),
            "the caster was dropped: {relay}"
        );
        assert_eq!(
            relay["on_air"]["showing"],
            "input",
            "the slate came up over a live caster after {:.1?}: {relay}",
            began.elapsed()
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let relay = daemon.relay("heavy").await;
    let (encoded, dropped) = (
        relay["frames_encoded"].as_u64().unwrap_or(0),
        relay["frames_dropped"].as_u64().unwrap_or(0),
    );
    eprintln!("{polls} polls on the input; {encoded} frames encoded, {dropped} dropped");
    assert!(
        dropped > 0,
        "the encoder kept up, so this machine did not overload the relay: {relay}"
    );
    assert!(encoded > 0, "{relay}");
    let (_, metrics) = daemon.get_text("/metrics").await.expect("GET /metrics");
    assert!(
        metrics.contains("scorecast_relay_frames_dropped_total{relay=\"heavy\"}"),
        "{metrics}"
    );
    let warnings = daemon.log().matches("the encoder cannot keep up").count();
    assert_eq!(warnings, 1, "warned {warnings} times:\n{}", daemon.log());
}
