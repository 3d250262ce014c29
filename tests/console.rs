//! The operator console in a real browser: Debian's Chromium, driven by Playwright
//! (`tests/console/drive.mjs`), against the running daemon with an ffmpeg publisher and an
//! nginx-rtmp stand-in. The page is used as an operator would (clicks and forms); what it
//! changed is then checked where it matters: the API, the decoded HLS picture, and nginx.
//!
//! Screenshots go to `tests/artifacts/console/<test>/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::frames::{bug, bug_regions, closer, score_json};
use common::*;
use scorecast::render::Bug;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/drive.mjs");

/// The browser, through `drive.mjs`: one JSON command per line in, one reply per line out.
struct Browser {
    process: Process,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<Value>,
    /// What the page reported on its own: uncaught errors, console errors, failed requests.
    page_events: Arc<Mutex<Vec<Value>>>,
    artifacts: PathBuf,
    next_id: u64,
}

impl Browser {
    /// Starts the driver and Chromium with a `width`x`height` viewport.
    async fn launch(test: &str, width: u32, height: u32) -> Self {
        require_tool("node");
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium (scripts/deps --test)"
        );
        let modules = Path::new(DRIVER).with_file_name("node_modules");
        assert!(
            modules.join("playwright-core").exists(),
            "{} has no playwright-core: run scripts/deps --test (npm ci --prefix tests/console)",
            modules.display()
        );
        let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/artifacts/console")
            .join(test);
        std::fs::create_dir_all(&artifacts).expect("artefact dir");
        let mut process = Process::spawn(
            "node drive.mjs",
            Command::new("node")
                .arg(DRIVER)
                .env("CHROMIUM", CHROMIUM)
                .env("CONSOLE_ARTIFACTS", &artifacts)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let (stdin, stdout) = process.take_stdio();
        let (stdin, stdout) = (stdin.expect("piped stdin"), stdout.expect("piped stdout"));
        let (tx, replies) = mpsc::unbounded_channel();
        let page_events = Arc::new(Mutex::new(Vec::new()));
        let events = page_events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("drive.mjs: {line}");
                    continue;
                };
                if value.get("event").is_some() {
                    eprintln!("page: {value}");
                    events.lock().expect("page events").push(value);
                } else if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut browser = Self {
            process,
            stdin,
            replies,
            page_events,
            artifacts,
            next_id: 1,
        };
        let version = browser
            .call(json!({"cmd": "launch", "width": width, "height": height}))
            .await;
        eprintln!("Chromium {version}");
        browser
    }

    /// Sends a command and returns its value; panics with the driver's error otherwise.
    async fn call(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let timeout = command["timeout"].as_u64().unwrap_or(10_000);
        writeln!(self.stdin, "{command}").expect("write to drive.mjs");
        self.stdin.flush().expect("flush drive.mjs");
        let wait = Duration::from_millis(timeout) + Duration::from_secs(30);
        let reply = tokio::time::timeout(wait, self.replies.recv())
            .await
            .unwrap_or_else(|_| panic!("drive.mjs did not answer {command} in {wait:?}"))
            .unwrap_or_else(|| panic!("drive.mjs exited during {command}"));
        assert_eq!(reply["reply"], json!(id), "out of order: {reply}");
        assert!(
            reply["ok"] == true,
            "in the browser, {command} failed: {}\n(screenshot: {})",
            reply["error"],
            reply["screenshot"]
        );
        reply["value"].clone()
    }

    async fn goto(&mut self, url: &str) {
        let status = self.call(json!({"cmd": "goto", "url": url})).await;
        assert_eq!(status, 200, "GET {url}");
    }

    async fn click(&mut self, selector: &str) {
        self.call(json!({"cmd": "click", "selector": selector}))
            .await;
    }

    async fn fill(&mut self, selector: &str, value: &str) {
        self.call(json!({"cmd": "fill", "selector": selector, "value": value}))
            .await;
    }

    /// Runs `function` (JavaScript source, given `arg`) in the page; returns its value.
    async fn eval(&mut self, function: &str, arg: Value) -> Value {
        self.call(json!({"cmd": "eval", "expression": function, "arg": arg}))
            .await
    }

    /// Waits until `function` (given `arg`) returns something truthy; returns it.
    async fn wait_until(
        &mut self,
        what: &str,
        function: &str,
        arg: Value,
        timeout: Duration,
    ) -> Value {
        eprintln!("page: waiting for {what}");
        self.call(json!({
            "cmd": "wait_fn",
            "expression": function,
            "arg": arg,
            "timeout": timeout.as_millis() as u64,
        }))
        .await
    }

    /// Waits until the text of `selector` is `text` (trimmed).
    async fn wait_text(&mut self, selector: &str, text: &str, timeout: Duration) {
        self.wait_until(
            &format!("{selector} to read {text:?}"),
            "([s, t]) => { const e = document.querySelector(s); \
             return e !== null && e.textContent.trim() === t; }",
            json!([selector, text]),
            timeout,
        )
        .await;
    }

    /// Waits until the element at `selector` has `data-<name>` = `value`.
    async fn wait_data(&mut self, selector: &str, name: &str, value: &str, timeout: Duration) {
        self.wait_until(
            &format!("{selector} to have data-{name}={value}"),
            "([s, n, v]) => { const e = document.querySelector(s); \
             return e !== null && e.dataset[n] === v; }",
            json!([selector, name, value]),
            timeout,
        )
        .await;
    }

    async fn screenshot(&mut self, name: &str, full_page: bool) -> String {
        let path = self
            .call(json!({"cmd": "screenshot", "name": name, "full_page": full_page}))
            .await;
        let path = path.as_str().expect("a path").to_owned();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{path}: a screenshot of {size} bytes");
        eprintln!("screenshot: {path}");
        path
    }

    /// The page's uncaught errors so far.
    fn page_errors(&self) -> Vec<Value> {
        self.page_events
            .lock()
            .expect("page events")
            .iter()
            .filter(|e| e["event"] == "pageerror")
            .cloned()
            .collect()
    }

    /// Whether the page is wider than the viewport (a sideways scroll).
    async fn overflows(&mut self) -> Value {
        self.eval(
            "() => document.documentElement.scrollWidth > window.innerWidth \
             ? [document.documentElement.scrollWidth, window.innerWidth] : false",
            Value::Null,
        )
        .await
    }

    async fn close(mut self) {
        self.call(json!({"cmd": "close"})).await;
        drop(self.stdin);
        let _ = self
            .process
            .wait_exit("drive.mjs to exit", Duration::from_secs(10))
            .await;
        eprintln!("artefacts in {}", self.artifacts.display());
    }
}

fn row(relay: &str) -> String {
    format!("#relays li[data-relay=\"{relay}\"]")
}

fn output_row(output: &str) -> String {
    format!("#outputs li[data-output=\"{output}\"]")
}

/// The frames of the first 720p segment that starts at or after `after`, decoded.
async fn frames_after(daemon: &Daemon, after: SystemTime, bug: &Bug) -> Vec<image::RgbaImage> {
    let uri = wait_for(
        "a segment after the change",
        Duration::from_secs(20),
        || async {
            let (_, text) = daemon.get_text("/hls/final/720p/index.m3u8").await?;
            dated_segments(&text)
                .into_iter()
                .find(|(t, _, _)| *t >= after)
                .map(|(_, _, uri)| uri)
        },
    )
    .await;
    let bytes = daemon
        .get_bytes(&format!("/hls/final/720p/{uri}"))
        .await
        .expect("segment served");
    let file = save(daemon.dir.path(), "console-segment.ts", &bytes);
    bug_regions(&file, bug)
}

const PREVIEW_STATE: &str = "() => { const v = document.getElementById('preview'); \
    const d = window.scorecastConsole; \
    return { time: v.currentTime, height: v.videoHeight, paused: v.paused, \
             error: v.error ? v.error.code : null, playerErrors: d.playerErrors, \
             videoErrors: d.videoErrors, status: document.getElementById('player-status').textContent }; }";

/// Twenty relays, one of them live with a publisher: watch it, start it, score it, add a
/// destination, preview it, stop it, all from the page.
#[tokio::test(flavor = "multi_thread")]
async fn console_runs_a_live_relay() {
    let nginx = Nginx::start().await;
    let daemon = Daemon::start(TEST_PROGRAM).await;
    for n in 1..20 {
        let (status, body) = daemon
            .post(
                "/api/v1/relays",
                &format!(r#"{{"id":"match-{n:02}","ingest":{{"stream_key":"key-{n:02}"}}}}"#),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = daemon
        .post(
            "/api/v1/relays",
            r#"{"id":"final","ingest":{"stream_key":"final-key"},"overlay":{},
                "hls":{"renditions":["720p","360p"]}}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let r = daemon
        .send("PUT", "/api/v1/relays/final/score", &score_json(1), None)
        .await;
    assert_eq!(r.status().as_u16(), 200);

    let mut page = Browser::launch("console_runs_a_live_relay", 1280, 720).await;
    page.goto(&format!("{}/#final", daemon.api)).await;
    page.wait_data("#events", "state", "live", Duration::from_secs(10))
        .await;
    page.wait_data(&row("final"), "state", "stopped", Duration::from_secs(10))
        .await;
    let rows = page
        .eval(
            "() => document.querySelectorAll('#relays li').length",
            Value::Null,
        )
        .await;
    assert_eq!(rows, 20, "every relay has a row");
    page.wait_text("#home-score", "1", Duration::from_secs(10))
        .await;
    page.wait_text("#home-name", "NAVI", Duration::from_secs(1))
        .await;

    // Start from the page; the relay goes live on its slate.
    page.click("#start").await;
    page.wait_data(&row("final"), "state", "live", Duration::from_secs(30))
        .await;
    page.wait_text("#d-state", "live", Duration::from_secs(5))
        .await;
    assert_eq!(daemon.relay("final").await["state"], "live");

    // A publisher comes: only the live events can tell the page.
    let _publisher = ffmpeg_publisher(&daemon.publish_url("final-key"), 180);
    daemon
        .wait_on_air("final", "input", Duration::from_secs(30))
        .await;
    let publisher = format!("{} [data-field=publisher]", row("final"));
    page.wait_text(&publisher, "publisher connected", Duration::from_secs(10))
        .await;
    let showing = format!("{} [data-field=showing]", row("final"));
    page.wait_text(&showing, "on air: input", Duration::from_secs(10))
        .await;
    // Its row shows the program's thumbnail, fetched with the page's token as a blob.
    page.wait_until(
        "the relay's thumbnail",
        "(s) => { const i = document.querySelector(s); \
         return i !== null && !i.hidden && i.src.startsWith('blob:') && i.naturalWidth === 320; }",
        json!(format!("{} img.r-thumb", row("final"))),
        Duration::from_secs(15),
    )
    .await;
    let seen = page
        .eval("() => window.scorecastConsole.eventsSeen", Value::Null)
        .await;
    assert!(seen.as_u64() > Some(0), "the page saw no live event");

    // +1 for the home side, from the page.
    page.click("#home-plus").await;
    page.wait_text("#home-score", "2", Duration::from_secs(10))
        .await;
    let changed_at = SystemTime::now();
    let (_, score) = daemon.get("/api/v1/relays/final/score").await;
    assert_eq!(
        (
            score["scoreboard"]["home"]["score"].as_str(),
            score["scoreboard"]["away"]["score"].as_str(),
            score["source"].as_str()
        ),
        (Some("2"), Some("0"), Some("manual")),
        "{score}"
    );
    assert_eq!(
        score["scoreboard"]["period"], "Map 1",
        "the rest stays: {score}"
    );
    let (one, two) = (bug(1, false), bug(2, false));
    let frames = frames_after(&daemon, changed_at, &two).await;
    assert!(!frames.is_empty(), "the segment has frames");
    assert!(
        frames.iter().all(|img| closer(img, &two, &one) < -20.0),
        "a frame after the click lacks 2-0"
    );

    // A destination added from the page goes live at nginx.
    let url = nginx.url("console");
    page.fill("#output-form [name=id]", "nginx").await;
    page.fill("#output-form [name=url]", &url).await;
    page.click("#output-form button[type=submit]").await;
    page.wait_data(
        &output_row("nginx"),
        "state",
        "live",
        Duration::from_secs(30),
    )
    .await;
    let out = daemon
        .wait_output("final", "nginx", "live", Duration::from_secs(5))
        .await;
    assert_eq!(out["url"], url.as_str(), "{out}");
    assert!(
        decode_frames(&url, 30) >= 30,
        "nginx has no decodable video from the destination added on the page"
    );

    // The preview plays what viewers get, and its rendition can be chosen.
    let state = page
        .wait_until(
            "the preview to play past 2 s",
            "(s) => { const v = document.getElementById('preview'); \
             return v.currentTime > 2 ? v.currentTime : null; }",
            Value::Null,
            Duration::from_secs(40),
        )
        .await;
    eprintln!("preview at {state} s");
    let low = page
        .eval(
            "() => { const o = [...document.querySelectorAll('#rendition option')] \
             .find(o => o.textContent.startsWith('360p')); return o ? o.value : null; }",
            Value::Null,
        )
        .await;
    let low = low
        .as_str()
        .expect("a 360p choice in the rendition menu")
        .to_owned();
    page.call(json!({"cmd": "select", "selector": "#rendition", "value": low}))
        .await;
    page.wait_until(
        "the preview to show 360p",
        "() => document.getElementById('preview').videoHeight === 360",
        Value::Null,
        Duration::from_secs(30),
    )
    .await;
    let before = page.eval(PREVIEW_STATE, Value::Null).await;
    page.wait_until(
        "the preview to keep playing",
        "(t) => document.getElementById('preview').currentTime > t + 2",
        before["time"].clone(),
        Duration::from_secs(20),
    )
    .await;
    let preview = page.eval(PREVIEW_STATE, Value::Null).await;
    eprintln!("preview: {preview}");
    assert_eq!(preview["error"], Value::Null, "video.error: {preview}");
    assert_eq!(preview["videoErrors"], json!([]), "{preview}");
    let media_errors: Vec<&Value> = preview["playerErrors"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["type"] != "networkError" || e["at"].as_f64() > Some(0.0))
        .collect();
    assert!(
        media_errors.is_empty(),
        "hls.js fatal errors other than waiting for the first playlist: {preview}"
    );

    // Readable at 1280x720 and on a phone, with twenty relays.
    assert_eq!(page.overflows().await, false, "sideways scroll at 1280x720");
    page.screenshot("console-1280x720.png", false).await;
    page.call(json!({"cmd": "viewport", "width": 390, "height": 844}))
        .await;
    page.wait_until(
        "the one-column layout",
        "() => getComputedStyle(document.querySelector('.layout')) \
         .gridTemplateColumns.split(' ').length === 1",
        Value::Null,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(page.overflows().await, false, "sideways scroll at 390x844");
    page.screenshot("console-390x844.png", true).await;
    page.call(json!({"cmd": "viewport", "width": 1280, "height": 720}))
        .await;

    // Remove the destination (two clicks), then stop the relay.
    let remove = format!("{} .remove", output_row("nginx"));
    page.click(&remove).await;
    page.wait_text(&remove, "Confirm remove", Duration::from_secs(2))
        .await;
    page.click(&remove).await;
    page.wait_until(
        "the destination's row to go",
        "(s) => document.querySelector(s) === null",
        json!(output_row("nginx")),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        output_of(&daemon.relay("final").await, "nginx"),
        Value::Null,
        "the destination is still there"
    );
    page.click("#stop").await;
    page.wait_data(&row("final"), "state", "stopped", Duration::from_secs(20))
        .await;
    assert_eq!(daemon.relay("final").await["state"], "stopped");

    let errors = page.page_errors();
    assert!(errors.is_empty(), "uncaught errors in the page: {errors:?}");
    page.close().await;
}

const ADMIN: &str = "console-admin-token-0001";

/// With tokens configured, the page asks for one, refuses a wrong one, and then works: it
/// reads, follows the live events and sets the score with it.
#[tokio::test(flavor = "multi_thread")]
async fn console_asks_for_a_token() {
    let config = format!(
        "{TEST_PROGRAM}\n[[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n"
    );
    let daemon = Daemon::start(&config).await;
    let r = daemon
        .send(
            "POST",
            "/api/v1/relays",
            r#"{"id":"final","ingest":{"stream_key":"final-key"}}"#,
            Some(ADMIN),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let r = daemon.send("GET", "/api/v1/relays", "", None).await;
    assert_eq!(r.status().as_u16(), 401, "the API needs a token");

    let mut page = Browser::launch("console_asks_for_a_token", 1280, 720).await;
    page.goto(&format!("{}/", daemon.api)).await;
    page.wait_until(
        "the token prompt",
        "() => document.getElementById('login').open",
        Value::Null,
        Duration::from_secs(10),
    )
    .await;
    page.screenshot("token-prompt.png", false).await;

    // A wrong token is refused, and the page asks again.
    page.fill("#login-token", "not-the-token-at-all-0000").await;
    page.click("#login-form button[type=submit]").await;
    page.wait_until(
        "the prompt to say the token is wrong",
        "() => document.getElementById('login').open && \
         document.getElementById('login-error').textContent.includes('not valid')",
        Value::Null,
        Duration::from_secs(10),
    )
    .await;

    page.fill("#login-token", ADMIN).await;
    page.click("#login-form button[type=submit]").await;
    page.wait_data(&row("final"), "state", "stopped", Duration::from_secs(10))
        .await;
    page.wait_data("#events", "state", "live", Duration::from_secs(10))
        .await;

    // A score set with the edit form reaches the API.
    page.click("#score-edit summary").await;
    page.fill("#score-form [name=home_name]", "Home Team").await;
    page.fill("#score-form [name=home_score]", "3").await;
    page.fill("#score-form [name=away_name]", "Away Team").await;
    page.fill("#score-form [name=away_score]", "1").await;
    page.click("#score-form button[type=submit]").await;
    page.wait_text("#home-score", "3", Duration::from_secs(10))
        .await;
    let r = daemon
        .send("GET", "/api/v1/relays/final/score", "", Some(ADMIN))
        .await;
    let score: Value = r.json().await.expect("JSON");
    assert_eq!(
        (
            score["scoreboard"]["home"]["name"].as_str(),
            score["scoreboard"]["home"]["score"].as_str(),
            score["scoreboard"]["away"]["score"].as_str(),
        ),
        (Some("Home Team"), Some("3"), Some("1")),
        "{score}"
    );

    // The live events come through with the token: a change made elsewhere shows.
    let r = daemon
        .send(
            "PUT",
            "/api/v1/relays/final/score",
            r#"{"home":{"name":"Home Team","score":4},"away":{"name":"Away Team","score":1}}"#,
            Some(ADMIN),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    page.wait_text("#home-score", "4", Duration::from_secs(10))
        .await;

    // The token is kept for the session: a reload asks no more.
    page.goto(&format!("{}/", daemon.api)).await;
    page.wait_data(&row("final"), "state", "stopped", Duration::from_secs(10))
        .await;
    let asked = page
        .eval("() => document.getElementById('login').open", Value::Null)
        .await;
    assert_eq!(asked, false, "the page asked for the token again");
    page.screenshot("with-token.png", false).await;

    let errors = page.page_errors();
    assert!(errors.is_empty(), "uncaught errors in the page: {errors:?}");
    page.close().await;
}

/// A queue relay driven from the page: reorder, kick, the block toggle, the timer, skip.
#[tokio::test(flavor = "multi_thread")]
async fn console_runs_a_caster_queue() {
    let config = format!(
        "{TEST_PROGRAM}\n[[relay]]\nid = \"q\"\ningest = {{ stream_key = \"house-key\" }}\n\
         queue = {{ turn = \"10m\", block_kicked = true }}\n"
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("q", "slate", Duration::from_secs(20))
        .await;
    let mut casters = Vec::new();
    for (n, name) in ["ann", "ben", "cat"].into_iter().enumerate() {
        let url = daemon.publish_url(&daemon.add_caster("q", name).await);
        casters.push(ffmpeg_publisher(&url, 120));
        wait_for("the caster to join", Duration::from_secs(20), || async {
            (daemon.queue_names("q").await.len() == n + 1
                && daemon.queue_names("q").await[0] != "-")
                .then_some(())
        })
        .await;
    }
    assert_eq!(daemon.queue_names("q").await, ["ann", "ben", "cat"]);

    let mut page = Browser::launch("console_runs_a_caster_queue", 1280, 900).await;
    page.goto(&format!("{}/#q", daemon.api)).await;
    page.wait_text("#q-on-air", "ann", Duration::from_secs(10))
        .await;
    page.wait_text(
        "#q-waiting li[data-key=\"cat\"] .name",
        "cat",
        Duration::from_secs(5),
    )
    .await;
    page.screenshot("queue.png", true).await;

    // Cat up one: the API has the new order, and so has the page.
    page.click("#q-waiting li[data-key=\"cat\"] button[data-move=\"-1\"]")
        .await;
    page.wait_until(
        "cat to be first in line",
        "() => document.querySelector('#q-waiting li').dataset.key === 'cat'",
        Value::Null,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(daemon.queue_names("q").await, ["ann", "cat", "ben"]);

    // The timer: a 90 s turn, restarted.
    page.fill("#q-timer input[name=seconds]", "90").await;
    page.click("#q-timer input[name=restart]").await;
    page.click("#q-timer button").await;
    wait_for("the 90 s turn", Duration::from_secs(5), || async {
        let (_, q) = daemon.get("/api/v1/relays/q/queue").await;
        let left = q["on_air"]["time_left"].as_f64()?;
        (q["turn"] == 90.0 && left <= 90.0 && left > 80.0).then_some(())
    })
    .await;

    // The block off, then kick ben: he may come straight back.
    page.click("#q-toggle").await;
    page.wait_text(
        "#q-block",
        "kicked casters may rejoin",
        Duration::from_secs(5),
    )
    .await;
    page.click("#q-waiting li[data-key=\"ben\"] button.danger")
        .await;
    wait_for("ben to be kicked", Duration::from_secs(5), || async {
        (daemon.queue_names("q").await == ["ann", "cat"]).then_some(())
    })
    .await;

    // Skip: cat takes the air.
    page.click("#q-skip").await;
    page.wait_text("#q-on-air", "cat", Duration::from_secs(10))
        .await;
    assert_eq!(daemon.queue_names("q").await, ["cat"]);
    assert_eq!(page.page_errors(), Vec::<Value>::new());
    page.close().await;
    drop(casters);
    daemon.stop().await;
}

/// Graphics layers driven from the page: a lower third shown, its text changed and hidden,
/// a clock stopped and set.
#[tokio::test(flavor = "multi_thread")]
async fn console_drives_graphics_layers() {
    let config = format!(
        "{TEST_PROGRAM}\n[[relay]]\nid = \"g\"\ningest = {{ stream_key = \"g-key\" }}\n\
         [[relay.graphics.layers]]\nid = \"caster\"\nkind = \"lower_third\"\nvisible = false\n\
         data = {{ title = \"Anders Blume\", subtitle = \"Play-by-play\" }}\n\
         [[relay.graphics.layers]]\nid = \"clock\"\nkind = \"clock\"\nanchor = \"top-right\"\n\
         data = {{ seconds = 600, running = true }}\n"
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_on_air("g", "slate", Duration::from_secs(20))
        .await;
    let layer = |id: &'static str| {
        let daemon = &daemon;
        async move {
            let (_, view) = daemon.get("/api/v1/relays/g/graphics").await;
            view["layers"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["id"] == id).cloned())
                .unwrap_or_default()
        }
    };
    let mut page = Browser::launch("console_drives_graphics_layers", 1280, 900).await;
    page.goto(&format!("{}/#g", daemon.api)).await;
    let caster = "#g-layers li[data-key=\"caster\"]";
    page.wait_text(
        &format!("{caster} .g-state"),
        "hidden",
        Duration::from_secs(10),
    )
    .await;

    // Shown from the page: the API has it on screen, and so does the page.
    page.click(&format!("{caster} .g-toggle")).await;
    page.wait_text(
        &format!("{caster} .g-state"),
        "on screen",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(layer("caster").await["visible"], true);

    // New text.
    page.fill(&format!("{caster} input[name=title]"), "Jason Kaplan")
        .await;
    page.fill(&format!("{caster} input[name=subtitle]"), "Colour")
        .await;
    page.click(&format!("{caster} form button")).await;
    wait_for("the new lower third", Duration::from_secs(5), || async {
        let l = layer("caster").await;
        (l["data"]["title"] == "Jason Kaplan" && l["data"]["subtitle"] == "Colour").then_some(())
    })
    .await;
    page.screenshot("graphics.png", true).await;

    // The clock: stopped, then set to 1:30.
    let clock = "#g-layers li[data-key=\"clock\"]";
    page.click(&format!("{clock} .g-run")).await;
    page.wait_text(&format!("{clock} .g-run"), "Start", Duration::from_secs(5))
        .await;
    assert_eq!(layer("clock").await["data"]["running"], false);
    page.fill(&format!("{clock} input[name=seconds]"), "90")
        .await;
    page.click(&format!("{clock} .g-set button")).await;
    page.wait_text(&format!("{clock} .g-time"), "1:30", Duration::from_secs(5))
        .await;
    assert_eq!(layer("clock").await["data"]["seconds"], 90);

    // Hidden again.
    page.click(&format!("{caster} .g-toggle")).await;
    page.wait_text(
        &format!("{caster} .g-state"),
        "hidden",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(layer("caster").await["visible"], false);
    assert_eq!(page.page_errors(), Vec::<Value>::new());
    page.close().await;
    daemon.stop().await;
}
