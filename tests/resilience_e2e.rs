//! The program never stops: faults injected for real (a publisher killed and restarted, a
//! stale publisher replaced, nginx stopped and started, a TCP black hole, SIGTERM) and what a
//! viewer and an operator see through them.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The slate's background colour near its top-left corner (assets/slate.png).
const SLATE_CORNER: [i32; 3] = [17, 19, 27];

/// The mean colour of the top-left corner of `input`'s first frame.
fn corner_colour(input: &str) -> [i32; 3] {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", input, "-frames:v", "1"])
        .args([
            "-vf",
            "scale=64:36",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("ffmpeg runs");
    assert_eq!(out.stdout.len(), 64 * 36 * 3, "{input}: no frame decoded");
    let mut sum = [0i32; 3];
    for y in 0..4 {
        for x in 0..4 {
            for (c, total) in sum.iter_mut().enumerate() {
                *total += i32::from(out.stdout[(y * 64 + x) * 3 + c]);
            }
        }
    }
    sum.map(|s| s / 16)
}

fn looks_like_slate(colour: [i32; 3]) -> bool {
    colour
        .iter()
        .zip(SLATE_CORNER)
        .all(|(c, s)| (c - s).abs() <= 12)
}

/// Adds the segments the media playlist lists now to `into`, by media sequence number:
/// (EXTINF, URI).
async fn collect_segments(daemon: &Daemon, path: &str, into: &mut BTreeMap<u64, (f64, String)>) {
    // Not there until the first segment is.
    let Some((_, text)) = daemon.get_text(path).await else {
        return;
    };
    let playlist = check_media_playlist(&text);
    for (i, segment) in playlist.segments.iter().enumerate() {
        into.insert(playlist.media_sequence + i as u64, segment.clone());
    }
}

/// Polls the media playlist into `seen` until it holds `more` segments beyond what it had.
async fn wait_segments(
    daemon: &Daemon,
    path: &str,
    seen: &mut BTreeMap<u64, (f64, String)>,
    more: usize,
) {
    let target = seen.len() + more;
    let deadline = std::time::Instant::now() + Duration::from_secs(10 * more as u64 + 10);
    while seen.len() < target {
        assert!(
            std::time::Instant::now() < deadline,
            "HLS stalled at {} segments: {seen:?}",
            seen.len()
        );
        collect_segments(daemon, path, seen).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_publisher_brings_the_slate_and_the_destination_keeps_one_session() {
    let nginx = Nginx::start_recording().await;
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &youtube_output(&nginx.url("yt-key")),
    );
    let daemon = Daemon::spawn(&config).await;
    let playlist = "/hls/final/720p/index.m3u8";
    let mut seen = BTreeMap::new();

    // The slate is on air before anyone publishes, and the destination is already live.
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let first = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    wait_segments(&daemon, playlist, &mut seen, 3).await;

    // The caster's OBS crashes.
    first.signal("KILL");
    let relay = daemon
        .wait_on_air("final", "slate", Duration::from_secs(5))
        .await;
    assert!(relay["publisher"].is_null(), "{relay}");
    assert_eq!(relay["state"], "live", "{relay}");
    assert_eq!(relay["outputs"][0]["state"], "live", "{relay}");
    // Let the slate run long enough to fill a segment or two.
    wait_segments(&daemon, playlist, &mut seen, 3).await;

    // The caster comes back.
    let _second = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    wait_segments(&daemon, playlist, &mut seen, 3).await;

    // HLS: no sequence number skipped, every segment but the newest a full one.
    let numbers: Vec<u64> = seen.keys().copied().collect();
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a segment is missing: {numbers:?}");
    }
    let durations: Vec<f64> = seen.values().map(|(d, _)| *d).collect();
    for (n, d) in seen.iter().take(seen.len() - 1) {
        assert!(
            (1.9..=2.1).contains(&d.0),
            "segment {n} lasts {}: the cadence broke ({durations:?})",
            d.0
        );
    }

    // The destination saw one RTMP session from start to end.
    let recordings = nginx.recordings();
    assert_eq!(
        recordings.len(),
        1,
        "the destination's session broke: {recordings:?}"
    );
    assert!(
        daemon
            .log()
            .contains("on air relay=final from=\"input\" to=\"slate\""),
        "the switch is logged:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slate_is_what_viewers_see_while_the_caster_is_away() {
    let config = relay_config("final", r#"stream_key = "final-key""#, "");
    let daemon = Daemon::spawn(&config).await;
    let publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    let playlist = "/hls/final/720p/index.m3u8";
    let newest = |text: &str| {
        let p = check_media_playlist(text);
        let uri = p.segments.last().expect("segments").1.clone();
        (p.media_sequence + p.segments.len() as u64, uri)
    };
    // A segment written while the caster is on: their pattern, not the slate.
    let text = wait_for("the playlist", Duration::from_secs(20), || async {
        daemon.get_text(playlist).await.map(|(_, text)| text)
    })
    .await;
    let (mark, _) = newest(&text);
    let uri = wait_for(
        "a segment of the caster",
        Duration::from_secs(20),
        || async {
            let (_, text) = daemon.get_text(playlist).await?;
            let (n, uri) = newest(&text);
            (n > mark + 1).then_some(uri)
        },
    )
    .await;
    let bytes = daemon
        .get_bytes(&format!("/hls/final/720p/{uri}"))
        .await
        .expect("segment");
    let colour = corner_colour(&save(daemon.dir.path(), "caster.ts", &bytes));
    assert!(
        !looks_like_slate(colour),
        "the caster's segment: {colour:?}"
    );

    publisher.signal("KILL");
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(5))
        .await;
    let (_, text) = daemon.get_text(playlist).await.expect("playlist");
    let (mark, _) = newest(&text);
    // Two segments on from the switch: all slate (the last frame repeats until the
    // switch times out, and the playlist we saw at the switch may lag a segment).
    let uri = wait_for(
        "a segment of the slate",
        Duration::from_secs(20),
        || async {
            let (_, text) = daemon.get_text(playlist).await?;
            let (n, uri) = newest(&text);
            (n > mark + 2).then_some(uri)
        },
    )
    .await;
    let bytes = daemon
        .get_bytes(&format!("/hls/final/720p/{uri}"))
        .await
        .expect("segment");
    let colour = corner_colour(&save(daemon.dir.path(), "slate.ts", &bytes));
    assert!(looks_like_slate(colour), "the slate's segment: {colour:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_publisher_is_replaced_but_a_healthy_one_is_not() {
    let config = relay_config("final", r#"stream_key = "final-key""#, "");
    let daemon = Daemon::spawn(&config).await;
    let first = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    let relay = daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    let first_peer = relay["publisher"]["peer"].clone();

    // Both healthy: the newcomer is refused, the first stays on air.
    let mut intruder = ffmpeg_publisher(&daemon.publish_url("final-key"), 30);
    let status = intruder
        .wait_exit(
            "the second publisher to be refused",
            Duration::from_secs(15),
        )
        .await;
    assert!(!status.success());
    let relay = daemon.relay("final").await;
    assert_eq!(relay["publisher"]["peer"], first_peer, "{relay}");
    assert_eq!(relay["on_air"]["showing"], "input", "{relay}");

    // The first one hangs (its connection stays open, nothing comes): the slate, then a
    // restarted OBS takes over.
    first.signal("STOP");
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(5))
        .await;
    let takeover = wait_for(
        "a new publisher to take over",
        Duration::from_secs(20),
        || async {
            let mut candidate = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
            tokio::time::sleep(Duration::from_secs(2)).await;
            if candidate.try_wait().is_some() {
                return None;
            }
            Some(candidate)
        },
    )
    .await;
    let relay = daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    assert_ne!(relay["publisher"]["peer"], first_peer, "{relay}");
    assert!(
        daemon.log().contains("stale publisher replaced"),
        "{}",
        daemon.log()
    );
    first.signal("CONT");
    drop(takeover);
}

#[tokio::test(flavor = "multi_thread")]
async fn destinations_recover_and_a_black_hole_costs_nothing_even_at_shutdown() {
    let mut nginx = Nginx::start().await;
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &youtube_output(&nginx.url("yt-key")),
    );
    let mut daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    daemon
        .wait_output("final", "youtube", "live", Duration::from_secs(20))
        .await;

    // nginx goes away: the destination retries within 2 s, then comes back with it.
    nginx.stop();
    let retry = daemon
        .wait_output("final", "youtube", "retrying", Duration::from_secs(20))
        .await;
    assert_eq!(retry["retry"]["attempt"], 1, "{retry}");
    assert!(
        retry["retry"]["next_in"].as_f64().is_some_and(|s| s <= 2.0),
        "the first retry comes within 2 s: {retry}"
    );
    nginx.run().await;
    daemon
        .wait_output("final", "youtube", "live", Duration::from_secs(30))
        .await;

    // A black hole: it accepts TCP and never reads.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_port = hole.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming().take(4).flatten() {
            held.push(stream);
        }
        held
    });
    let (status, body) = daemon
        .post(
            "/api/v1/relays/final/outputs",
            &format!(r#"{{"id":"hole","url":"rtmp://127.0.0.1:{hole_port}/live/x"}}"#),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut seen = BTreeMap::new();
    let playlist = "/hls/final/720p/index.m3u8";
    collect_segments(&daemon, playlist, &mut seen).await;
    // Given up on.
    let hole_state = daemon
        .wait_output("final", "hole", "retrying", Duration::from_secs(30))
        .await;
    // rtmp2sink's own connect timeout (5 s) or ours (10 s), whichever comes first.
    assert!(
        hole_state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out") || e.contains("not connected")),
        "{hole_state}"
    );
    // Meanwhile HLS and the other destination went on.
    wait_segments(&daemon, playlist, &mut seen, 2).await;
    let relay = daemon.relay("final").await;
    assert_eq!(output_of(&relay, "youtube")["state"], "live", "{relay}");

    // SIGTERM while the black hole is being retried: the daemon ends in bounded time and
    // the final playlist is written.
    // Tried again.
    daemon
        .wait_output("final", "hole", "connecting", Duration::from_secs(20))
        .await;
    let stopping = std::time::Instant::now();
    let status = daemon.process_mut().terminate(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "the daemon did not exit within 15 s of SIGTERM:\n{}",
        daemon.log()
    );
    let took = stopping.elapsed();
    println!("SIGTERM to exit: {took:?}");
    // The playlist left on disk is whole. (Whether it ends with EXT-X-ENDLIST is up to
    // hlssink3, which cannot always write its last update on GStreamer 1.22.)
    let text = std::fs::read_to_string(daemon.hls_dir("final").join("720p/index.m3u8"))
        .expect("playlist on disk");
    let last = check_media_playlist(&text);
    println!("final playlist ended: {}", last.ended);
    assert!(
        daemon.log().contains("stopped"),
        "the daemon logs its clean stop:\n{}",
        daemon.log()
    );
    drop(held);
}
