//! RTMPS destinations through a real TLS terminator: Debian's stunnel in front of nginx-rtmp,
//! as Facebook Live and YouTube's RTMPS ingest stand. A certificate that does not verify is
//! refused, with the reason in the destination's `last_error`; with
//! `server.destinations_ca_file` trusting its CA, the destination goes live and nginx receives
//! decodable video.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// stunnel terminating TLS on `accept` with `cert`/`key` and forwarding to `connect`.
fn stunnel(dir: &Path, accept: u16, connect: u16, cert: &Path, key: &Path) -> Process {
    require_tool("stunnel");
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[rtmps]\naccept = 127.0.0.1:{accept}\n\
             connect = 127.0.0.1:{connect}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("write stunnel.conf");
    Process::spawn(
        "stunnel",
        Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rtmps_through_stunnel_is_refused_on_an_untrusted_certificate_and_live_when_trusted() {
    let nginx = Nginx::start().await;
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = make_certificate(certs.path(), "rtmps-ingest");
    let tls_port = free_port();
    let _stunnel = stunnel(certs.path(), tls_port, nginx.port, &cert, &key);
    let output = youtube_output(&format!("rtmps://localhost:{tls_port}/live/fb-key"));

    // Not trusted: the system's CAs do not know this certificate.
    let config = relay_config("final", r#"stream_key = "final-key""#, &output);
    let daemon = Daemon::spawn(&config).await;
    let refused = wait_for(
        "the destination to fail on the certificate",
        Duration::from_secs(30),
        || async {
            let out = output_of(&daemon.relay("final").await, "youtube");
            out["last_error"].as_str().is_some().then_some(out)
        },
    )
    .await;
    let reason = refused["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!("untrusted certificate: {reason}");
    assert_ne!(refused["state"], "live", "{refused}");
    assert!(
        reason.to_lowercase().contains("certificate") || reason.to_lowercase().contains("tls"),
        "the reason does not name the certificate: {reason}"
    );
    assert!(
        !reason.contains("fb-key"),
        "the reason holds the key: {reason}"
    );
    daemon.stop().await;

    // Trusted through server.destinations_ca_file: live, and nginx gets decodable video.
    let config = format!(
        "[server]\ndestinations_ca_file = \"{}\"\n{config}",
        cert.display()
    );
    let daemon = Daemon::spawn(&config).await;
    let live = daemon
        .wait_output("final", "youtube", "live", Duration::from_secs(30))
        .await;
    assert!(live["bytes_sent"].as_u64() > Some(0), "{live}");
    let at_nginx = nginx.url("fb-key");
    assert_h264_aac(&probe(&at_nginx), 1280, 720, "nginx behind stunnel");
    assert!(
        decode_frames(&at_nginx, 30) >= 30,
        "the stream behind stunnel does not decode"
    );
    assert!(!daemon.log().contains("fb-key"), "the log holds the key");
}
