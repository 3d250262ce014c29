//! SRT end to end on real peers: ffmpeg (Debian's build has libsrt) and gst-launch's srtsink
//! publish MPEG-TS to the daemon's SRT listener with a stream id and a passphrase; the test
//! reads HLS and decodes what reached nginx-rtmp. A relay also pulls from an ffmpeg SRT
//! listener and pushes to another, which decodes what it gets across the switch from the
//! slate to the input.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PASSPHRASE: &str = "cup-secret-2026";

/// A config with an SRT listener on `srt_port` and one relay.
fn srt_config(srt_port: u16, id: &str, ingest: &str, extra: &str) -> String {
    format!(
        "[server]\nsrt_listen = \"127.0.0.1:{srt_port}\"\n{}",
        relay_config(id, ingest, extra)
    )
}

fn srt_url(port: u16, stream_id: &str, passphrase: Option<&str>) -> String {
    let mut url = format!("srt://127.0.0.1:{port}?streamid={stream_id}");
    if let Some(p) = passphrase {
        url.push_str(&format!("&passphrase={p}&pbkeylen=16"));
    }
    url
}

/// The newest segment of `relay`'s 720p rendition, once there is one, decodes as H.264 720p
/// with AAC.
async fn assert_hls_decodes(daemon: &Daemon, relay: &str) {
    let path = format!("/hls/{relay}/720p/index.m3u8");
    let playlist = wait_for(
        "a media playlist with a segment",
        Duration::from_secs(30),
        || async {
            let (_, text) = daemon.get_text(&path).await?;
            let playlist = check_media_playlist(&text);
            (!playlist.segments.is_empty()).then_some(playlist)
        },
    )
    .await;
    assert_segment_decodes(daemon, relay, &playlist).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_srt_publisher_with_a_passphrase_reaches_hls_and_the_destination() {
    let nginx = Nginx::start().await;
    let srt_port = free_port();
    let config = srt_config(
        srt_port,
        "cup",
        &format!(r#"stream_key = "cup-key", srt_passphrase = "{PASSPHRASE}""#),
        &youtube_output(&nginx.url("yt-key")),
    );
    let daemon = Daemon::spawn(&config).await;
    daemon
        .wait_on_air("cup", "slate", Duration::from_secs(20))
        .await;

    let mut publisher =
        ffmpeg_srt_publisher(&srt_url(srt_port, "publish:cup-key", Some(PASSPHRASE)), 60);
    let relay = daemon
        .wait_on_air("cup", "input", Duration::from_secs(20))
        .await;
    assert_eq!(relay["publisher"]["protocol"], "srt", "{relay}");
    assert_hls_decodes(&daemon, "cup").await;

    // The destination receives decodable video and audio.
    let at_nginx = nginx.url("yt-key");
    assert_h264_aac(&probe(&at_nginx), 1280, 720, "the nginx stand-in");
    assert!(
        decode_frames(&at_nginx, 30) >= 30,
        "the stand-in's stream does not decode"
    );

    // The link's statistics are in the relay's view and in /metrics.
    let relay = wait_for("SRT link statistics", Duration::from_secs(10), || async {
        let relay = daemon.relay("cup").await;
        (relay["publisher"]["srt"]["packets_received"].as_u64() > Some(100)).then_some(relay)
    })
    .await;
    let link = &relay["publisher"]["srt"];
    eprintln!("srt link: {link}");
    assert!(link["rtt_ms"].as_f64().is_some(), "{link}");
    assert!(link["latency_ms"].as_u64() >= Some(120), "{link}");
    let metrics = daemon
        .get_text("/metrics")
        .await
        .map(|(_, text)| text)
        .unwrap_or_default();
    assert!(
        metrics.contains("scorecast_relay_srt_packets_lost_total{relay=\"cup\"}"),
        "{metrics}"
    );

    // The caster drops: the slate, as with RTMP.
    publisher.terminate(Duration::from_secs(5));
    let relay = daemon
        .wait_on_air("cup", "slate", Duration::from_secs(20))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");

    // Neither the key nor the passphrase is in the log.
    let log = daemon.log();
    for secret in [PASSPHRASE, "cup-key"] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_passphrase_or_key_is_refused_and_gst_launch_srtsink_is_taken() {
    let srt_port = free_port();
    let config = srt_config(
        srt_port,
        "cup",
        &format!(r#"stream_key = "cup-key", srt_passphrase = "{PASSPHRASE}""#),
        "",
    );
    let daemon = Daemon::spawn(&config).await;
    daemon
        .wait_on_air("cup", "slate", Duration::from_secs(20))
        .await;

    for (what, url) in [
        (
            "a wrong passphrase",
            srt_url(srt_port, "publish:cup-key", Some("not-the-passphrase")),
        ),
        ("no passphrase", srt_url(srt_port, "publish:cup-key", None)),
        (
            "an unknown key",
            srt_url(srt_port, "publish:guess", Some(PASSPHRASE)),
        ),
    ] {
        let mut publisher = ffmpeg_srt_publisher(&url, 20);
        let status = publisher
            .wait_exit(
                &format!("ffmpeg with {what} to be refused"),
                Duration::from_secs(15),
            )
            .await;
        assert!(!status.success(), "ffmpeg with {what} was not refused");
        let relay = daemon.relay("cup").await;
        assert!(relay["publisher"].is_null(), "{what}: {relay}");
        assert_eq!(relay["on_air"]["showing"], "slate", "{what}: {relay}");
    }
    assert!(
        daemon.log().contains("unknown stream key"),
        "{}",
        daemon.log()
    );

    // gst-launch's srtsink, with the key in the access-control form and the passphrase.
    require_tool("gst-launch-1.0");
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=25/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! h264parse \
         ! mpegtsmux name=mux alignment=7 ! srtsink uri=srt://127.0.0.1:{srt_port} \
         streamid=#!::r=cup-key,m=publish passphrase={PASSPHRASE} \
         audiotestsrc is-live=true ! audioconvert ! avenc_aac ! aacparse ! mux."
    );
    let _gst = Process::spawn(
        "gst-launch srtsink publisher",
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let relay = daemon
        .wait_on_air("cup", "input", Duration::from_secs(20))
        .await;
    assert_eq!(relay["publisher"]["protocol"], "srt", "{relay}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_pulls_srt_and_pushes_srt_across_the_switch_to_its_input() {
    require_tool("ffmpeg");
    let (source_port, sink_port) = (free_port(), free_port());
    // The destination: an ffmpeg SRT listener that decodes 8 s of what comes, from the slate
    // through the switch to the pulled input.
    let mut reader = Process::spawn(
        "ffmpeg srt listener",
        Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(format!(
                "srt://127.0.0.1:{sink_port}?mode=listener&passphrase={PASSPHRASE}"
            ))
            .args(["-map", "0:v:0", "-frames:v", "240", "-f", "framemd5", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let config = relay_config(
        "remote",
        &format!(r#"url = "srt://127.0.0.1:{source_port}?latency=200""#),
        &format!(
            r#"outputs = [ {{ id = "venue", url = "srt://127.0.0.1:{sink_port}?passphrase={PASSPHRASE}&latency=200" }} ]"#
        ),
    );
    let daemon = Daemon::spawn(&config).await;
    daemon
        .wait_output("remote", "venue", "live", Duration::from_secs(20))
        .await;
    // The source, an ffmpeg SRT listener that publishes, comes after the destination is live
    // on the slate: the relay retries the pull until it answers.
    let _source = ffmpeg_srt_publisher(&format!("srt://127.0.0.1:{source_port}?mode=listener"), 60);
    daemon
        .wait_on_air("remote", "input", Duration::from_secs(30))
        .await;
    assert_hls_decodes(&daemon, "remote").await;
    let (_, stdout) = reader.take_stdio();
    let status = reader
        .wait_exit(
            "the SRT destination to decode 240 frames",
            Duration::from_secs(40),
        )
        .await;
    let mut frames = String::new();
    if let Some(mut out) = stdout {
        use std::io::Read;
        let _ = out.read_to_string(&mut frames);
    }
    let decoded = frames.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        status.success() && decoded >= 240,
        "{decoded} frames decoded ({status})"
    );
    let relay = daemon.relay("remote").await;
    assert_eq!(relay["on_air"]["showing"], "input", "{relay}");
    assert!(
        !daemon.log().contains(PASSPHRASE),
        "the log holds the destination's passphrase"
    );
}
