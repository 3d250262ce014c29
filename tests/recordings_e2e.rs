//! Recordings on real parts: a relay records its program to fragmented MP4 while an ffmpeg
//! publisher is on air; ffprobe and ffmpeg read the files; the API lists, serves (with byte
//! ranges) and deletes them; a `kill -9` leaves a playable file; retention deletes old files
//! but never the one being written.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::frames;
use common::*;
use serde_json::Value;

/// A file's duration by ffprobe, in seconds.
fn duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// What ffmpeg says decoding the whole file: `Ok` when it decodes without an error.
fn decodes(path: &Path) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    // Not a decoding error: the null muxer's complaint about two frames with one timestamp,
    // which a switch between slate and publisher can leave (docs/limits.md).
    let said: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("non monotonically increasing dts to muxer"))
        .map(|l| format!("{l}\n"))
        .collect();
    if out.status.success() && said.is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

fn config(record: &str) -> String {
    relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!("record = {{ {record} }}"),
    )
}

async fn list(daemon: &Daemon) -> Vec<Value> {
    let (status, list) = daemon.get("/api/v1/relays/final/recordings").await;
    assert_eq!(status, 200, "{list}");
    list.as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_relay_is_listed_served_with_ranges_and_deleted() {
    let daemon = Daemon::start(&config("")).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    // Two score changes while it records: each is a marker, and an EXT-X-DATERANGE in the
    // live playlist while it is within the window. Over 30 s on air in all.
    for home in [1, 2] {
        let reply = daemon
            .send(
                "PUT",
                "/api/v1/relays/final/score",
                &frames::score_json(home),
                None,
            )
            .await;
        assert_eq!(reply.status(), 200);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, playlist) = daemon
            .get_text("/hls/final/720p/index.m3u8")
            .await
            .expect("the media playlist");
        let playlist = check_media_playlist(&playlist);
        assert!(
            playlist
                .date_ranges
                .iter()
                .any(|t| t.contains("CLASS=\"com.scorecast.score\"")
                    && t.contains(&format!("X-HOME-SCORE=\"{home}\""))),
            "{:?}",
            playlist.date_ranges
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let open = list(&daemon).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0]["ended_at"].is_null(), "being written: {open:?}");
    let (status, refused) = daemon
        .send(
            "DELETE",
            &format!(
                "/api/v1/relays/final/recordings/{}",
                open[0]["id"].as_str().unwrap()
            ),
            "",
            None,
        )
        .await
        .json::<Value>()
        .await
        .map(|b| (409, b))
        .unwrap_or((0, Value::Null));
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &Value::from("recording_open"))
    );

    // Time on air: the frames the program encoded, at 30 fps (the slate's and the
    // publisher's), just before the stop.
    let on_air = daemon.relay("final").await["frames_encoded"]
        .as_f64()
        .unwrap()
        / 30.0;
    let (status, _) = daemon.post("/api/v1/relays/final/stop", "").await;
    assert_eq!(status, 200);
    let files = list(&daemon).await;
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert!(file["ended_at"].is_number(), "{file}");
    let id = file["id"].as_str().unwrap();
    let path = daemon
        .dir
        .path()
        .join(format!("data/recordings/final/{id}.mp4"));
    let seconds = duration(&path);
    eprintln!("recorded {seconds:.2} s of {on_air:.2} s on air");
    assert!(on_air >= 30.0, "only {on_air} s on air");
    assert!(
        (seconds - on_air).abs() < 0.5,
        "{seconds} s recorded of {on_air} s on air"
    );
    if let Err(said) = decodes(&path) {
        panic!("the recording does not decode from start to end: {said}");
    }
    let (status, markers) = daemon
        .get(&format!("/api/v1/relays/final/recordings/{id}/markers"))
        .await;
    assert_eq!(status, 200, "{markers}");
    let scores: Vec<&Value> = markers
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["scoreboard"]["home"]["score"])
        .collect();
    assert_eq!(scores, [&Value::from("1"), &Value::from("2")], "{markers}");
    let first_at = markers[0]["at"].as_f64().unwrap();
    assert!(
        first_at >= file["started_at"].as_f64().unwrap(),
        "{markers}"
    );
    assert_eq!(file["bytes"], std::fs::metadata(&path).unwrap().len());

    // The url serves it, whole and by byte range.
    let url = format!("{}{}", daemon.api, file["url"].as_str().unwrap());
    let whole = daemon
        .http
        .get(&url)
        .send()
        .await
        .expect("GET the recording");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    let body = whole.bytes().await.unwrap();
    assert_eq!(body, std::fs::read(&path).unwrap());
    let part = daemon
        .http
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("GET a range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", body.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), body.slice(100..200));
    let (status, _) = daemon.get("/recordings/final/nope.mp4").await;
    assert_eq!(status, 404);

    assert_eq!(
        daemon
            .delete(&format!("/api/v1/relays/final/recordings/{id}"))
            .await,
        204
    );
    assert!(list(&daemon).await.is_empty());
    assert!(!path.exists());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemon_leaves_a_playable_recording() {
    let daemon = Daemon::spawn(&config("")).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let uptime = daemon.relay("final").await["uptime"].as_f64().unwrap();
    if std::env::var_os("REC_LOG").is_some() {
        eprintln!("{}", daemon.log());
    }
    daemon.process().signal("KILL");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = daemon.dir.path().join("data/recordings/final");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the recordings dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!files.is_empty(), "no recording");
    let seconds: f64 = files.iter().map(|f| duration(f)).sum();
    eprintln!(
        "after kill -9: {seconds:.2} s playable in {} file(s) of {uptime:.2} s recorded",
        files.len()
    );
    // Lost: the fragment being built (up to a GOP, 2 s) and what the encoder and the muxer
    // still held.
    assert!(seconds > uptime - 3.5, "{seconds} s playable of {uptime} s");
    for file in &files {
        if let Err(said) = decodes(file) {
            panic!(
                "{} does not decode to its last fragment: {said}",
                file.display()
            );
        }
    }
}

/// A relay recording with `record` while a publisher is on air for 14 s: the daemon, and
/// its recordings then.
async fn recorded_for_14_s(record: &str) -> (Daemon, Vec<Value>) {
    let daemon = Daemon::start(&config(record)).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 60);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    let files = list(&daemon).await;
    eprintln!("{files:?}");
    (daemon, files)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_files_but_never_the_open_one() {
    // Files of 2 s kept for 3 s after they end: after 14 s, the first ones are gone.
    let (daemon, files) = recorded_for_14_s(r#"split = "2s", retention = "3s""#).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(!files.is_empty() && files.len() <= 5, "{files:?}");
    let open: Vec<_> = files.iter().filter(|f| f["ended_at"].is_null()).collect();
    assert_eq!(open.len(), 1, "one file being written: {files:?}");
    let oldest = files[0]["started_at"].as_f64().unwrap();
    assert!(now - oldest < 12.0, "the first files are gone: {files:?}");
    // Sweeps run every 5 s: a file may outlive its retention by that much.
    for f in files.iter().filter(|f| f["ended_at"].is_number()) {
        let ended = f["ended_at"].as_f64().unwrap();
        assert!(now - ended < 3.0 + 5.0 + 1.0, "{f}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_budget_deletes_the_oldest_files_but_never_the_open_one() {
    // About 1 MB per 2 s file at 720p: the budget holds two or three closed files.
    let budget: u64 = 2_500_000;
    let (daemon, files) =
        recorded_for_14_s(&format!(r#"split = "2s", max_bytes = {budget}"#)).await;
    let open: Vec<_> = files.iter().filter(|f| f["ended_at"].is_null()).collect();
    assert_eq!(open.len(), 1, "one file being written: {files:?}");
    let closed: u64 = files
        .iter()
        .filter(|f| f["ended_at"].is_number())
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    let all: u64 = files.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    // Swept every 5 s: between sweeps up to two more files may have ended.
    assert!(files.len() < 7, "the oldest files are gone: {files:?}");
    assert!(
        closed <= budget + 2_500_000,
        "{closed} bytes closed, {all} in all, for a budget of {budget}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_that_cannot_be_written_costs_the_file_not_the_program() {
    let daemon = Daemon::start(&config(r#"split = "2s""#)).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    // The next files are named by the millisecond they open: every name of the next 10 s
    // leads to /dev/full, so the next file's first write fails as on a full disk.
    let dir = daemon.dir.path().join("data/recordings/final");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for ms in now_ms..now_ms + 10_000 {
        std::os::unix::fs::symlink("/dev/full", dir.join(format!("{ms}.mp4"))).expect("a symlink");
    }
    let failed = wait_for("the recording to fail", Duration::from_secs(15), || async {
        let log = daemon.log();
        log.contains("the recording failed; the program goes on without it")
            .then_some(log)
    })
    .await;
    assert!(failed.contains("No space left"), "{failed}");
    // The program goes on: frames keep coming, the live playlist moves, nothing failed.
    let frames = |relay: Value| relay["frames_encoded"].as_u64().unwrap_or(0);
    let before = frames(daemon.relay("final").await);
    let playlist = wait_for("the live playlist", Duration::from_secs(10), || async {
        Some(daemon.get_text("/hls/final/720p/index.m3u8").await?.1)
    })
    .await;
    let last = check_media_playlist(&playlist).segments.last().cloned();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let relay = daemon.relay("final").await;
    assert_eq!(relay["state"], "live", "{relay}");
    assert!(frames(relay) >= before + 120, "frames stopped at {before}");
    let (_, playlist) = daemon
        .get_text("/hls/final/720p/index.m3u8")
        .await
        .expect("the live playlist");
    assert_ne!(
        check_media_playlist(&playlist).segments.last().cloned(),
        last
    );
    let log = daemon.log();
    assert!(!log.contains("program failed"), "{log}");
    daemon.stop().await;
}

/// The DVR playlist of rendition `720p` once it lists at least `segments`, checked.
async fn dvr_with(daemon: &Daemon, segments: usize) -> (String, MediaPlaylist) {
    wait_for(
        &format!("a DVR playlist of {segments} segments"),
        Duration::from_secs(40),
        || async {
            let (_, text) = daemon.get_text("/hls/final/720p/dvr.m3u8").await?;
            let playlist = check_media_playlist(&text);
            (playlist.segments.len() >= segments).then_some((text, playlist))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dvr_playlist_reaches_back_past_the_live_window_and_across_a_restart() {
    dvr_reaches_back("ts").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fmp4_dvr_playlist_keeps_each_programs_init_segment() {
    dvr_reaches_back("fmp4").await;
}

/// The `EXT-X-MAP` URIs of a playlist, in order.
fn maps(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .collect()
}

/// A relay with a 2-minute DVR in segment `format`, on its slate: the DVR playlist grows past
/// the live window, numbered as it is, with the score changes; after a stop and a start it
/// goes on after a discontinuity, its oldest segment (and fMP4 init segment) still served.
async fn dvr_reaches_back(format: &str) {
    let daemon = Daemon::start(&relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(r#"hls = {{ dvr = "2m", format = "{format}" }}"#),
    ))
    .await;
    // The live window is 6 segments of 2 s; the slate alone fills the DVR past it.
    let (_, dvr) = dvr_with(&daemon, 9).await;
    let (_, live) = daemon
        .get_text("/hls/final/720p/index.m3u8")
        .await
        .expect("the live playlist");
    let live = check_media_playlist(&live);
    assert!(live.segments.len() <= 6, "{:?}", live.segments);
    // A segment listed by both has the same number in both.
    let numbered = |p: &MediaPlaylist| -> Vec<(u64, String)> {
        (p.media_sequence..)
            .zip(p.segments.iter().map(|(_, uri)| uri.clone()))
            .collect()
    };
    let (dvr_numbers, live_numbers) = (numbered(&dvr), numbered(&live));
    let shared = live_numbers
        .iter()
        .filter(|n| dvr_numbers.contains(n))
        .count();
    assert!(shared >= 3, "DVR {dvr_numbers:?}\nlive {live_numbers:?}");
    // The oldest segment, out of the live window, is still served.
    let oldest = &dvr.segments[0].1;
    assert!(!live.segments.iter().any(|(_, uri)| uri == oldest));
    let bytes = daemon
        .get_bytes(&format!("/hls/final/720p/{oldest}"))
        .await
        .expect("the oldest DVR segment is served");
    if format == "ts" {
        assert_eq!(bytes.first(), Some(&0x47), "an MPEG-TS segment");
    } else {
        // A CMAF segment: its boxes (styp or moof first), its init segment named before it.
        assert!(
            matches!(bytes.get(4..8), Some(b"styp" | b"moof")),
            "{:?}",
            bytes.get(..8)
        );
    }
    // The DVR master lists each rendition's DVR playlist.
    let (_, master) = daemon
        .get_text("/hls/final/dvr.m3u8")
        .await
        .expect("the DVR master playlist");
    let variants = check_master_playlist(&master);
    assert!(variants.iter().all(|v| v.uri.ends_with("/dvr.m3u8")));
    // A score change is dated in it.
    let reply = daemon
        .send(
            "PUT",
            "/api/v1/relays/final/score",
            &frames::score_json(3),
            None,
        )
        .await;
    assert_eq!(reply.status(), 200);
    // Stopped and started, the relay's DVR goes on after a discontinuity, the old segment
    // still in it.
    assert_eq!(daemon.post("/api/v1/relays/final/stop", "").await.0, 200);
    assert_eq!(daemon.post("/api/v1/relays/final/start", "").await.0, 200);
    let (text, after) = dvr_with(&daemon, dvr.segments.len() + 3).await;
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    if format == "fmp4" {
        // Each program's init segment is named before its segments and still served.
        let maps = maps(&text);
        assert_eq!(maps.len(), 2, "{text}");
        for map in maps {
            assert!(
                daemon
                    .get_bytes(&format!("/hls/final/720p/{map}"))
                    .await
                    .is_some(),
                "{map}"
            );
        }
    }
    assert_eq!(&after.segments[0].1, oldest, "{text}");
    assert_eq!(after.media_sequence, dvr.media_sequence, "{text}");
    assert!(
        after
            .date_ranges
            .iter()
            .any(|t| t.contains("X-HOME-SCORE=\"3\"")),
        "{text}"
    );
    assert!(daemon
        .get_bytes(&format!("/hls/final/720p/{oldest}"))
        .await
        .is_some());
}
