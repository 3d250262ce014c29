//! Restarts: relays made over the API survive the daemon's stop (SIGTERM, as systemd sends)
//! and start, with the spec and desired state the API last left them in; the config's relays
//! are not saved and win any clash; a state file that cannot be read stops the start, named.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const URL: &str = "rtmp://127.0.0.1:1/live2/KEY";

fn state_file(dir: &Path) -> std::path::PathBuf {
    dir.join("data/relays.json")
}

fn read_state(dir: &Path) -> Value {
    let text = std::fs::read_to_string(state_file(dir)).expect("relays.json written");
    serde_json::from_str(&text).expect("relays.json is JSON")
}

/// What the operator asked of a relay, from its API view: the spec and whether it should run.
fn desired(view: &Value) -> Value {
    let outputs: Vec<Value> = view["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            let mut o = o.clone();
            for live in ["state", "retry", "last_error", "bytes_sent", "uptime"] {
                o.as_object_mut().expect("an object").remove(live);
            }
            o
        })
        .collect();
    json!({
        "id": view["id"], "ingest": view["ingest"], "overlay": view["overlay"],
        "hls": view["hls"], "outputs": outputs, "transcode": view["transcode"],
        "running": view["state"] != "stopped",
    })
}

async fn all_desired(daemon: &Daemon) -> Vec<Value> {
    let (status, list) = daemon.get("/api/v1/relays").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list")
        .iter()
        .map(desired)
        .collect()
}

async fn expect(daemon: &Daemon, method: &str, path: &str, body: &str, status: u16) -> Value {
    let reply = daemon.send(method, path, body, None).await;
    let got = reply.status().as_u16();
    let value = reply.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{method} {path} {body} -> {value}");
    value
}

#[tokio::test(flavor = "multi_thread")]
async fn api_relays_come_back_after_a_restart() {
    let config = relay_config("cfg", r#"stream_key = "cfg-key""#, "");
    let daemon = Daemon::spawn(&config).await;

    let alpha = json!({"id": "alpha", "ingest": {"stream_key": "alpha-key"},
                       "overlay": {"stale_after": "5s", "position": "top-right"},
                       "outputs": [{"id": "yt", "url": URL}]});
    let twitch = json!({"id": "twitch", "url": "rtmp://127.0.0.1:1/app/KEY", "preset": "twitch",
                        "height": 480});
    let beta = json!({"id": "beta", "ingest": {"url": "rtmp://127.0.0.1:1/live/src"}});
    let patch = json!({"hls": {"renditions": ["480p", {"name": "low", "width": 426, "height": 240,
                       "video_kbps": 300}]}, "outputs": [{"id": "yt", "url": URL, "max_retries": 3}]});
    let start = |name: &str| json!({"youtube_url": URL, "stream_name": name}).to_string();
    let steps = [
        // alpha: started, one output added and one removed while it runs.
        ("POST", "/api/v1/relays", alpha.to_string(), 201),
        ("POST", "/api/v1/relays/alpha/start", String::new(), 200),
        (
            "POST",
            "/api/v1/relays/alpha/outputs",
            twitch.to_string(),
            201,
        ),
        (
            "DELETE",
            "/api/v1/relays/alpha/outputs/yt",
            String::new(),
            204,
        ),
        // beta: changed by PATCH, started and stopped again.
        ("POST", "/api/v1/relays", beta.to_string(), 201),
        ("PATCH", "/api/v1/relays/beta", patch.to_string(), 200),
        ("POST", "/api/v1/relays/beta/start", String::new(), 200),
        ("POST", "/api/v1/relays/beta/stop", String::new(), 200),
        // gamma: deleted. The compatible routes: match1 started, match2 started and stopped.
        (
            "POST",
            "/api/v1/relays",
            r#"{"id":"gamma","ingest":{"stream_key":"g"}}"#.to_owned(),
            201,
        ),
        ("DELETE", "/api/v1/relays/gamma", String::new(), 204),
        ("POST", "/start_stream", start("match1"), 200),
        ("POST", "/start_stream", start("match2"), 200),
        (
            "POST",
            "/stop_stream",
            r#"{"stream_name":"match2"}"#.to_owned(),
            200,
        ),
        // delta and epsilon: the next config takes their stream key and id.
        (
            "POST",
            "/api/v1/relays",
            r#"{"id":"delta","ingest":{"stream_key":"delta-key"}}"#.to_owned(),
            201,
        ),
        (
            "POST",
            "/api/v1/relays",
            r#"{"id":"epsilon","ingest":{"stream_key":"eps-key"}}"#.to_owned(),
            201,
        ),
        // The config's relay is changed too, but the config stays its source.
        (
            "POST",
            "/api/v1/relays/cfg/outputs",
            json!({"id": "yt", "url": URL}).to_string(),
            201,
        ),
    ];
    for (method, path, body, status) in &steps {
        expect(&daemon, method, path, body, *status).await;
    }

    let before = all_desired(&daemon).await;
    // The compatible relay's id is a fresh public one, not its stream key.
    let match1 = before
        .iter()
        .find(|r| r["ingest"]["stream_key"] == "match1")
        .and_then(|r| r["id"].as_str())
        .expect("the relay /start_stream made")
        .to_owned();
    assert!(match1.starts_with("s-"), "{match1}");
    let ids: Vec<&str> = before.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["alpha", "beta", "cfg", "delta", "epsilon", &match1]);
    let running: Vec<bool> = before.iter().map(|r| r["running"] == true).collect();
    assert_eq!(running, [true, false, true, false, false, true]);

    // The file holds the API's relays only, as the API left them, readable by the daemon alone.
    let saved = read_state(daemon.dir.path());
    assert_eq!(saved["version"], 1, "{saved}");
    let saved_ids: Vec<&str> = saved["relays"]
        .as_array()
        .expect("relays")
        .iter()
        .filter_map(|r| r["spec"]["id"].as_str())
        .collect();
    assert_eq!(
        saved_ids,
        ["alpha", "beta", "delta", "epsilon", &match1],
        "{saved}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state_file(daemon.dir.path()))
        .expect("relays.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // SIGTERM stops every relay; the file still says what the operator wanted.
    let dir = daemon.stop().await;
    assert_eq!(
        read_state(dir.path()),
        saved,
        "the shutdown changed the saved state"
    );

    let daemon = Daemon::spawn_in(dir).await;
    let after = all_desired(&daemon).await;
    // Everything as it was, but the config's relay: the config is its source, so the output
    // added over the API is gone.
    let mut expected = before.clone();
    expected[2]["outputs"] = json!([]);
    assert_eq!(after, expected);
    daemon
        .wait_on_air("alpha", "slate", Duration::from_secs(20))
        .await;
    let (_, streams) = daemon.get("/list_streams").await;
    assert!(streams["match1"].is_object(), "{streams}");

    // Changes go on being saved after the restart.
    expect(&daemon, "POST", "/api/v1/relays/alpha/stop", "", 200).await;
    let saved = read_state(daemon.dir.path());
    assert_eq!(saved["relays"][0]["spec"]["id"], "alpha", "{saved}");
    assert_eq!(saved["relays"][0]["running"], false, "{saved}");

    // A config that now has a saved relay's id, and another's stream key, wins; the warning
    // names each relay it skipped, and the file drops them at the next write.
    let dir = daemon.stop().await;
    let config = format!(
        "{config}\n[[relay]]\nid = \"epsilon\"\ningest = {{ stream_key = \"cfg-eps\" }}\n\
         \n[[relay]]\nid = \"cfg2\"\ningest = {{ stream_key = \"delta-key\" }}\n"
    );
    std::fs::write(dir.path().join("scorecast.toml"), config).expect("write config");
    let daemon = Daemon::spawn_in(dir).await;
    let relays = all_desired(&daemon).await;
    let ids: Vec<&str> = relays.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["alpha", "beta", "cfg", "cfg2", "epsilon", &match1]);
    assert_eq!(
        daemon.relay("epsilon").await["ingest"]["stream_key"],
        "cfg-eps"
    );
    let log = daemon.log();
    for skipped in ["relay=delta", "relay=epsilon"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("saved relay skipped")
                && l.contains(skipped)),
            "no warning names {skipped}:\n{log}"
        );
    }
    expect(&daemon, "POST", "/api/v1/relays/beta/stop", "", 200).await;
    let saved = read_state(daemon.dir.path());
    let saved_ids: Vec<&str> = saved["relays"]
        .as_array()
        .expect("relays")
        .iter()
        .filter_map(|r| r["spec"]["id"].as_str())
        .collect();
    assert_eq!(saved_ids, ["alpha", "beta", &match1], "{saved}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_state_file_stops_the_start_and_is_left_alone() {
    let daemon = Daemon::spawn("").await;
    expect(
        &daemon,
        "POST",
        "/api/v1/relays",
        r#"{"id":"a","ingest":{"stream_key":"a-key"}}"#,
        201,
    )
    .await;
    let dir = daemon.stop().await;

    // Cut short, as a full disk or a hand edit might leave it.
    let path = state_file(dir.path());
    let whole = std::fs::read(&path).expect("relays.json");
    let cut = &whole[..whole.len() / 2];
    std::fs::write(&path, cut).expect("write");
    let exit = match Daemon::try_spawn_in(dir).await {
        Ok(_) => panic!("scorecast started on a corrupt relays.json"),
        Err(exit) => exit,
    };
    assert!(!exit.status.success());
    let named = path.display().to_string();
    assert!(
        exit.log.contains(&named) && exit.log.contains("move it away"),
        "the error does not name {named} and what to do:\n{}",
        exit.log
    );
    assert_eq!(
        std::fs::read(&path).expect("still there"),
        cut,
        "the file was changed"
    );

    // Moved away, the daemon starts without the relays it held.
    std::fs::rename(&path, path.with_extension("json.bad")).expect("move");
    let daemon = Daemon::spawn_in(exit.dir).await;
    assert_eq!(daemon.get("/api/v1/relays").await, (200, json!([])));
}

/// A relay's HLS as a player sees it across a daemon restart: the media sequence goes on
/// rising, segment names are never reused, and the new program's first segment carries
/// `EXT-X-DISCONTINUITY`, because its timeline starts again.
#[tokio::test(flavor = "multi_thread")]
async fn hls_goes_on_across_a_restart() {
    let daemon = Daemon::spawn("").await;
    let show = json!({"id": "show", "ingest": {"stream_key": "show-key"}});
    expect(&daemon, "POST", "/api/v1/relays", &show.to_string(), 201).await;
    expect(&daemon, "POST", "/api/v1/relays/show/start", "", 200).await;
    let playlist = "/hls/show/720p/index.m3u8";
    // The slate is on air from the start, so segments come without a publisher.
    let (before, _) = served_playlist(&daemon, playlist, 2).await;
    let last_before = before.media_sequence + before.segments.len() as u64 - 1;

    let daemon = Daemon::spawn_in(daemon.stop().await).await;
    let (after, text) = served_playlist(&daemon, playlist, 1).await;
    assert!(
        after.media_sequence > last_before,
        "the media sequence went back: {last_before} before the restart, {} after:\n{text}",
        after.media_sequence
    );
    let first_uri = &after.segments[0].1;
    let head = &text[..text
        .find(first_uri.as_str())
        .expect("the first segment listed")];
    assert!(
        head.contains("#EXT-X-DISCONTINUITY\n") && head.contains("#EXT-X-DISCONTINUITY-SEQUENCE:"),
        "no discontinuity before the new program's first segment:\n{text}"
    );
    for (_, uri) in &after.segments {
        assert!(
            before.segments.iter().all(|(_, old)| old != uri),
            "{uri} was listed before the restart too:\n{text}"
        );
        let bytes = daemon
            .get_bytes(&format!("/hls/show/720p/{uri}"))
            .await
            .unwrap_or_else(|| panic!("{uri} is not served"));
        assert!(bytes.len() > 188, "{uri} holds {} bytes", bytes.len());
    }
    daemon.stop().await;
}

/// The served media playlist once it lists at least `segments` segments.
async fn served_playlist(daemon: &Daemon, path: &str, segments: usize) -> (MediaPlaylist, String) {
    wait_for(
        &format!("{path} to list {segments} segments"),
        Duration::from_secs(30),
        || async {
            let (_, text) = daemon.get_text(path).await?;
            let playlist = check_media_playlist(&text);
            (playlist.segments.len() >= segments).then_some((playlist, text))
        },
    )
    .await
}
