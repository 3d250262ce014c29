//! TLS on the API listener (`server.tls_cert`, `server.tls_key`), against the binary with
//! certificates openssl makes: the API and the console answer over HTTPS to a client that
//! trusts the certificate, and to nothing else; SIGHUP puts a renewed certificate in force for
//! new connections and keeps the old one when the new files are bad; a bad certificate or key
//! stops the start and names the key and the file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const ADMIN: &str = "tls-admin-token-0123456789";

fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n",
        cert.display(),
        key.display()
    )
}

/// `GET /healthz` on a new connection from a client that trusts only `ca`.
async fn healthz_trusting(daemon: &Daemon, ca: &Path) -> Result<u16, String> {
    let ca = std::fs::read(ca).expect("the certificate");
    https_client(&ca)
        .get(format!("{}/healthz", daemon.api))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// The API and the console over HTTPS; plain HTTP and a client that does not trust the
/// certificate get nothing; a renewed certificate is taken on SIGHUP, a broken one is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_over_tls_and_sighup_renews_the_certificate() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (first, first_key) = make_certificate(certs.path(), "first");
    let (renewed, renewed_key) = make_certificate(certs.path(), "renewed");
    // The daemon reads the files under these names; a renewal replaces them.
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::copy(&first, &cert).expect("copy");
    std::fs::copy(&first_key, &key).expect("copy");

    let first_pem = std::fs::read(&first).expect("read");
    let daemon = Daemon::try_spawn_tls(config_dir(&tls_config(&cert, &key)), &first_pem)
        .await
        .unwrap_or_else(|exit| panic!("scorecast exited at start:\n{}", exit.log));
    assert!(daemon.log().contains("tls=true"), "{}", daemon.log());

    // The API, with a token, and the console page.
    let relay = json!({"id": "main", "ingest": {"stream_key": "main-key-0123"}});
    let made = daemon
        .http
        .post(format!("{}/api/v1/relays", daemon.api))
        .bearer_auth(ADMIN)
        .json(&relay)
        .send()
        .await
        .expect("POST over https");
    assert_eq!(made.status(), 201, "{:?}", made.text().await);
    let listed: serde_json::Value = daemon
        .http
        .get(format!("{}/api/v1/relays", daemon.api))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET over https")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed[0]["id"], "main", "{listed}");
    let console = daemon
        .http
        .get(format!("{}/", daemon.api))
        .send()
        .await
        .expect("the console over https");
    assert_eq!(console.status(), 200);
    assert!(console.text().await.expect("text").contains("<html"));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = daemon.api.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "plain HTTP was answered: {:?}",
        answer.map(|r| r.status())
    );
    // A client that does not trust the certificate refuses it.
    let err = healthz_trusting(&daemon, &renewed)
        .await
        .expect_err("a certificate the client does not trust");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A renewal: new files in place, then SIGHUP. New connections get the new certificate.
    std::fs::copy(&renewed, &cert).expect("copy");
    std::fs::copy(&renewed_key, &key).expect("copy");
    daemon.process().signal("HUP");
    wait_for(
        "the renewed certificate",
        Duration::from_secs(20),
        || async {
            daemon
                .log()
                .contains("tls certificate reloaded")
                .then_some(())
        },
    )
    .await;
    assert_eq!(healthz_trusting(&daemon, &renewed).await, Ok(200));
    assert!(healthz_trusting(&daemon, &first).await.is_err());

    // A key that does not go with the certificate: the reload says so, the renewed one stays.
    std::fs::copy(&first_key, &key).expect("copy");
    daemon.process().signal("HUP");
    wait_for(
        "the refused certificate",
        Duration::from_secs(20),
        || async {
            daemon
                .log()
                .contains("tls certificate not reloaded")
                .then_some(())
        },
    )
    .await;
    assert_eq!(healthz_trusting(&daemon, &renewed).await, Ok(200));
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("tls certificate not reloaded"))
        .expect("the line");
    assert!(
        line.contains("server.tls_key") && line.contains(&key.display().to_string()),
        "{line}"
    );

    let dir = daemon.stop().await;
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains(ADMIN), "the token in the log:\n{log}");
    let key_text = std::fs::read_to_string(&first_key).expect("key");
    let key_body = key_text.lines().nth(1).expect("a line of the key");
    assert!(!log.contains(key_body), "the key in the log:\n{log}");
}

/// A missing certificate stops the start and names the key and the file; `check-config`
/// names the key missing from a pair.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_stops_the_start_and_is_named() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_certificate(certs.path(), "only-key");
    let ca = std::fs::read(cert).expect("read");
    let gone = certs.path().join("gone.crt");
    let Err(exit) = Daemon::try_spawn_tls(config_dir(&tls_config(&gone, &key)), &ca).await else {
        panic!("scorecast started with no certificate file");
    };
    assert!(!exit.status.success());
    assert!(
        exit.log.contains("server.tls_cert") && exit.log.contains(&gone.display().to_string()),
        "{}",
        exit.log
    );

    let dir = config_dir(&format!("[server]\ntls_cert = \"{}\"\n", gone.display()));
    let out = Command::new(env!("CARGO_BIN_EXE_scorecast"))
        .arg("check-config")
        .arg(dir.path().join("scorecast.toml"))
        .output()
        .expect("check-config runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("server.tls_key"), "{said}");
}
