//! Authentication, end to end over real HTTP and RTMP: API tokens and their roles, the public
//! paths, the refusal to serve an open API beyond loopback, and publishes with unknown stream
//! keys slowed down and shut out per address.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";

fn tokens() -> String {
    format!(
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
         [[auth.tokens]]\nname = \"site\"\ntoken = \"{READER}\"\nrole = \"read-only\"\n"
    )
}

/// A request with an optional bearer token: the status, the JSON body and the
/// `WWW-Authenticate` header.
async fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value, Option<String>) {
    let reply = daemon.send(method, path, body, token).await;
    let status = reply.status().as_u16();
    let challenge = reply
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = reply.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        challenge,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_the_api_and_roles_limit_what_they_do() {
    let config = format!(
        "{}{}",
        tokens(),
        relay_config("final", r#"stream_key = "final-key""#, "")
    );
    let daemon = Daemon::start(&config).await;
    let create = r#"{"id":"extra","ingest":{"stream_key":"extra-key"}}"#;

    // No token, and a wrong one: 401 with a challenge, and the message says which.
    let (status, body, challenge) = call(&daemon, "GET", "/api/v1/relays", None, "").await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer")),
        "{body}"
    );
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"),
        "{body}"
    );
    let wrong = &ADMIN.replace('0', "1");
    let (status, body, _) = call(&daemon, "POST", "/api/v1/relays", Some(wrong), create).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid"),
        "{body}"
    );
    // The compatible routes are guarded too.
    let (status, _, _) = call(&daemon, "GET", "/list_streams", None, "").await;
    assert_eq!(status, 401);

    // Read-only: it may look, not change.
    let (status, body, _) = call(&daemon, "GET", "/api/v1/relays", Some(READER), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(&daemon, "POST", "/api/v1/relays", Some(READER), create).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, _, _) = call(
        &daemon,
        "POST",
        "/api/v1/relays/final/stop",
        Some(READER),
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&daemon, "GET", "/metrics", None, "").await;
    assert_eq!(status, 401, "metrics are not public by default");

    // Nothing the refused requests asked for happened.
    let (_, list, _) = call(&daemon, "GET", "/api/v1/relays", Some(READER), "").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["final"], "{list}");
    let (_, relay, _) = call(&daemon, "GET", "/api/v1/relays/final", Some(READER), "").await;
    assert_ne!(relay["state"], "stopped", "{relay}");

    // Admin: everything.
    let (status, body, _) = call(&daemon, "POST", "/api/v1/relays", Some(ADMIN), create).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, _) = call(&daemon, "DELETE", "/api/v1/relays/extra", Some(ADMIN), "").await;
    assert_eq!(status, 204);

    // Public by default: health for monitors, HLS for players.
    let (status, _, _) = call(&daemon, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    let master = wait_for("the master playlist", Duration::from_secs(20), || async {
        let (status, _, _) = call(&daemon, "GET", "/hls/final/master.m3u8", None, "").await;
        (status == 200).then_some(status)
    })
    .await;
    assert_eq!(master, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_api_beyond_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("scorecast.toml");
    std::fs::write(&config, TEST_PROGRAM).expect("config");
    let run = |api: &str, extra: &str| {
        std::fs::write(&config, format!("{TEST_PROGRAM}{extra}")).expect("config");
        std::process::Command::new(env!("CARGO_BIN_EXE_scorecast"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--api-listen", api, "--rtmp-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .expect("scorecast runs")
    };
    // The API itself, and the compatible routes' own listener (`compat.listen`).
    for (api, extra) in [
        ("0.0.0.0:0", ""),
        ("127.0.0.1:0", "[compat]\nlisten = \"0.0.0.0:0\"\n"),
    ] {
        let out = run(api, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "it served open on 0.0.0.0 ({extra})");
        assert!(
            stderr.contains("0.0.0.0") && stderr.contains("auth.allow_open"),
            "{stderr}"
        );
    }
}

/// Publishes with a tiny picture to `url`; the process, to wait on.
fn light_publisher(url: &str) -> Process {
    require_tool("ffmpeg");
    Process::spawn(
        "ffmpeg publisher",
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "color=size=64x64:rate=5", "-t", "10"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-f", "flv", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_stream_keys_are_slow_and_an_address_that_guesses_is_shut_out() {
    // Four failed publishes shut an address out (the default is ten, more than the eight
    // connections one address may hold at once).
    let config = format!(
        "[ingest]\nmax_failed_publishes = 4\n{}",
        relay_config("final", r#"stream_key = "right-key""#, "")
    );
    let daemon = Daemon::start(&config).await;

    // Ten guesses at once: each refused, none sooner than the 1 s delay.
    let started = Instant::now();
    let mut guesses: Vec<Process> = (0..10)
        .map(|n| light_publisher(&daemon.publish_url(&format!("guess-{n}"))))
        .collect();
    for guess in &mut guesses {
        let status = guess
            .wait_exit("a guess to be refused", Duration::from_secs(20))
            .await;
        assert!(!status.success());
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "refused in {:?}",
        started.elapsed()
    );
    wait_for("the shut-out warning", Duration::from_secs(5), || async {
        daemon
            .log()
            .contains("too many failed publishes: this address is shut out")
            .then_some(())
    })
    .await;

    // The next connection from this address is closed before the handshake is answered.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.rtmp_port))
        .await
        .expect("connect");
    let mut hello = vec![3u8];
    hello.extend(std::iter::repeat_n(0u8, 1536));
    let _ = stream.write_all(&hello).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the handshake was answered: {read:?}"
    );

    // The relay carries on.
    let relay = daemon.relay("final").await;
    assert_eq!(relay["on_air"]["showing"], "slate", "{relay}");
}
