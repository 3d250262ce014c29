//! End to end on real parts: publishers (ffmpeg, gst-launch) push into the daemon's RTMP
//! server, or the daemon pulls from nginx-rtmp; the test reads HLS over HTTP and checks it
//! against RFC 8216, decodes segments with ffprobe, and decodes what reached the nginx stand-in.

mod common;

use std::time::Duration;

use common::*;

/// Reads the master and media playlists while they grow, checking each read.
/// Returns the last media playlist seen once it has `min_segments` segments.
async fn watch_hls(
    daemon: &Daemon,
    relay: &str,
    min_segments: usize,
    timeout: Duration,
) -> MediaPlaylist {
    let (mime, master) = wait_for("the master playlist", timeout, || async {
        daemon.get_text(&format!("/hls/{relay}/master.m3u8")).await
    })
    .await;
    assert_eq!(mime, "application/vnd.apple.mpegurl");
    let variants = check_master_playlist(&master);
    let media_path = format!("/hls/{relay}/{}", variants[0].uri);
    let mut last: Option<MediaPlaylist> = None;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HLS did not reach {min_segments} segments; last read: {last:?}"
        );
        let Some((_, text)) = daemon.get_text(&media_path).await else {
            // Not written before the first segment; once written it must stay served.
            assert!(last.is_none(), "{media_path} disappeared");
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let playlist = check_media_playlist(&text);
        if let Some(prev) = &last {
            check_playlist_update(prev, &playlist, &text);
        }
        let enough = playlist.segments.len() >= min_segments;
        last = Some(playlist);
        if enough {
            return last.expect("set above");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_publish_reaches_hls_and_the_destination() {
    let nginx = Nginx::start().await;
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &youtube_output(&nginx.url("yt-key")),
    );
    let daemon = Daemon::spawn(&config).await;
    // On air before any caster: the slate.
    let relay = daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");

    let publish_started = std::time::Instant::now();
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    let relay = daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    assert!(relay["publisher"]["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));

    let first = watch_hls(&daemon, "final", 1, Duration::from_secs(20)).await;
    eprintln!(
        "first segment listed {:.1?} after the publish started",
        publish_started.elapsed()
    );
    assert_segment_decodes(&daemon, "final", &first).await;

    // The destination receives decodable video and audio.
    let at_nginx = nginx.url("yt-key");
    assert_h264_aac(&probe(&at_nginx), 1280, 720, "the nginx stand-in");
    assert!(
        decode_frames(&at_nginx, 30) >= 30,
        "the stand-in's stream does not decode"
    );
    let relay = daemon.relay("final").await;
    let output = &relay["outputs"][0];
    assert_eq!(output["state"], "live", "{relay}");
    assert!(output["bytes_sent"].as_u64().unwrap_or(0) > 0, "{relay}");

    // A full live window of 6 segments, a rising media sequence, and old segments deleted.
    let full = watch_hls(&daemon, "final", 6, Duration::from_secs(30)).await;
    assert!(full.segments.len() >= 6);
    let hls_dir = daemon.hls_dir("final").join("720p");
    wait_for(
        "old segments to be deleted",
        Duration::from_secs(30),
        || async {
            let (_, text) = daemon.get_text("/hls/final/720p/index.m3u8").await?;
            let playlist = check_media_playlist(&text);
            (playlist.media_sequence >= 6 && !hls_dir.join("segment0-00000.ts").exists())
                .then_some(())
        },
    )
    .await;
    assert_segment_decodes(&daemon, "final", &full).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_launch_publisher_is_taken() {
    let daemon = Daemon::spawn(TEST_PROGRAM).await;
    let (status, body) = daemon
        .post(
            "/api/v1/relays",
            r#"{"id":"gst","ingest":{"stream_key":"gst-key"}}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = daemon.post("/api/v1/relays/gst/start", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "starting");

    let _publisher = gst_publisher(&daemon.publish_url("gst-key"));
    daemon
        .wait_on_air("gst", "input", Duration::from_secs(20))
        .await;
    // The 960x540 25 fps input comes out in the program format.
    let playlist = watch_hls(&daemon, "gst", 2, Duration::from_secs(30)).await;
    assert_segment_decodes(&daemon, "gst", &playlist).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_ingest_from_nginx_rtmp() {
    let nginx = Nginx::start().await;
    let _publisher = ffmpeg_publisher(&nginx.url("upstream"), 60);
    let config = relay_config(
        "pulled",
        &format!(r#"url = "{}""#, nginx.url("upstream")),
        "",
    );
    let daemon = Daemon::spawn(&config).await;
    let relay = daemon
        .wait_on_air("pulled", "input", Duration::from_secs(30))
        .await;
    assert!(
        relay["publisher"].is_null(),
        "a pull relay has no publisher: {relay}"
    );
    let playlist = watch_hls(&daemon, "pulled", 2, Duration::from_secs(30)).await;
    assert_segment_decodes(&daemon, "pulled", &playlist).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_stream_key_is_refused_and_the_relay_stays_on_the_slate() {
    let config = relay_config("final", r#"stream_key = "right-key""#, "");
    let daemon = Daemon::spawn(&config).await;
    let mut publisher = ffmpeg_publisher(&daemon.publish_url("wrong-key"), 30);
    let status = publisher
        .wait_exit("ffmpeg to be refused", Duration::from_secs(15))
        .await;
    assert!(!status.success(), "ffmpeg should fail on a refused key");
    let relay = daemon.relay("final").await;
    assert_eq!(relay["on_air"]["showing"], "slate", "{relay}");
    assert!(relay["publisher"].is_null(), "{relay}");
    assert!(
        daemon.log().contains("unknown stream key"),
        "the refusal is logged:\n{}",
        daemon.log()
    );

    // A relay that exists but is stopped refuses its own key too.
    let (status, _) = daemon.post("/api/v1/relays/final/stop", "").await;
    assert_eq!(status, 200);
    let mut publisher = ffmpeg_publisher(&daemon.publish_url("right-key"), 30);
    let status = publisher
        .wait_exit("ffmpeg to be refused", Duration::from_secs(15))
        .await;
    assert!(!status.success());
    assert_eq!(daemon.relay("final").await["state"], "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn caster_can_drop_and_publish_again() {
    let config = relay_config("final", r#"stream_key = "final-key""#, "");
    let daemon = Daemon::spawn(&config).await;
    let mut first = ffmpeg_publisher(&daemon.publish_url("final-key"), 5);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    first
        .wait_exit("the first publisher to finish", Duration::from_secs(20))
        .await;
    // The program carries on with the slate, and the relay stays live.
    let relay = daemon
        .wait_on_air("final", "slate", Duration::from_secs(10))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");
    assert_eq!(relay["state"], "live", "{relay}");

    let _second = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    let playlist = watch_hls(&daemon, "final", 2, Duration::from_secs(30)).await;
    assert_segment_decodes(&daemon, "final", &playlist).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_destination_retries_and_hls_carries_on() {
    // Nothing listens on this port: the destination refuses every connection.
    let dead = format!("rtmp://127.0.0.1:{}/live/x", free_port());
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(r#"outputs = [ {{ id = "dead", url = "{dead}" }} ]"#),
    );
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    let relay = wait_for(
        "the destination to retry",
        Duration::from_secs(20),
        || async {
            let relay = daemon.relay("final").await;
            let output = &relay["outputs"][0];
            (output["state"] == "retrying" && output["retry"]["attempt"].as_u64() >= Some(2))
                .then_some(relay)
        },
    )
    .await;
    let output = &relay["outputs"][0];
    assert!(
        output["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("out-dead")),
        "{relay}"
    );
    assert!(
        output["retry"]["next_in"]
            .as_f64()
            .is_some_and(|s| s <= 15.0),
        "{relay}"
    );
    let playlist = watch_hls(&daemon, "final", 3, Duration::from_secs(30)).await;
    assert_segment_decodes(&daemon, "final", &playlist).await;
    assert_eq!(daemon.relay("final").await["state"], "live");
}

/// The thumbnail's JPEG, decoded, once one is there (waits up to `timeout`).
async fn thumbnail(daemon: &Daemon, relay: &str, timeout: Duration) -> image::RgbImage {
    let path = format!("/api/v1/relays/{relay}/thumbnail.jpg");
    let bytes = wait_for("a thumbnail", timeout, || async {
        let (mime, _) = daemon.get_text(&path).await.map(|(m, t)| (m, t.len()))?;
        assert_eq!(mime, "image/jpeg");
        daemon.get_bytes(&path).await
    })
    .await;
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .expect("a JPEG")
        .to_rgb8()
}

/// The mean absolute difference of two same-sized pictures, per channel (0 to 255).
fn difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_thumbnail_follows_the_program() {
    let config = format!(
        "{}\n[[relay]]\nid = \"raw\"\ningest = {{ stream_key = \"raw-key\" }}\ntranscode = false\n",
        relay_config("final", r#"stream_key = "final-key""#, "")
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let slate = thumbnail(&daemon, "final", Duration::from_secs(10)).await;
    assert_eq!(slate.dimensions(), (320, 180), "the program's 16:9");

    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    // Within two refreshes, the thumbnail is the publisher's test pattern, not the slate.
    let changed = wait_for(
        "the thumbnail to change",
        Duration::from_secs(10),
        || async {
            let now = thumbnail(&daemon, "final", Duration::from_secs(5)).await;
            let d = difference(&slate, &now);
            (d > 30.0).then_some(d)
        },
    )
    .await;
    eprintln!("thumbnail: slate to publisher, mean difference {changed:.1} of 255");

    // A passthrough relay decodes nothing, so it has no thumbnail.
    let reply = daemon
        .send("GET", "/api/v1/relays/raw/thumbnail.jpg", "", None)
        .await;
    assert_eq!(reply.status(), 404);
    let body: serde_json::Value = reply.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "no_thumbnail", "{body}");
    daemon.stop().await;
}
