//! The score overlay end to end: a real HTTP server stands in for the scores API, ffmpeg
//! publishes, and frames decoded from the daemon's HLS output are compared with the renderer's
//! own pictures of the expected scoreboards. The server then fails in three ways (500, garbage,
//! hanging): the last good score stays, the stale marker appears, and HLS never stalls.

mod common;

use std::time::{Duration, SystemTime};

use common::frames::{bug, bug_regions, closer, score_json};
use common::scores::{Answer, ScoresApi};
use common::*;
use image::RgbaImage;
use scorecast::render::Bug;

const POLL: Duration = Duration::from_millis(500);
const STALE_AFTER: Duration = Duration::from_secs(3);
/// How long a frame may wait between arriving (its program date-time) and having the overlay
/// drawn on it: the program's latency (the input switch's 0.3 s and the live sync's 0.1 s) and
/// some room for a loaded machine.
const DRAWN_WITHIN: Duration = Duration::from_secs(1);

/// Segments of the 720p media playlist, with their program date-time.
async fn segments(daemon: &Daemon) -> Vec<(SystemTime, f64, String)> {
    match daemon.get_text("/hls/final/720p/index.m3u8").await {
        Some((_, text)) => dated_segments(&text),
        None => Vec::new(),
    }
}

/// Waits for a segment that starts after `after`, and returns its frames' bug regions with
/// each frame's wall-clock time (program date-time + position).
async fn frames_after(
    daemon: &Daemon,
    after: SystemTime,
    bug: &Bug,
    timeout: Duration,
) -> Vec<(SystemTime, RgbaImage)> {
    let (pdt, _, uri) = wait_for("a segment after the change", timeout, || async {
        segments(daemon)
            .await
            .into_iter()
            .rev()
            .find(|(t, _, _)| *t >= after)
    })
    .await;
    segment_frames(daemon, pdt, &uri, bug).await
}

/// Waits until HLS covers `to`, and returns the frames of every segment that overlaps
/// `from..to`, each with its wall-clock time.
async fn frames_between(
    daemon: &Daemon,
    from: SystemTime,
    to: SystemTime,
    bug: &Bug,
    timeout: Duration,
) -> Vec<(SystemTime, RgbaImage)> {
    let listed = wait_for("a segment covering the window", timeout, || async {
        let listed = segments(daemon).await;
        listed
            .iter()
            .any(|(t, dur, _)| *t + Duration::from_secs_f64(*dur) >= to)
            .then_some(listed)
    })
    .await;
    let mut frames = Vec::new();
    for (pdt, dur, uri) in listed {
        if pdt + Duration::from_secs_f64(dur) >= from && pdt <= to {
            frames.extend(segment_frames(daemon, pdt, &uri, bug).await);
        }
    }
    frames
}

async fn segment_frames(
    daemon: &Daemon,
    pdt: SystemTime,
    uri: &str,
    bug: &Bug,
) -> Vec<(SystemTime, RgbaImage)> {
    let bytes = daemon
        .get_bytes(&format!("/hls/final/720p/{uri}"))
        .await
        .expect("segment served");
    let file = save(daemon.dir.path(), "overlay-segment.ts", &bytes);
    bug_regions(&file, bug)
        .into_iter()
        .enumerate()
        .map(|(i, img)| (pdt + Duration::from_secs_f64(i as f64 / 30.0), img))
        .collect()
}

async fn wait_score_error(daemon: &Daemon, needle: &str) {
    wait_for(
        &format!("the score API error to mention {needle:?}"),
        Duration::from_secs(10),
        || async {
            let (_, score) = daemon.get("/api/v1/relays/final/score").await;
            score["last_error"]
                .as_str()
                .filter(|e| e.contains(needle))
                .map(|_| ())
        },
    )
    .await;
}

/// A live relay `final` whose overlay polls a scores server answering 1-0 every 500 ms.
/// `overlay_extra` adds fields to the overlay table. Returns the server (to change its
/// answer), the daemon and the publisher (keep it alive).
async fn live_relay_with_scores(overlay_extra: &str) -> (ScoresApi, Daemon, Process) {
    let api = ScoresApi::start(Answer::Score(score_json(1))).await;
    // The stand-in is on loopback, which a relay reaches only when it allows private addresses.
    let config = relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(
            r#"overlay = {{ scores_url = "{}", poll_interval = "500ms", allow_private = true{overlay_extra} }}"#,
            api.url("match")
        ),
    );
    let daemon = Daemon::spawn(&config).await;
    let publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 120);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(20))
        .await;
    (api, daemon, publisher)
}

#[tokio::test(flavor = "multi_thread")]
async fn scores_api_drives_the_overlay_and_failures_keep_the_last_good_score() {
    let (answer, daemon, _publisher) = live_relay_with_scores(r#", stale_after = "3s""#).await;
    let (_, score) = daemon.get("/api/v1/relays/final/score").await;
    assert_eq!(score["source"], "api", "{score}");
    assert_eq!(score["scoreboard"]["home"]["score"], "1", "{score}");

    let (one, two) = (bug(1, false), bug(2, false));
    let frames = frames_after(
        &daemon,
        SystemTime::UNIX_EPOCH,
        &one,
        Duration::from_secs(20),
    )
    .await;
    let (_, last) = frames.last().expect("frames");
    assert!(
        closer(last, &one, &two) < -20.0,
        "the picture does not show 1-0"
    );

    // The score changes at the API.
    let changed_at = SystemTime::now();
    answer.set(Answer::Score(score_json(2)));
    // Judged by each frame's program date-time: the frame's time as the relay received it.
    let due = changed_at + POLL + Duration::from_secs(1);
    let frames = frames_between(
        &daemon,
        changed_at - DRAWN_WITHIN - Duration::from_secs(1),
        due + Duration::from_secs(1),
        &one,
        Duration::from_secs(20),
    )
    .await;
    let shows_two = |img: &RgbaImage| closer(img, &two, &one) < -20.0;
    let first_two = frames
        .iter()
        .find(|(_, img)| shows_two(img))
        .map(|(t, _)| *t)
        .expect("no frame after the change shows 2-0");
    let after = |t: SystemTime| {
        t.duration_since(changed_at)
            .map_or(-0.0, |d| d.as_secs_f64())
    };
    eprintln!(
        "score change at the API → first HLS frame with it at +{:.3} s by program date-time \
         (poll interval {POLL:?})",
        after(first_two)
    );
    assert!(
        frames
            .iter()
            .filter(|(t, _)| *t + DRAWN_WITHIN < changed_at)
            .all(|(_, img)| !shows_two(img)),
        "a frame dated over {DRAWN_WITHIN:?} before the change shows 2-0: program date-time \
         runs behind the picture"
    );
    assert!(
        frames
            .iter()
            .filter(|(t, _)| *t >= due)
            .all(|(_, img)| shows_two(img)),
        "a frame dated {:.3} s or more after the change lacks 2-0",
        after(due)
    );
    // When the overlay took the new score, from the daemon's log (its clock is the test's).
    let swapped_at = wait_for(
        "the overlay to take the new score",
        Duration::from_secs(5),
        || async {
            daemon
                .log()
                .lines()
                .filter(|l| l.contains("overlay updated") && l.contains("seq=3"))
                .find_map(|l| parse_rfc3339(l.split_whitespace().next()?))
        },
    )
    .await;
    eprintln!(
        "score change at the API → overlay swapped after {:.3} s",
        after(swapped_at)
    );

    // The API fails in three ways; each is reported and the last good score stays.
    let media_sequence = |text: &str| check_media_playlist(text).media_sequence;
    let before = media_sequence(
        &daemon
            .get_text("/hls/final/720p/index.m3u8")
            .await
            .expect("playlist")
            .1,
    );
    answer.set(Answer::Error500);
    wait_score_error(&daemon, "HTTP 500").await;
    answer.set(Answer::Garbage);
    wait_score_error(&daemon, "not JSON").await;
    answer.set(Answer::Hang);
    wait_score_error(&daemon, "no answer").await;
    let (_, score) = daemon.get("/api/v1/relays/final/score").await;
    assert_eq!(
        score["scoreboard"]["home"]["score"], "2",
        "the last good score stays: {score}"
    );

    // After the configured age, the stale marker is on the picture, still showing 2-0.
    let stale_since = wait_for(
        "the scoreboard to be stale",
        STALE_AFTER + Duration::from_secs(5),
        || async {
            let (_, score) = daemon.get("/api/v1/relays/final/score").await;
            (score["stale"] == true).then(SystemTime::now)
        },
    )
    .await;
    let stale = bug(2, true);
    let frames = frames_after(&daemon, stale_since, &stale, Duration::from_secs(20)).await;
    let (_, last) = frames.last().expect("frames");
    assert!(
        closer(last, &stale, &two) < -10.0,
        "no stale marker on the picture"
    );
    assert!(
        closer(last, &stale, &bug(1, true)) < -20.0,
        "the stale picture lost the last good score"
    );

    // The stream never stalled.
    let after = media_sequence(
        &daemon
            .get_text("/hls/final/720p/index.m3u8")
            .await
            .expect("playlist")
            .1,
    );
    assert!(
        after > before,
        "HLS stalled: media sequence {before} → {after}"
    );
    let relay = daemon.relay("final").await;
    assert_eq!(relay["state"], "live", "{relay}");
    assert!(
        daemon.log().contains("the last good scoreboard stays"),
        "the failure is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_score_is_drawn_and_not_overwritten_by_the_stale_api_value() {
    let (answer, daemon, _publisher) = live_relay_with_scores("").await;
    wait_for("the API's score", Duration::from_secs(10), || async {
        let (_, s) = daemon.get("/api/v1/relays/final/score").await;
        (s["source"] == "api").then_some(())
    })
    .await;

    // The operator corrects the lagging API by hand.
    let set_at = SystemTime::now();
    let r = daemon
        .http
        .put(format!("{}/api/v1/relays/final/score", daemon.api))
        .header("content-type", "application/json")
        .body(score_json(2))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 200);
    // The API keeps saying 1-0 for several polls; the manual 2-0 stays.
    tokio::time::sleep(POLL * 4).await;
    let (_, score) = daemon.get("/api/v1/relays/final/score").await;
    assert_eq!(
        (
            score["source"].as_str(),
            score["scoreboard"]["home"]["score"].as_str()
        ),
        (Some("manual"), Some("2")),
        "{score}"
    );
    let (one, two) = (bug(1, false), bug(2, false));
    let frames = frames_after(&daemon, set_at, &two, Duration::from_secs(20)).await;
    assert!(
        frames
            .iter()
            .all(|(_, img)| closer(img, &two, &one) < -20.0),
        "a frame after the PUT lacks 2-0"
    );

    // The API moves on (3-0): it takes over again.
    answer.set(Answer::Score(score_json(3)));
    wait_for("the API to take over", Duration::from_secs(5), || async {
        let (_, s) = daemon.get("/api/v1/relays/final/score").await;
        (s["source"] == "api" && s["scoreboard"]["home"]["score"] == "3").then_some(())
    })
    .await;

    // Bad PUT bodies are refused with the field named; nothing changes.
    let r = daemon
        .http
        .put(format!("{}/api/v1/relays/final/score", daemon.api))
        .header("content-type", "application/json")
        .body(r#"{"home":{"name":"A"},"away":{"name":"B","score":1}}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("score"),
        "{body}"
    );
}

/// A relay `final` on its slate with a running clock (top right, from 300 s down) and a
/// hidden lower third that fades over 6 frames.
const GRAPHICS: &str = r#"
[[relay.graphics.layers]]
id = "clock"
kind = "clock"
anchor = "top-right"
data = { seconds = 300, running = true, direction = "down" }
[[relay.graphics.layers]]
id = "caster"
kind = "lower_third"
anchor = "bottom-left"
visible = false
fade_frames = 6
data = { title = "Anders Blume", subtitle = "Play-by-play" }
"#;

/// What scorecast draws for `graphic` on a 1280x720 frame in the default theme.
fn drawn(graphic: &scorecast::render::graphics::Graphic<'_>, anchor: &str) -> Bug {
    use scorecast::render::graphics::{render, Anchor, Style};
    let anchor: Anchor = serde_json::from_value(serde_json::json!(anchor)).expect("an anchor");
    render(graphic, &Style::default(), anchor, 24, 1.0, 1280, 720)
}

/// Sets layer `layer` of relay `final` with `body`; returns when the API has answered.
async fn put_layer(daemon: &Daemon, layer: &str, body: &str) -> serde_json::Value {
    let reply = daemon
        .send(
            "PUT",
            &format!("/api/v1/relays/final/graphics/{layer}"),
            body,
            None,
        )
        .await;
    assert_eq!(reply.status(), 200);
    reply.json().await.expect("the layer")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_layer_counts_down_between_two_polls_5_s_apart_in_the_frames() {
    // The scores API's clock, bound to the layer: 200 s at the first poll, 195 at the next
    // (5 s later), and so on, as a match clock would be.
    let api = ScoresApi::start(Answer::Each(std::sync::Arc::new(|n| {
        format!(
            r#"{{"home":{{"name":"NAVI","score":1}},"away":{{"name":"G2","score":0}},"timer":{}}}"#,
            200 - 5 * n.min(30)
        )
    })))
    .await;
    let daemon = Daemon::start(&relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(
            r#"overlay = {{ scores_url = "http://{}/match", poll_interval = "5s", allow_private = true }}
[[relay.graphics.layers]]
id = "clock"
kind = "clock"
anchor = "top-right"
data = {{ running = true, direction = "down" }}
bind = {{ seconds = "/timer" }}
"#,
            api.addr
        ),
    ))
    .await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let (_, layers) = daemon.get("/api/v1/relays/final/graphics").await;
    assert_eq!(layers["layers"][0]["kind"], "clock", "{layers}");
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let to = SystemTime::now();
    // Each frame's clock, read by the closest of the renders of 190 to 200 s.
    let renders: Vec<(u64, Bug)> = (150..=200)
        .map(|s| {
            let clock = scorecast::render::graphics::Graphic::Clock {
                label: None,
                seconds: s,
            };
            (s, drawn(&clock, "top-right"))
        })
        .collect();
    let frames = frames_between(
        &daemon,
        from + Duration::from_secs(1),
        to - Duration::from_millis(500),
        &renders[0].1,
        Duration::from_secs(20),
    )
    .await;
    let read: Vec<(SystemTime, u64)> = frames
        .iter()
        .filter(|(t, _)| {
            *t >= from + Duration::from_secs(1) && *t <= to - Duration::from_millis(500)
        })
        .map(|(t, region)| {
            let error = |bug: &Bug| -> u64 {
                region
                    .pixels()
                    .zip(bug.image.pixels())
                    .filter(|(_, b)| b[3] > 0)
                    .map(|(a, b)| (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>())
                    .sum()
            };
            let best = renders
                .iter()
                .min_by_key(|(_, bug)| error(bug))
                .map(|(s, _)| *s)
                .expect("renders");
            (*t, best)
        })
        .collect();
    assert!(read.len() >= 60, "only {} frames read", read.len());
    let values: Vec<u64> = read.iter().map(|(_, s)| *s).collect();
    eprintln!("clock read from frames: {values:?}");
    // It counts down one second at a time, each reading held for about a second of frames.
    for pair in values.windows(2) {
        assert!(
            pair[1] == pair[0] || pair[1] + 1 == pair[0],
            "the clock went {} → {}: {values:?}",
            pair[0],
            pair[1]
        );
    }
    let changes: Vec<usize> = (1..values.len())
        .filter(|&i| values[i] != values[i - 1])
        .collect();
    assert!(changes.len() >= 2, "{values:?}");
    for pair in changes.windows(2) {
        let held = pair[1] - pair[0];
        assert!(
            (28..=32).contains(&held),
            "a reading held {held} frames: {values:?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lower_third_shown_by_the_api_appears_at_once_and_fades_out_when_hidden() {
    let daemon = Daemon::start(&relay_config(
        "final",
        r#"stream_key = "final-key""#,
        GRAPHICS,
    ))
    .await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shown_at = SystemTime::now();
    let view = put_layer(&daemon, "caster", r#"{"visible": true}"#).await;
    assert_eq!(view["visible"], true, "{view}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hidden_at = SystemTime::now();
    put_layer(&daemon, "caster", r#"{"visible": false}"#).await;
    let third = scorecast::render::graphics::Graphic::LowerThird {
        title: "Anders Blume",
        subtitle: Some("Play-by-play"),
    };
    let full = drawn(&third, "bottom-left");
    let frames = frames_between(
        &daemon,
        shown_at - Duration::from_secs(1),
        hidden_at + Duration::from_secs(1),
        &full,
        Duration::from_secs(20),
    )
    .await;
    // How much of the lower third each frame shows: 0 (the slate's own pixels, from a frame
    // before it was shown) to 1 (the full render).
    let (_, before) = frames
        .iter()
        .find(|(t, _)| *t < shown_at - Duration::from_millis(500))
        .expect("a frame before it was shown");
    let shown = |region: &RgbaImage| -> f64 {
        let (mut moved, mut span) = (0.0, 0.0);
        for ((a, b), f) in region
            .pixels()
            .zip(before.pixels())
            .zip(full.image.pixels())
        {
            for c in 0..3 {
                let whole = f64::from(f[c]) - f64::from(b[c]);
                if whole.abs() > 60.0 {
                    moved += (f64::from(a[c]) - f64::from(b[c])) / whole;
                    span += 1.0;
                }
            }
        }
        moved / span
    };
    let seen: Vec<(SystemTime, f64)> = frames.iter().map(|(t, r)| (*t, shown(r))).collect();
    let first = seen
        .iter()
        .find(|(_, s)| *s > 0.05)
        .expect("the lower third appears");
    // A frame is drawn on as it passes the overlay, up to the program's latency after its
    // date (DRAWN_WITHIN): the first frames to show the layer may be dated before the PUT.
    let frame = Duration::from_secs(1) / 30;
    let late = first.0.duration_since(shown_at).unwrap_or_default();
    let early = shown_at.duration_since(first.0).unwrap_or_default();
    eprintln!("lower third: first on the frame dated {late:?} after, {early:?} before the PUT");
    assert!(early <= DRAWN_WITHIN, "on a frame {early:?} before the PUT");
    assert!(
        late <= Duration::from_millis(100) + frame,
        "it appeared on a frame dated {late:?} after the PUT"
    );
    // Full while shown, then a fade of about 6 frames down to nothing.
    let full_at = seen
        .iter()
        .filter(|(t, _)| {
            *t > shown_at + Duration::from_millis(800) && *t < hidden_at - DRAWN_WITHIN
        })
        .map(|(_, s)| *s)
        .fold(f64::MAX, f64::min);
    assert!(full_at > 0.8, "not fully shown while visible: {full_at}");
    let fading: Vec<f64> = seen
        .iter()
        .filter(|(t, s)| *t > hidden_at - DRAWN_WITHIN && *s > 0.1 && *s < 0.8)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        (2..=8).contains(&fading.len()),
        "a fade of 6 frames, seen on {} frames: {fading:?}",
        fading.len()
    );
    let after = seen
        .iter()
        .filter(|(t, _)| *t > hidden_at + Duration::from_millis(500))
        .map(|(_, s)| *s)
        .fold(0.0, f64::max);
    assert!(after < 0.05, "still shown after the fade: {after}");
    assert!(daemon.log().contains("graphics layer shown or hidden"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_rotation_changes_picture_at_its_period() {
    // One picture in <data_dir>/graphics/, the other fetched from a web server.
    let server = ScoresApi::start(Answer::Score("{}".to_owned())).await;
    let dir = config_dir(&relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(
            r#"
[relay.graphics]
allow_private = true
[[relay.graphics.layers]]
id = "sponsor"
kind = "image"
anchor = "bottom-right"
data = {{ images = ["blue.png", "http://{}/files/orange.png"], period = "1s" }}
"#,
            server.addr
        ),
    ));
    let graphics = dir.path().join("data/graphics");
    std::fs::create_dir_all(&graphics).expect("the graphics directory");
    let blue = image::Rgba([0, 90, 255, 255]);
    let orange = image::Rgba([255, 140, 0, 255]);
    for (name, colour) in [("blue.png", blue), ("orange.png", orange)] {
        RgbaImage::from_pixel(200, 100, colour)
            .save(graphics.join(name))
            .expect("a picture");
    }
    let served = std::fs::read(graphics.join("orange.png")).expect("the picture");
    std::fs::remove_file(graphics.join("orange.png")).expect("only served");
    server.put_file("orange.png", served);
    let daemon = Daemon::start_in(dir).await;
    daemon
        .wait_on_air("final", "slate", Duration::from_secs(20))
        .await;
    let sponsor = RgbaImage::from_pixel(200, 100, blue);
    let drawn = {
        use scorecast::render::graphics::{render, Anchor, Graphic, Style};
        render(
            &Graphic::Image { image: &sponsor },
            &Style::default(),
            Anchor::BottomRight,
            24,
            1.0,
            1280,
            720,
        )
    };
    let from = SystemTime::now() + Duration::from_secs(1);
    let to = from + Duration::from_secs(4);
    let frames = frames_between(&daemon, from, to, &drawn, Duration::from_secs(20)).await;
    // Which picture each frame shows, by its mean colour.
    let shows: Vec<char> = frames
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, region)| {
            let n = region.pixels().len() as u64;
            let mean = |c: usize| region.pixels().map(|p| u64::from(p[c])).sum::<u64>() / n;
            if mean(2) > mean(0) {
                'b'
            } else {
                'o'
            }
        })
        .collect();
    let text: String = shows.iter().collect();
    eprintln!("sponsor shown: {text}");
    let changes: Vec<usize> = (1..shows.len())
        .filter(|&i| shows[i] != shows[i - 1])
        .collect();
    assert!(changes.len() >= 3, "{text}");
    for pair in changes.windows(2) {
        let held = pair[1] - pair[0];
        assert!(
            (28..=32).contains(&held),
            "a picture held {held} frames: {text}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_bound_to_a_second_data_url_follows_it() {
    let data = ScoresApi::start(Answer::Score(
        r#"{"ticker": ["Semi-final next"]}"#.to_owned(),
    ))
    .await;
    let daemon = Daemon::start(&relay_config(
        "final",
        r#"stream_key = "final-key""#,
        &format!(
            r#"[relay.graphics]
data_url = "http://{}/match"
poll_interval = "200ms"
allow_private = true
[[relay.graphics.layers]]
id = "ticker"
kind = "text"
anchor = "bottom"
bind = {{ text = "data:/ticker/0" }}
"#,
            data.addr
        ),
    ))
    .await;
    let text = || async {
        let (_, view) = daemon.get("/api/v1/relays/final/graphics").await;
        view["layers"][0]["data"]["text"]
            .as_str()
            .map(str::to_owned)
    };
    wait_for("the first answer", Duration::from_secs(10), || async {
        (text().await.as_deref() == Some("Semi-final next")).then_some(())
    })
    .await;
    data.set(Answer::Score(
        r#"{"ticker": ["Final at 20:00"]}"#.to_owned(),
    ));
    wait_for("the next answer", Duration::from_secs(10), || async {
        (text().await.as_deref() == Some("Final at 20:00")).then_some(())
    })
    .await;
    // Garbage keeps the last good value, and says why once.
    data.set(Answer::Garbage);
    wait_for(
        "the refusal in the log",
        Duration::from_secs(10),
        || async {
            daemon
                .log()
                .contains("graphics data URL answer not used")
                .then_some(())
        },
    )
    .await;
    assert_eq!(text().await.as_deref(), Some("Final at 20:00"));
    daemon.stop().await;
}
