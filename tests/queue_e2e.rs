//! A queue relay with real publishers: three ffmpeg casters, each a solid colour, each with
//! their own caster key, share one broadcast in 8 s turns; nginx-rtmp stands in for YouTube
//! and records what it receives.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ffmpeg_lavfi_publisher, wait_for, Daemon, Nginx, Process};

/// A caster: a solid `colour` at 320x180 with a tone, a keyframe every second.
fn caster(url: &str, colour: &str, tone: u32) -> Process {
    ffmpeg_lavfi_publisher(
        url,
        &format!("color=c={colour}:size=320x180:rate=30"),
        &format!("sine=frequency={tone}:sample_rate=48000"),
        60,
        30,
    )
}

/// Each frame of `file` at 10 fps, as the name of the colour it is (`R`, `G`, `B`) or `?`.
fn colours(file: &std::path::Path) -> Vec<char> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-vf",
            "fps=10,scale=16:9",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    out.stdout
        .chunks_exact(16 * 9 * 3)
        .map(|frame| {
            // The centre pixel: away from any overlay or slate text.
            let at = (4 * 16 + 8) * 3;
            let (r, g, b) = (frame[at], frame[at + 1], frame[at + 2]);
            match (r > 180, g > 100, b > 180) {
                _ if r > 180 && g < 70 && b < 70 => 'R',
                _ if g > 100 && r < 70 && b < 70 => 'G',
                _ if b > 180 && r < 70 && g < 70 => 'B',
                _ => '?',
            }
        })
        .collect()
}

/// In the frame at `seconds` of `file` (640x360), the pixels of the queue line's place (a
/// 24-pixel bar 12 pixels above the bottom, from 12 pixels in): how many are the bar's dark
/// and how many its white letters.
fn queue_line_pixels(file: &std::path::Path, seconds: f64) -> (usize, usize) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &seconds.to_string(), "-i"])
        .arg(file)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("run ffmpeg");
    assert_eq!(out.stdout.len(), 640 * 360 * 3, "one 640x360 frame");
    let (mut dark, mut white) = (0, 0);
    for y in 326..346 {
        for x in 14..200 {
            let at = (y * 640 + x) * 3;
            let px = &out.stdout[at..at + 3];
            if px[0] < 90 && px[1] < 60 && px[2] < 60 {
                dark += 1;
            } else if px.iter().all(|&c| c > 190) {
                white += 1;
            }
        }
    }
    (dark, white)
}

/// Runs of the same colour: `("R", 80), ("?", 2), ...`.
fn runs(frames: &[char]) -> Vec<(char, usize)> {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for &c in frames {
        match runs.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread")]
async fn three_casters_take_turns_on_one_session_without_the_slate() {
    let nginx = Nginx::start_recording().await;
    let config = format!(
        "[program]\nwidth = 640\nheight = 360\nx264_preset = \"ultrafast\"\n\
         [hls]\nsegment_seconds = 2\n\
         [[relay]]\nid = \"community\"\ningest = {{ stream_key = \"house-key\" }}\n\
         queue = {{ turn = \"8s\", block_kicked = true, block_for = \"1m\" }}\n\
         overlay = {{}}\n\
         outputs = [ {{ id = \"youtube\", url = \"{}\" }} ]\n",
        nginx.url("yt-key")
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_output("community", "youtube", "live", Duration::from_secs(30))
        .await;

    let mut keys = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let key = daemon.add_caster("community", name).await;
        assert!(key.len() >= 32, "128 bits at least: {key}");
        keys.push(key);
    }
    // The relay's own key is not a caster's.
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    assert_eq!(queue["on_air"], serde_json::Value::Null, "{queue}");

    let mut casters = Vec::new();
    for (key, (colour, tone)) in keys
        .iter()
        .zip([("red", 440), ("green", 660), ("blue", 880)])
    {
        casters.push(caster(&daemon.publish_url(key), colour, tone));
        let joined = casters.len();
        wait_for("the caster to join", Duration::from_secs(20), || async {
            let (_, q) = daemon.get("/api/v1/relays/community/queue").await;
            let n = q["on_air"].is_object() as usize + q["waiting"].as_array().map_or(0, Vec::len);
            (n == joined).then_some(())
        })
        .await;
    }
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    assert_eq!(queue["on_air"]["name"], "alice", "{queue}");
    let waiting: Vec<&str> = queue["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, ["bob", "carol"]);

    // Alice's turn ends: bob, then carol.
    for next in ["bob", "carol"] {
        wait_for("the next turn", Duration::from_secs(20), || async {
            let (_, q) = daemon.get("/api/v1/relays/community/queue").await;
            (q["on_air"]["name"] == next).then_some(())
        })
        .await;
    }
    // A turn that ended blocks its caster: alice's key is refused.
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    let blocked: Vec<&str> = queue["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(blocked, ["alice", "bob"], "{queue}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(casters);
    let log = daemon.log();
    // Each hand-over, from the turn's end to the next caster's picture, within a second.
    let took: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("hand-over done"))
        .filter_map(|l| {
            l.split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!("hand-overs took {took:?} ms");
    assert_eq!(took.len(), 2, "two hand-overs: {took:?}");
    assert!(took.iter().all(|&ms| ms < 1000), "{took:?}");
    daemon.stop().await;
    let mut nginx = nginx;
    nginx.stop();

    let recordings = nginx.recordings();
    assert_eq!(
        recordings.len(),
        1,
        "one RTMP session throughout: {recordings:?}"
    );
    // The overlay's queue line ("ON AIR alice · 0:05 left · NEXT bob") at the bottom left:
    // a dark bar with white letters over alice's red.
    let (dark, white) = queue_line_pixels(&recordings[0], 5.0);
    eprintln!("queue line: {dark} dark and {white} white pixels of 3720");
    assert!(
        dark > 1000 && white > 30,
        "no queue line: {dark} dark, {white} white pixels"
    );
    let frames = colours(&recordings[0]);
    let runs = runs(&frames);
    eprintln!("colour runs at 10 fps: {runs:?}");
    if std::env::var_os("QUEUE_LOG").is_some() {
        eprintln!("{log}");
    }
    let order: Vec<char> = runs
        .iter()
        .filter(|(c, n)| *c != '?' && *n >= 10)
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(order, ['R', 'G', 'B'], "{runs:?}");
    // Bob's whole turn, between two timed hand-overs: 8 s, at 10 fps.
    let green = runs.iter().find(|(c, _)| *c == 'G').map_or(0, |(_, n)| *n);
    assert!(
        (75..=85).contains(&green),
        "bob on air for {green} frames: {runs:?}"
    );
    // Between two casters, nothing but their frames (a frozen last frame is the caster's).
    let first_red = runs.iter().position(|(c, _)| *c == 'R').unwrap();
    let last_blue = runs.iter().rposition(|(c, _)| *c == 'B').unwrap();
    let between: usize = runs[first_red..=last_blue]
        .iter()
        .filter(|(c, _)| *c == '?')
        .map(|(_, n)| n)
        .sum();
    assert!(
        between <= 2,
        "frames neither caster's between turns: {between}: {runs:?}"
    );
}

/// A queue relay `q` (no destination) with `queue` as its queue table's body.
fn queue_config(queue: &str, extra: &str) -> String {
    format!(
        "[program]\nwidth = 640\nheight = 360\nx264_preset = \"ultrafast\"\n\
         [hls]\nsegment_seconds = 2\n\
         [compat]\nqueue_relay = \"q\"\n\
         [[relay]]\nid = \"q\"\ningest = {{ stream_key = \"house-key\"{extra} }}\n\
         queue = {{ {queue} }}\n"
    )
}

/// Waits until relay `q`'s queue reads `expected` (see `Daemon::queue_names`).
async fn wait_line(daemon: &Daemon, expected: &[&str]) {
    let what = format!("the queue to read {expected:?}");
    wait_for(&what, Duration::from_secs(20), || async {
        (daemon.queue_names("q").await == expected).then_some(())
    })
    .await;
}

/// Publishes as a caster (a grey picture at 320x180).
fn publish(daemon: &Daemon, key: &str) -> Process {
    caster(&daemon.publish_url(key), "gray", 500)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_reorders_retimes_skips_kicks_and_toggles_the_block() {
    let daemon = Daemon::start(&queue_config(
        r#"turn = "60s", block_kicked = true, block_for = "1m""#,
        "",
    ))
    .await;
    daemon
        .wait_on_air("q", "slate", Duration::from_secs(20))
        .await;
    let mut keys = std::collections::BTreeMap::new();
    for name in ["ann", "ben", "cat"] {
        keys.insert(name, daemon.add_caster("q", name).await);
    }
    let (status, listed) = daemon.get("/api/v1/relays/q/casters").await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let mut ann = publish(&daemon, &keys["ann"]);
    wait_line(&daemon, &["ann"]).await;
    let mut ben = publish(&daemon, &keys["ben"]);
    wait_line(&daemon, &["ann", "ben"]).await;
    let _cat = publish(&daemon, &keys["cat"]);
    wait_line(&daemon, &["ann", "ben", "cat"]).await;

    // Reorder: every waiting caster once, or 400.
    let put = |order: &'static str| daemon.send("PUT", "/api/v1/relays/q/queue/order", order, None);
    assert_eq!(put(r#"{"order":["cat","ben"]}"#).await.status(), 200);
    assert_eq!(daemon.queue_names("q").await, ["ann", "cat", "ben"]);
    let refused = put(r#"{"order":["cat"]}"#).await;
    assert_eq!(refused.status(), 400);

    // The timer: extended, then (the seed's route) shortened and reset.
    let (status, q) = daemon
        .post(
            "/api/v1/relays/q/queue/timer",
            r#"{"seconds":120,"reset":false}"#,
        )
        .await;
    assert_eq!(status, 200, "{q}");
    let left = q["on_air"]["time_left"].as_f64().unwrap();
    assert!(left > 100.0 && left <= 120.0, "{q}");
    let (status, q) = daemon.get("/update-timer/30?reset_time=true").await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["turn"], 30.0);
    let left = q["on_air"]["time_left"].as_f64().unwrap();
    assert!(left > 25.0 && left <= 30.0, "{q}");
    assert_eq!(daemon.get("/update-timer/0").await.0, 400);
    assert_eq!(daemon.get("/update-timer/30?reset_time=maybe").await.0, 400);

    // The seed's list: on air first.
    let (status, names) = daemon.get("/queue-json").await;
    assert_eq!(status, 200);
    assert_eq!(names, serde_json::json!(["ann", "cat", "ben"]));
    let (mime, page) = daemon.get_text("/queue-list").await.expect("the page");
    assert!(mime.starts_with("text/html"), "{mime}");
    assert!(
        page.contains("ann") && page.contains("<li>cat</li>"),
        "{page}"
    );

    // Skip: ann is disconnected and blocked; cat goes on air.
    let (status, q) = daemon.post("/api/v1/relays/q/queue/skip", "").await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["on_air"]["name"], "cat", "{q}");
    assert_eq!(q["blocked"][0]["name"], "ann", "{q}");
    ann.wait_exit("ann's publisher, disconnected", Duration::from_secs(10))
        .await;
    let mut again = publish(&daemon, &keys["ann"]);
    again
        .wait_exit(
            "ann's publish, refused while blocked",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(daemon.queue_names("q").await, ["cat", "ben"]);

    // The seed's toggle changes state with a GET: a page on another site may not call it.
    let cross_site = daemon
        .http
        .get(format!("{}/update-block-toggle/", daemon.api))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("GET /update-block-toggle/");
    assert_eq!(cross_site.status(), 403);
    let (_, q) = daemon.get("/api/v1/relays/q/queue").await;
    assert_eq!(q["block_kicked"], true, "{q}");

    // The toggle lifts the block; a kicked caster may come straight back, at the back.
    let (status, toggled) = daemon.get("/update-block-toggle/").await;
    assert_eq!(status, 200, "{toggled}");
    assert_eq!(toggled["block_kicked"], false);
    let (_, q) = daemon.get("/api/v1/relays/q/queue").await;
    assert_eq!(q["blocked"], serde_json::json!([]), "{q}");
    assert_eq!(daemon.delete("/api/v1/relays/q/queue/ben").await, 200);
    ben.wait_exit("ben's publisher, kicked", Duration::from_secs(10))
        .await;
    let _ben = publish(&daemon, &keys["ben"]);
    wait_line(&daemon, &["cat", "ben"]).await;
    let _ann = publish(&daemon, &keys["ann"]);
    wait_line(&daemon, &["cat", "ben", "ann"]).await;
    assert_eq!(daemon.delete("/api/v1/relays/q/queue/nobody").await, 404);

    // A deleted caster's key stops working and they leave the line.
    assert_eq!(daemon.delete("/api/v1/relays/q/casters/ann").await, 204);
    wait_line(&daemon, &["cat", "ben"]).await;

    // Every change was a `queue` event.
    let mut events = daemon
        .http
        .get(format!("{}/api/v1/events", daemon.api))
        .header("last-event-id", "0")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("GET /api/v1/events");
    let wanted = [
        "joined",
        "reordered",
        "timer",
        "skipped",
        "block",
        "kicked",
        "caster_removed",
    ];
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = events.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            let all = wanted
                .iter()
                .all(|r| text.contains(&format!(r#""reason":"{r}""#)));
            if all {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "queue events missing from: {text}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_comes_back_after_a_restart_and_reconnects_keep_their_place() {
    let config = queue_config(r#"turn = "60s", grace = "6s""#, "");
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("q", "slate", Duration::from_secs(20))
        .await;
    let mut keys = Vec::new();
    let mut publishers = Vec::new();
    let mut expected = Vec::new();
    for name in ["ann", "ben", "cat"] {
        let key = daemon.add_caster("q", name).await;
        publishers.push(publish(&daemon, &key));
        expected.push(name);
        wait_line(&daemon, &expected).await;
        keys.push(key);
    }
    let dir = daemon.stop().await;
    drop(publishers);

    let daemon = Daemon::start_in(dir).await;
    daemon
        .wait_on_air("q", "slate", Duration::from_secs(20))
        .await;
    // Everyone is away, in the same order; ann, who was on air, waits first.
    assert_eq!(daemon.queue_names("q").await, ["-", "ann", "ben", "cat"]);
    let (_, q) = daemon.get("/api/v1/relays/q/queue").await;
    assert!(
        q["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["connected"] == false),
        "{q}"
    );
    // The keys survived: ben comes back first and goes on air; ann keeps first place.
    let _ben = publish(&daemon, &keys[1]);
    wait_line(&daemon, &["ben", "ann", "cat"]).await;
    let _ann = publish(&daemon, &keys[0]);
    // Cat does not come back within the grace period: their place goes.
    wait_line(&daemon, &["ben", "ann"]).await;
    let (_, q) = daemon.get("/api/v1/relays/q/queue").await;
    assert_eq!(q["waiting"][0]["connected"], true, "{q}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_hook_admits_refuses_and_times_out() {
    use std::sync::{Arc, Mutex};
    use warp::Filter;

    let asked: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = asked.clone();
    let hook = warp::path("hook")
        .and(warp::post())
        .and(warp::body::json())
        .then(move |body: serde_json::Value| {
            let log = log.clone();
            async move {
                let key = body["stream_key"].as_str().unwrap_or_default().to_owned();
                log.lock().unwrap().push(body);
                let ok = warp::http::StatusCode::OK;
                match key.as_str() {
                    "good-key" => warp::reply::with_status(r#"{"name":"hooked"}"#, ok),
                    "slow-key" => {
                        tokio::time::sleep(Duration::from_secs(6)).await;
                        warp::reply::with_status("{}", ok)
                    }
                    _ => warp::reply::with_status("{}", warp::http::StatusCode::FORBIDDEN),
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the hook");
    let addr = listener.local_addr().expect("the hook's address");
    tokio::spawn(warp::serve(hook).incoming(listener).run());
    let extra = format!(r#", auth_url = "http://{addr}/hook""#);
    let daemon = Daemon::start(&queue_config(r#"turn = "60s""#, &extra)).await;
    daemon
        .wait_on_air("q", "slate", Duration::from_secs(20))
        .await;

    let _good = publish(&daemon, "good-key");
    wait_line(&daemon, &["hooked"]).await;
    for key in ["bad-key", "slow-key"] {
        let started = std::time::Instant::now();
        let mut refused = publish(&daemon, key);
        refused
            .wait_exit("a publish the hook refuses", Duration::from_secs(15))
            .await;
        if key == "slow-key" {
            assert!(
                started.elapsed() >= Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
        assert_eq!(daemon.queue_names("q").await, ["hooked"]);
    }
    let asked = asked.lock().unwrap().clone();
    let keys: Vec<&str> = asked
        .iter()
        .map(|b| b["stream_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["good-key", "bad-key", "slow-key"]);
    assert!(asked.iter().all(|b| b["relay"] == "q"), "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|b| b["peer"].as_str().unwrap().starts_with("127.0.0.1:")),
        "{asked:?}"
    );
    let log = daemon.log();
    for key in ["good-key", "bad-key", "slow-key"] {
        assert!(!log.contains(key), "the log holds a stream key: {key}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caster_keys_are_for_admin_tokens_only() {
    use std::os::unix::fs::PermissionsExt;

    const ADMIN: &str = "admin-token-0123456789abcdef";
    const READER: &str = "reader-token-0123456789abcdef";
    let config = format!(
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
         [[auth.tokens]]\nname = \"site\"\ntoken = \"{READER}\"\nrole = \"read-only\"\n{}",
        queue_config(r#"turn = "60s""#, "")
    );
    let daemon = Daemon::start(&config).await;
    let made = daemon
        .send(
            "POST",
            "/api/v1/relays/q/casters",
            r#"{"name":"ann"}"#,
            Some(ADMIN),
        )
        .await;
    assert_eq!(made.status(), 201);
    let made: serde_json::Value = made.json().await.expect("JSON");
    let key = made["stream_key"].as_str().expect("a key").to_owned();
    let refused = daemon
        .send(
            "POST",
            "/api/v1/relays/q/casters",
            r#"{"name":"ben"}"#,
            Some(READER),
        )
        .await;
    assert_eq!(refused.status(), 403);

    let by = &daemon;
    let list = |token: Option<&'static str>| async move {
        let reply = by.send("GET", "/api/v1/relays/q/casters", "", token).await;
        (
            reply.status().as_u16(),
            reply.text().await.unwrap_or_default(),
        )
    };
    let (status, text) = list(Some(ADMIN)).await;
    assert!(status == 200 && text.contains(&key), "{status} {text}");
    let (status, text) = list(Some(READER)).await;
    assert!(
        status == 200 && text.contains("ann") && !text.contains(&key),
        "{status} {text}"
    );
    assert_eq!(list(None).await.0, 401);
    // The seed's toggle changes state: not with a read-only token.
    let toggle = daemon
        .send("GET", "/update-block-toggle/", "", Some(READER))
        .await;
    assert_eq!(toggle.status(), 403);

    let file = daemon.dir.path().join("data/queues/q.json");
    let mode = std::fs::metadata(&file)
        .expect("the queue file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    assert!(!daemon.log().contains(&key), "the log holds a caster's key");
    daemon.stop().await;
}
