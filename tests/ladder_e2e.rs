//! The ABR ladder and the fan-out, end to end on real parts: ffmpeg publishes, the daemon
//! encodes a 720p/480p/360p ladder, every playlist it writes is checked while it runs, every
//! segment is decoded, and nginx-rtmp stands in for the destinations that are added and
//! removed while live.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::*;

/// Fetches every segment of a rendition's playlist: (media sequence number, bytes, file).
async fn fetch_segments(
    daemon: &Daemon,
    relay: &str,
    rendition: &str,
    playlist: &MediaPlaylist,
) -> Vec<(u64, usize, String)> {
    let mut out = Vec::new();
    for (i, (_, uri)) in playlist.segments.iter().enumerate() {
        let bytes = daemon
            .get_bytes(&format!("/hls/{relay}/{rendition}/{uri}"))
            .await
            .unwrap_or_else(|| panic!("{rendition}/{uri} is listed but not served"));
        let file = save(daemon.dir.path(), &format!("{rendition}-{uri}"), &bytes);
        out.push((playlist.media_sequence + i as u64, bytes.len(), file));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn ladder_renditions_are_aligned_valid_and_within_their_bitrate() {
    let nginx = Nginx::start().await;
    let config = relay_config(
        "ladder",
        r#"stream_key = "ladder-key""#,
        &format!(
            "hls = {{ renditions = [\"360p\", \"720p\", \"480p\"] }}\n\
             outputs = [ {{ id = \"mobile\", url = \"{}\", height = 480 }} ]",
            nginx.url("mobile")
        ),
    );
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("ladder-key"), 90);
    daemon
        .wait_on_air("ladder", "input", Duration::from_secs(20))
        .await;

    // Every playlist is checked on every read while the live window fills.
    let stop = AtomicBool::new(false);
    let renditions = [("720p", 1280, 720), ("480p", 852, 480), ("360p", 640, 360)];
    let full_window = async {
        let playlists = wait_for(
            "a full live window (6 segments) in every rendition",
            Duration::from_secs(60),
            || async {
                let mut playlists = BTreeMap::new();
                for (name, _, _) in renditions {
                    let (_, text) = daemon
                        .get_text(&format!("/hls/ladder/{name}/index.m3u8"))
                        .await?;
                    let playlist = check_media_playlist(&text);
                    (playlist.segments.len() >= 6).then_some(())?;
                    playlists.insert(name, playlist);
                }
                Some(playlists)
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        playlists
    };
    let (reads, playlists) = tokio::join!(watch_playlists(&daemon, "ladder", &stop), full_window);
    assert!(reads >= 10, "only {reads} playlist reads were checked");

    // The master playlist: tallest first, each variant at its real size.
    let (_, master) = daemon
        .get_text("/hls/ladder/master.m3u8")
        .await
        .expect("master playlist");
    let variants = check_master_playlist(&master);
    let declared: Vec<(String, i64, i64)> = variants
        .iter()
        .map(|v| (v.uri.clone(), v.width, v.height))
        .collect();
    let expected: Vec<(String, i64, i64)> = renditions
        .iter()
        .map(|(n, w, h)| (format!("{n}/index.m3u8"), *w, *h))
        .collect();
    assert_eq!(declared, expected, "{master}");

    // Every segment decodes at its rendition's size and starts with a keyframe; segments with
    // the same sequence number start on the same frame and last as long in every rendition.
    // Fetched first, all of them: the window moves on while ffprobe reads them.
    let mut fetched = BTreeMap::new();
    for (name, _, _) in renditions {
        fetched.insert(
            name,
            fetch_segments(&daemon, "ladder", name, &playlists[name]).await,
        );
    }
    let mut starts: BTreeMap<u64, Vec<(f64, f64, &str)>> = BTreeMap::new();
    for ((name, width, height), variant) in renditions.iter().zip(&variants) {
        let playlist = &playlists[name];
        let segments = &fetched[name];
        let mut bytes = 0;
        for ((sequence, size, file), (extinf, uri)) in segments.iter().zip(&playlist.segments) {
            let frames = video_frames(file);
            assert!(!frames.is_empty(), "{name}/{uri} has no video");
            assert!(frames[0].2, "{name}/{uri} does not start with a keyframe");
            assert!(
                frames.iter().all(|f| (f.0, f.1) == (*width, *height)),
                "{name}/{uri} is not {width}x{height}"
            );
            starts
                .entry(*sequence)
                .or_default()
                .push((frames[0].3, *extinf, name));
            bytes += size;
        }
        // The measured bitrate stays within 110 % of the declared average.
        let seconds: f64 = playlist.segments.iter().map(|(d, _)| d).sum();
        let measured = bytes as f64 * 8.0 / seconds;
        let ratio = measured / variant.average_bandwidth as f64;
        eprintln!(
            "{name}: {:.0} kb/s measured over {seconds:.1} s, declared average {} kb/s ({:.0} %)",
            measured / 1000.0,
            variant.average_bandwidth / 1000,
            ratio * 100.0
        );
        assert!(
            ratio <= 1.10,
            "{name}: {measured:.0} b/s is over 110 % of AVERAGE-BANDWIDTH {}",
            variant.average_bandwidth
        );
    }
    // A 480p destination taps the 480p rung's encoder instead of adding one.
    assert_h264_aac(
        &probe(&nginx.url("mobile")),
        852,
        480,
        "the 480p destination",
    );
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("destination stream added") && l.contains("tap")),
        "the 480p destination did not tap the 480p rung"
    );

    let shared: Vec<_> = starts.iter().filter(|(_, r)| r.len() == 3).collect();
    assert!(
        shared.len() >= 4,
        "renditions share too few sequence numbers: {starts:?}"
    );
    for (sequence, renditions) in shared {
        let (pts, extinf, _) = renditions[0];
        for (other_pts, other_extinf, name) in &renditions[1..] {
            assert!(
                (other_pts - pts).abs() < 0.001 && (other_extinf - extinf).abs() < 0.001,
                "segment {sequence} is not aligned: {renditions:?} ({name})"
            );
        }
    }
}

/// Records what nginx serves for `key` into a file, until stopped.
fn record(nginx: &Nginx, key: &str, file: &str) -> Process {
    Process::spawn(
        "ffmpeg recorder",
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-i", &nginx.url(key), "-c", "copy", "-f", "mpegts", file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    )
}

/// Asserts a recording decodes at `width`x`height` without a gap longer than 0.2 s, and
/// spans at least `at_least`.
///
/// A recorder that ran for `ran`, with the other destination's change at [`SETTLE`] after its
/// start and [`SETTLE`] before its end, proves the change fell inside its picture when the
/// picture spans more than `ran - SETTLE + 0.5 s`: at most that much is lost to the recorder's
/// start (waiting for a keyframe) and to what was in flight when it stopped.
fn assert_unbroken(file: &str, width: i64, height: i64, at_least: Duration, what: &str) {
    let frames = video_frames(file);
    assert!(frames.len() > 30, "{what}: only {} frames", frames.len());
    assert!(
        frames.iter().all(|f| (f.0, f.1) == (width, height)),
        "{what}: not all frames are {width}x{height}"
    );
    let mut pts: Vec<f64> = frames.iter().map(|f| f.3).collect();
    pts.sort_by(f64::total_cmp);
    let gap = pts.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let span = pts[pts.len() - 1] - pts[0];
    eprintln!(
        "{what}: {} frames over {span:.2} s, largest gap {gap:.3} s",
        pts.len()
    );
    assert!(gap <= 0.2, "{what}: a {gap:.3} s gap in the picture");
    assert!(
        span >= at_least.as_secs_f64(),
        "{what}: spans {span:.2} s, less than {at_least:?}"
    );
}

/// How long each recording runs before and after the other destination's change.
const SETTLE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn destinations_are_added_and_removed_while_live() {
    let nginx = Nginx::start().await;
    let config = relay_config(
        "show",
        r#"stream_key = "show-key""#,
        &format!(
            r#"outputs = [ {{ id = "main", url = "{}" }} ]"#,
            nginx.url("main")
        ),
    );
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("show-key"), 120);
    let output_state = |relay: &serde_json::Value, id: &str| {
        relay["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["id"] == id))
            .map(|o| o["state"].as_str().unwrap_or_default().to_owned())
    };
    let wait_output_live = |id: &'static str| {
        let daemon = &daemon;
        async move {
            wait_for(
                &format!("output {id} to be live"),
                Duration::from_secs(30),
                || async {
                    let relay = daemon.relay("show").await;
                    (output_state(&relay, id).as_deref() == Some("live")).then_some(())
                },
            )
            .await
        }
    };
    wait_output_live("main").await;

    let stop = AtomicBool::new(false);
    let operate = async {
        let dir = daemon.dir.path();
        let main_file = dir.join("main.ts").display().to_string();
        let mut main_rec = record(&nginx, "main", &main_file);
        let main_started = tokio::time::Instant::now();
        tokio::time::sleep(SETTLE).await;

        // Added while live, with an encode of its own (360p): "main" must not notice.
        let (status, relay) = daemon
            .post(
                "/api/v1/relays/show/outputs",
                &format!(
                    r#"{{"id": "backup", "url": "{}", "height": 360, "video_kbps": 800}}"#,
                    nginx.url("backup")
                ),
            )
            .await;
        assert_eq!(status, 201, "{relay}");
        wait_output_live("backup").await;
        let backup_file = dir.join("backup.ts").display().to_string();
        let mut backup_rec = record(&nginx, "backup", &backup_file);
        let backup_started = tokio::time::Instant::now();
        tokio::time::sleep(SETTLE).await;

        // "main" is removed while live: "backup" must not notice.
        assert_eq!(daemon.delete("/api/v1/relays/show/outputs/main").await, 204);
        let main_span = main_started.elapsed();
        let relay = daemon.relay("show").await;
        assert_eq!(output_state(&relay, "main"), None, "{relay}");
        assert_eq!(output_state(&relay, "backup").as_deref(), Some("live"));
        tokio::time::sleep(SETTLE).await;

        // The last one goes too, and its encoder with it; HLS carries on.
        assert_eq!(
            daemon.delete("/api/v1/relays/show/outputs/backup").await,
            204
        );
        let backup_span = backup_started.elapsed();
        wait_for(
            "the backup encoder to be removed",
            Duration::from_secs(10),
            || async {
                daemon
                    .log()
                    .contains("destination stream removed")
                    .then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        main_rec.terminate(Duration::from_secs(5));
        backup_rec.terminate(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);

        // Each recording is one unbroken picture across the other's change.
        let covered = |ran: Duration| ran - SETTLE + Duration::from_millis(500);
        assert_unbroken(
            &main_file,
            1280,
            720,
            covered(main_span),
            "main, across the backup's addition",
        );
        assert_unbroken(
            &backup_file,
            640,
            360,
            covered(backup_span),
            "backup, across main's removal",
        );
    };
    let (reads, ()) = tokio::join!(watch_playlists(&daemon, "show", &stop), operate);
    assert!(reads >= 10, "only {reads} playlist reads were checked");

    // HLS ran on through all of it: consecutive segments, each starting where the last ended.
    let (_, text) = daemon
        .get_text("/hls/show/720p/index.m3u8")
        .await
        .expect("playlist");
    let segments = dated_segments(&text);
    assert!(segments.len() >= 5, "{text}");
    for pair in segments.windows(2) {
        let ((t0, d0, u0), (t1, _, u1)) = (&pair[0], &pair[1]);
        let expected = *t0 + Duration::from_secs_f64(*d0);
        let off = match t1.duration_since(expected) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(
            off < Duration::from_millis(100),
            "HLS broke between {u0} and {u1}: {off:?} off\n{text}"
        );
    }
    assert!(!text.contains("DISCONTINUITY"), "{text}");
    let newest = segments.last().expect("segments").0;
    assert!(
        SystemTime::now().duration_since(newest).unwrap_or_default() < Duration::from_secs(8),
        "HLS stopped: newest segment from {newest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_remuxes_without_decoding() {
    let nginx = Nginx::start().await;
    let config = relay_config(
        "raw",
        r#"stream_key = "raw-key""#,
        &format!(
            "transcode = false\noutputs = [ {{ id = \"yt\", url = \"{}\" }} ]",
            nginx.url("raw")
        ),
    );
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("raw-key"), 60);
    daemon
        .wait_state("raw", "live", Duration::from_secs(20))
        .await;

    // The master playlist describes the publisher's own stream, once its first segment exists.
    let (_, master) = wait_for("the master playlist", Duration::from_secs(30), || async {
        daemon.get_text("/hls/raw/master.m3u8").await
    })
    .await;
    let variants = check_master_playlist(&master);
    assert_eq!(
        (
            variants[0].uri.as_str(),
            variants[0].width,
            variants[0].height
        ),
        ("source/index.m3u8", 1280, 720),
        "{master}"
    );
    let playlist = wait_for("three segments", Duration::from_secs(30), || async {
        let (_, text) = daemon.get_text("/hls/raw/source/index.m3u8").await?;
        let playlist = check_media_playlist(&text);
        (playlist.segments.len() >= 3).then_some(playlist)
    })
    .await;
    for (_, _, file) in fetch_segments(&daemon, "raw", "source", &playlist).await {
        let frames = video_frames(&file);
        assert!(frames.len() >= 30, "{file}: {} frames", frames.len());
        assert!(frames[0].2, "{file} does not start with a keyframe");
    }

    // The destination gets the publisher's stream, decodable.
    assert_h264_aac(&probe(&nginx.url("raw")), 1280, 720, "the nginx stand-in");
    assert!(decode_frames(&nginx.url("raw"), 30) >= 30);

    // Nothing was decoded or encoded: the program was built as a remux.
    let relay = daemon.relay("raw").await;
    assert_eq!(relay["transcode"], false, "{relay}");
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("program playing") && l.contains("transcode=false")),
        "the relay did not build a passthrough program"
    );
}

/// A rendition's fMP4 segments as files ffprobe reads: each one after its init segment
/// (`EXT-X-MAP`), as a player joins them. (media sequence number, EXTINF, file, the
/// segment's own bytes).
async fn fetch_fmp4(daemon: &Daemon, dir: &str, text: &str) -> Vec<(u64, f64, String, usize)> {
    let playlist = check_media_playlist(text);
    let map = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{dir}: no EXT-X-MAP\n{text}"));
    assert!(text.contains("#EXT-X-VERSION:"), "{text}");
    let init = daemon
        .get_bytes(&format!("{dir}/{map}"))
        .await
        .unwrap_or_else(|| panic!("{dir}/{map} is listed but not served"));
    let mut out = Vec::new();
    for (i, (extinf, uri)) in playlist.segments.iter().enumerate() {
        let Some(segment) = daemon.get_bytes(&format!("{dir}/{uri}")).await else {
            continue; // gone from the window since
        };
        let name = format!("{}-{uri}.mp4", dir.replace('/', "_"));
        let bytes = segment.len();
        let file = save(daemon.dir.path(), &name, &[init.clone(), segment].concat());
        out.push((playlist.media_sequence + i as u64, *extinf, file, bytes));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn fmp4_renditions_have_init_segments_aligned_segments_and_their_own_audio() {
    let config = relay_config(
        "cmaf",
        r#"stream_key = "cmaf-key""#,
        r#"hls = { renditions = ["720p", "360p"], format = "fmp4" }"#,
    );
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("cmaf-key"), 60);
    daemon
        .wait_on_air("cmaf", "input", Duration::from_secs(20))
        .await;
    let master = wait_for(
        "the master playlist and 4 segments in each rendition",
        Duration::from_secs(40),
        || async {
            let (_, master) = daemon.get_text("/hls/cmaf/master.m3u8").await?;
            for variant in check_master_playlist(&master) {
                let (_, text) = daemon
                    .get_text(&format!("/hls/cmaf/{}", variant.uri))
                    .await?;
                (check_media_playlist(&text).segments.len() >= 4).then_some(())?;
            }
            Some(master)
        },
    )
    .await;
    let variants = check_master_playlist(&master);
    let audio: Vec<_> = variants.iter().map(|v| v.audio.clone()).collect();
    assert_eq!(
        audio,
        [
            Some("audio/index.m3u8".to_owned()),
            Some("audio/index.m3u8".to_owned())
        ],
        "{master}"
    );
    // The audio rendition: AAC in fMP4, decodable after its init segment.
    let (_, text) = daemon
        .get_text("/hls/cmaf/audio/index.m3u8")
        .await
        .expect("the audio playlist");
    let audio = fetch_fmp4(&daemon, "/hls/cmaf/audio", &text).await;
    assert!(!audio.is_empty(), "{text}");
    let streams = probe(&audio[0].2);
    assert_eq!(
        streams
            .iter()
            .map(|s| (s.0.as_str(), s.1.as_str()))
            .collect::<Vec<_>>(),
        [("audio", "aac")],
        "{streams:?}"
    );
    let rate = |segments: &[(u64, f64, String, usize)]| {
        let seconds: f64 = segments.iter().map(|s| s.1).sum();
        segments.iter().map(|s| s.3).sum::<usize>() as f64 * 8.0 / seconds
    };
    let audio_rate = rate(&audio);
    let mut starts: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for (variant, (width, height)) in variants.iter().zip([(1280, 720), (640, 360)]) {
        let dir = format!("/hls/cmaf/{}", variant.uri.trim_end_matches("/index.m3u8"));
        let (mime, text) = daemon
            .get_text(&format!("/hls/cmaf/{}", variant.uri))
            .await
            .expect("the media playlist");
        assert_eq!(mime, "application/vnd.apple.mpegurl");
        let segments = fetch_fmp4(&daemon, &dir, &text).await;
        // Video and audio together stay within 110 % of the declared average.
        let measured = rate(&segments) + audio_rate;
        let ratio = measured / variant.average_bandwidth as f64;
        eprintln!(
            "{dir}: {:.0} kb/s with the audio's {:.0}, declared average {} kb/s ({:.0} %)",
            measured / 1000.0,
            audio_rate / 1000.0,
            variant.average_bandwidth / 1000,
            ratio * 100.0
        );
        assert!(
            ratio <= 1.10,
            "{dir}: {measured:.0} b/s over 110 % of {variant:?}"
        );
        for (sequence, extinf, file, _) in segments {
            let frames = video_frames(&file);
            assert!(!frames.is_empty(), "{file} has no video");
            assert!(frames[0].2, "{file} does not start with a keyframe");
            assert!(
                frames.iter().all(|f| (f.0, f.1) == (width, height)),
                "{file} is not {width}x{height}"
            );
            starts
                .entry(sequence)
                .or_default()
                .push((frames[0].3, extinf));
        }
    }
    // Segments with one number start on the same frame and last as long in both renditions.
    let shared: Vec<_> = starts.iter().filter(|(_, r)| r.len() == 2).collect();
    assert!(shared.len() >= 3, "too few shared segments: {starts:?}");
    for (sequence, pair) in shared {
        assert!(
            (pair[0].0 - pair[1].0).abs() < 0.001 && (pair[0].1 - pair[1].1).abs() < 0.001,
            "segment {sequence} is not aligned: {pair:?}"
        );
    }
}
