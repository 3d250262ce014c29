//! Secrets at rest (issue 15): API tokens given as SHA-256 hashes, in files, and as systemd
//! credentials (`$CREDENTIALS_DIRECTORY`, as `LoadCredential=` gives them), the
//! `scorecast hash-token` command, and SIGHUP swapping the tokens under the running API
//! without touching the relays or writing a token to the log.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const NEW_ADMIN: &str = "rotated-admin-token-9876543210";

/// `scorecast hash-token` with `token` (and `suffix`, e.g. a newline) on stdin.
fn hash_token(token: &str, suffix: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scorecast"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scorecast runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{token}{suffix}").as_bytes())
        .expect("write the token");
    let out = child.wait_with_output().expect("hash-token ends");
    assert!(
        out.status.success(),
        "hash-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .trim_end()
        .to_owned()
}

/// `printf %s "$TOKEN" | sha256sum`, as the docs offer it.
fn sha256sum(token: &str) -> String {
    require_tool("sha256sum");
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$TOKEN\" | sha256sum"])
        .env("TOKEN", token)
        .output()
        .expect("sha256sum runs");
    let text = String::from_utf8(out.stdout).expect("text");
    text.split_whitespace().next().expect("a digest").to_owned()
}

/// The status and JSON body of a request with an optional bearer token.
async fn call(daemon: &Daemon, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let reply = daemon.send(method, path, "", token).await;
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A directory holding `config` as `scorecast.toml`.
fn write_credential(dir: &Path, name: &str, token: &str) {
    std::fs::create_dir_all(dir).expect("credentials dir");
    std::fs::write(dir.join(name), format!("{token}\n")).expect("credential");
}

#[tokio::test(flavor = "multi_thread")]
async fn hashed_tokens_authenticate_and_the_hash_itself_does_not() {
    // The command and sha256sum agree, and a trailing newline (`echo`) is not hashed.
    let admin_hash = hash_token(ADMIN, "");
    assert_eq!(admin_hash, sha256sum(ADMIN));
    assert_eq!(hash_token(ADMIN, "\n"), admin_hash);
    assert_eq!(admin_hash.len(), 64);
    let reader_hash = sha256sum(READER);

    let config = format!(
        "{TEST_PROGRAM}[[auth.tokens]]\nname = \"ops\"\ntoken_sha256 = \"{admin_hash}\"\n\
         role = \"admin\"\n[[auth.tokens]]\nname = \"site\"\ntoken_sha256 = \"{reader_hash}\"\n\
         role = \"read-only\"\n"
    );
    let daemon = Daemon::start(&config).await;
    let create = r#"{"id":"extra","ingest":{"stream_key":"extra-key"}}"#;

    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    // Roles hold as with plain tokens.
    let reply = daemon
        .send("POST", "/api/v1/relays", create, Some(READER))
        .await;
    assert_eq!(reply.status().as_u16(), 403);
    let reply = daemon
        .send("POST", "/api/v1/relays", create, Some(ADMIN))
        .await;
    assert_eq!(reply.status().as_u16(), 201);

    // Wrong tokens: a near miss, none, and the configured hash sent as if it were the token.
    for wrong in [Some(&*ADMIN.replace('0', "1")), None, Some(&*admin_hash)] {
        let (status, body) = call(&daemon, "GET", "/api/v1/relays", wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let dir = daemon.stop().await;
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    for secret in [ADMIN, READER] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}

/// Started as systemd starts a unit with `LoadCredential=scorecast-ops:…`: the token is read
/// from `$CREDENTIALS_DIRECTORY/scorecast-ops`; a `token_file` is read too.
#[tokio::test(flavor = "multi_thread")]
async fn a_systemd_credential_and_a_token_file_authenticate() {
    let config = format!(
        "{TEST_PROGRAM}[[auth.tokens]]\nname = \"ops\"\ncredential = \"scorecast-ops\"\n\
         role = \"admin\"\n"
    );
    let dir = config_dir(&config);
    let credentials = dir.path().join("credentials");
    write_credential(&credentials, "scorecast-ops", ADMIN);
    let token_file = dir.path().join("site.token");
    std::fs::write(&token_file, format!("{READER}\n")).expect("token file");
    let config = format!(
        "{config}[[auth.tokens]]\nname = \"site\"\ntoken_file = \"{}\"\nrole = \"read-only\"\n",
        token_file.display()
    );
    std::fs::write(dir.path().join("scorecast.toml"), config).expect("config");

    let env = [("CREDENTIALS_DIRECTORY", credentials.display().to_string())];
    let daemon = Daemon::try_spawn_with_env(dir, &env)
        .await
        .unwrap_or_else(|exit| panic!("scorecast exited at start:\n{}", exit.log));
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&daemon, "POST", "/api/v1/relays/x/stop", Some(READER)).await;
    assert_eq!(status, 403);
    let (status, _) = call(&daemon, "GET", "/api/v1/relays", Some(NEW_ADMIN)).await;
    assert_eq!(status, 401);
    let (status, _) = call(&daemon, "GET", "/api/v1/relays", None).await;
    assert_eq!(status, 401);
    let log = daemon.log();
    for secret in [ADMIN, READER] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}

/// A credential that is not there stops the start, naming the token and the file; so does a
/// credential with no `$CREDENTIALS_DIRECTORY` at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_credential_stops_the_start_and_names_the_path() {
    let config = format!(
        "{TEST_PROGRAM}[[auth.tokens]]\nname = \"ops\"\ncredential = \"scorecast-ops\"\n\
         role = \"admin\"\n"
    );
    let dir = config_dir(&config);
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("credentials dir");
    let env = [("CREDENTIALS_DIRECTORY", credentials.display().to_string())];
    let Err(exit) = Daemon::try_spawn_with_env(dir, &env).await else {
        panic!("scorecast started without its credential");
    };
    assert!(!exit.status.success(), "{}", exit.status);
    let path = credentials.join("scorecast-ops");
    assert!(
        exit.log.contains(&format!(
            "auth.tokens[0].credential (token \"ops\"): cannot read {}",
            path.display()
        )),
        "{}",
        exit.log
    );

    let Err(exit) = Daemon::try_spawn_with_env(config_dir(&config), &[]).await else {
        panic!("scorecast started without $CREDENTIALS_DIRECTORY");
    };
    assert!(!exit.status.success(), "{}", exit.status);
    assert!(
        exit.log.contains("$CREDENTIALS_DIRECTORY is not set")
            && exit.log.contains("LoadCredential=scorecast-ops:"),
        "{}",
        exit.log
    );
}

/// The relay `show` as an admin token sees it.
async fn show(daemon: &Daemon, token: &str) -> Value {
    let (status, relay) = call(daemon, "GET", "/api/v1/relays/show", Some(token)).await;
    assert_eq!(status, 200, "{relay}");
    relay
}

/// SIGHUP with a rotated credential: the old token stops working and the new one works at
/// once, the relay runs on untouched, and no token reaches the log. A credential that has
/// gone then changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_rotates_a_credential_and_leaves_the_relays_alone() {
    let config = format!(
        "{}[[auth.tokens]]\nname = \"ops\"\ncredential = \"scorecast-ops\"\nrole = \"admin\"\n\
         [[auth.tokens]]\nname = \"site\"\ntoken_sha256 = \"{}\"\nrole = \"read-only\"\n",
        relay_config("show", r#"stream_key = "show-key""#, ""),
        sha256sum(READER)
    );
    let dir = config_dir(&config);
    let credentials = dir.path().join("credentials");
    write_credential(&credentials, "scorecast-ops", ADMIN);
    let env = [("CREDENTIALS_DIRECTORY", credentials.display().to_string())];
    let daemon = Daemon::try_spawn_with_env(dir, &env)
        .await
        .unwrap_or_else(|exit| panic!("scorecast exited at start:\n{}", exit.log));
    let before = wait_for("the slate on air", Duration::from_secs(20), || async {
        let relay = show(&daemon, ADMIN).await;
        (relay["on_air"]["showing"] == "slate").then_some(relay)
    })
    .await;

    write_credential(&credentials, "scorecast-ops", NEW_ADMIN);
    daemon.process().signal("HUP");
    wait_for("the reload", Duration::from_secs(20), || async {
        daemon.log().contains("config reloaded").then_some(())
    })
    .await;
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("tokens reloaded") && l.contains("count=2")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("config reloaded") && l.contains("added=0 changed=0 removed=0")),
        "{log}"
    );
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(ADMIN)).await;
    assert_eq!(status, 401, "the old token still works: {body}");
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    let after = show(&daemon, NEW_ADMIN).await;
    assert_eq!(after["on_air"]["showing"], "slate", "{after}");
    assert!(
        after["uptime"].as_f64() > before["uptime"].as_f64(),
        "show was restarted: {before} then {after}"
    );

    // The credential gone: the reload is refused, and the tokens in force stay.
    std::fs::remove_file(credentials.join("scorecast-ops")).expect("remove the credential");
    daemon.process().signal("HUP");
    wait_for("the refused reload", Duration::from_secs(20), || async {
        daemon.log().contains("config not reloaded").then_some(())
    })
    .await;
    let log = daemon.log();
    let path = credentials.join("scorecast-ops").display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("config not reloaded") && l.contains(&path)),
        "{log}"
    );
    let (status, body) = call(&daemon, "GET", "/api/v1/relays", Some(NEW_ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(show(&daemon, NEW_ADMIN).await["on_air"]["showing"], "slate");

    let dir = daemon.stop().await;
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    for secret in [ADMIN, READER, NEW_ADMIN] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}
