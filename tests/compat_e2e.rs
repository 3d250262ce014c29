//! The drop-in for the Flask overlay relay, in the old deployment's shape: the caster publishes
//! to an nginx-rtmp with the old service's `live on; record off;` application, the old README's
//! curl lines drive `/start_stream`, `/list_streams` and `/stop_stream` on the compatible
//! listener, the relay pulls the stream from nginx, polls a match API of its own shape (mapped
//! with `map`) for it, fetches the logos it names by bare file name from an images server, and
//! pushes to a second nginx-rtmp standing in for YouTube, whose frames are decoded and compared
//! with the renderer's own pictures. The match API is down and the stream not yet published
//! when the stream is started; the stream name needs URL-encoding in the match API's URL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::frames::{closer, live_bug_regions};
use common::scores::solid_png;
use common::*;
use image::RgbaImage;
use scorecast::render::{self, Bug, Logos, Theme};
use scorecast::scores::logos::decode_scaled;
use scorecast::scores::Scoreboard;
use serde_json::{json, Value};
use warp::Filter;

/// The nginx stream name: `:`, `@` and `+` go into RTMP URLs as they are, and are
/// percent-encoded in the match API's URL.
const NAME: &str = "final:2@eu+1";
const ENCODED: &str = "final%3A2%40eu%2B1";
const YOUTUBE_KEY: &str = "yt-key-0123";

/// The match API's answer, in a shape of its own.
fn match_json(navi: u32) -> Value {
    json!({"match": {
        "teams": [
            {"tag": "NAVI", "maps": navi, "logo": "navi.png"},
            {"tag": "G2", "maps": 0, "logo": "logos/g2.png"}
        ],
        "round": "Map 3"
    }})
}

/// What scorecast draws for [`match_json`]`(navi)` on a 1280x720 frame, with `logos` (home,
/// away).
fn expected_bug(navi: u32, logos: &(RgbaImage, RgbaImage)) -> Bug {
    let board: Scoreboard = serde_json::from_value(json!({
        "home": {"name": "NAVI", "score": navi},
        "away": {"name": "G2", "score": 0},
        "period": "Map 3"
    }))
    .expect("a scoreboard");
    let logos = Logos {
        home: Some(&logos.0),
        away: Some(&logos.1),
    };
    render::render(&board, logos, false, &Theme::default(), 1280, 720)
}

/// Serves `files` by path, on a port of its own.
async fn images_server(files: Vec<(&'static str, Vec<u8>)>) -> u16 {
    let files = Arc::new(files);
    let route = warp::path::tail().map(move |tail: warp::path::Tail| {
        use warp::Reply;
        match files.iter().find(|(path, _)| *path == tail.as_str()) {
            Some((_, bytes)) => {
                warp::reply::with_header(bytes.clone(), "content-type", "image/png").into_response()
            }
            None => warp::http::StatusCode::NOT_FOUND.into_response(),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    port
}

/// The match API on `port`: `GET /match/<name>` answers the current score for [`NAME`] and 404
/// for others; every raw path asked for is kept.
async fn match_api(port: u16, navi: Arc<Mutex<u32>>, asked: Arc<Mutex<Vec<String>>>) {
    let route = warp::path::full().map(move |path: warp::path::FullPath| {
        use warp::Reply;
        asked.lock().expect("lock").push(path.as_str().to_owned());
        if path.as_str() == format!("/match/{ENCODED}") {
            let navi = *navi.lock().expect("lock");
            warp::reply::json(&match_json(navi)).into_response()
        } else {
            warp::http::StatusCode::NOT_FOUND.into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the match API's port");
    tokio::spawn(warp::serve(route).incoming(listener).run());
}

/// One of the old README's curl lines, run by the shell; its body and status.
fn curl(line: &str) -> (u16, Value) {
    require_tool("curl");
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{line} -s -w '\\n%{{http_code}}'")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
    )
}

/// Which of two scores the destination's next frames show: the median of [`closer`] over
/// 15 frames pulled live (negative: `a`).
fn destination_shows(url: &str, a: &Bug, b: &Bug) -> f64 {
    let mut scores: Vec<f64> = live_bug_regions(url, a, 15)
        .iter()
        .map(|region| closer(region, a, b))
        .collect();
    assert!(scores.len() >= 10, "only {} frames decoded", scores.len());
    scores.sort_by(f64::total_cmp);
    scores[scores.len() / 2]
}

/// Waits until the destination's frames look like `a` rather than `b`; the median
/// [`closer`] (negative).
async fn wait_destination_shows(what: &str, url: &str, a: &Bug, b: &Bug) -> f64 {
    wait_for(
        &format!("{what} at the destination"),
        Duration::from_secs(20),
        || {
            let (url, a, b) = (url.to_owned(), a.clone(), b.clone());
            async move {
                let d = tokio::task::spawn_blocking(move || destination_shows(&url, &a, &b))
                    .await
                    .expect("decoded");
                (d < 0.0).then_some(d)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_curl_lines_run_a_pulled_stream_with_the_match_overlay() {
    let caster = Nginx::start().await;
    let youtube = Nginx::start().await;
    let (navi_png, g2_png) = (
        solid_png(64, 64, [200, 30, 30, 255]),
        solid_png(64, 64, [30, 60, 220, 255]),
    );
    let side = render::logo_size(720);
    let logos = (
        decode_scaled(&navi_png, side).expect("a logo"),
        decode_scaled(&g2_png, side).expect("a logo"),
    );
    let images = images_server(vec![("navi.png", navi_png), ("logos/g2.png", g2_png)]).await;
    // The match API is down at first: nothing listens on its port.
    let match_port = free_port();
    let compat_port = free_port();
    let config = format!(
        "{TEST_PROGRAM}\n[compat]\nlisten = \"127.0.0.1:{compat_port}\"\n\
         ingest = \"rtmp://127.0.0.1:{caster}/live/{{stream_name}}\"\n\
         scores_url = \"http://127.0.0.1:{match_port}/match/{{stream_name}}\"\n\
         images_url = \"http://127.0.0.1:{images}\"\n\
         allow_private = true\npoll_interval = \"300ms\"\n\
         map = {{ \"home.name\" = \"/match/teams/0/tag\", \"home.score\" = \"/match/teams/0/maps\", \
         \"home.logo\" = \"/match/teams/0/logo\", \"away.name\" = \"/match/teams/1/tag\", \
         \"away.score\" = \"/match/teams/1/maps\", \"away.logo\" = \"/match/teams/1/logo\", \
         \"period\" = \"/match/round\" }}\n",
        caster = caster.port,
    );
    let daemon = Daemon::start(&config).await;
    let old = format!("http://localhost:{compat_port}");
    let youtube_url = youtube.url(YOUTUBE_KEY);

    // The old README's start line, with the match API down and nothing published yet.
    let (status, started) = curl(&format!(
        r#"curl -X POST {old}/start_stream -H "Content-Type: application/json" -d '{{"youtube_url": "{youtube_url}", "stream_name": "{NAME}"}}'"#
    ));
    assert_eq!(status, 200, "{started}");
    assert_eq!(
        started["message"],
        format!("Stream {NAME} started successfully")
    );
    assert_eq!(started["youtube_url"], youtube_url.as_str());
    let id = started["id"].as_str().expect("an id").to_owned();
    daemon
        .wait_on_air(&id, "slate", Duration::from_secs(20))
        .await;
    let relay = daemon.relay(&id).await;
    assert_eq!(relay["ingest"]["url"], caster.url(NAME).as_str(), "{relay}");

    // The caster publishes to nginx as before: the relay pulls it and goes on air.
    let _publisher = ffmpeg_publisher(&caster.url(NAME), 120);
    daemon
        .wait_on_air(&id, "input", Duration::from_secs(30))
        .await;
    daemon
        .wait_output(&id, "youtube", "live", Duration::from_secs(30))
        .await;

    // The match API comes up: the overlay appears, with the logos from the images server.
    let navi = Arc::new(Mutex::new(1));
    let asked = Arc::new(Mutex::new(Vec::new()));
    match_api(match_port, navi.clone(), asked.clone()).await;
    let wait_score = |score: u32| {
        let daemon = &daemon;
        let id = id.clone();
        async move {
            wait_for("the match API's score", Duration::from_secs(20), || async {
                let (_, view) = daemon.get(&format!("/api/v1/relays/{id}/score")).await;
                // The scoreboard keeps scores as text.
                (view["scoreboard"]["home"]["score"].as_str() == Some(&score.to_string()))
                    .then_some(view)
            })
            .await
        }
    };
    let view = wait_score(1).await;
    assert_eq!(view["scoreboard"]["home"]["name"], "NAVI", "{view}");
    assert_eq!(view["scoreboard"]["away"]["name"], "G2", "{view}");
    assert!(view["last_error"].is_null(), "{view}");
    assert!(
        asked
            .lock()
            .expect("lock")
            .iter()
            .all(|p| p == &format!("/match/{ENCODED}")),
        "{asked:?}"
    );

    // The destination's frames show the match API's names, score and logos, and change when
    // the match API does.
    let (one, two) = (expected_bug(1, &logos), expected_bug(2, &logos));
    let shown = wait_destination_shows("NAVI 1", &youtube_url, &one, &two).await;
    eprintln!("the destination shows NAVI 1 (median closer {shown:.1})");
    // The logos are there too, each on its side: the frames look like the render with them,
    // not like one with the two swapped.
    let swapped = expected_bug(1, &(logos.1.clone(), logos.0.clone()));
    let shown = wait_destination_shows("the logos", &youtube_url, &one, &swapped).await;
    eprintln!("the destination shows the logos (median closer {shown:.1})");
    *navi.lock().expect("lock") = 2;
    wait_score(2).await;
    let shown = wait_destination_shows("NAVI 2", &youtube_url, &two, &one).await;
    eprintln!("the destination shows NAVI 2 (median closer {shown:.1})");

    // The old README's list and stop lines; the compatible listener serves nothing else.
    let (status, listed) = curl(&format!("curl {old}/list_streams"));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed[NAME]["youtube_url"],
        youtube_url.as_str(),
        "{listed}"
    );
    assert!(listed[NAME]["uptime"].as_f64() > Some(0.0), "{listed}");
    let (status, _) = curl(&format!("curl {old}/api/v1/relays"));
    assert_eq!(status, 404);
    let (status, stopped) = curl(&format!(
        r#"curl -X POST {old}/stop_stream -H "Content-Type: application/json" -d '{{"stream_name": "{NAME}"}}'"#
    ));
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(
        stopped["message"],
        format!("Stream {NAME} stopped successfully")
    );
    let (_, listed) = curl(&format!("curl {old}/list_streams"));
    assert_eq!(listed, json!({}));
    assert_eq!(daemon.get(&format!("/api/v1/relays/{id}")).await.0, 404);
    daemon.stop().await;
}
