//! Floods on the RTMP port, against a running daemon with its default limits (`[ingest]`):
//! thousands of idle connections, key guessing on parallel connections, and connections that
//! send data without ever publishing. The attackers connect from 127.0.0.2 and up, the real
//! publisher (ffmpeg) from 127.0.0.1: to the daemon they are different addresses.
//!
//! The figures printed (sockets held, `/healthz` answer times, resident memory) go into
//! BENCHMARKS.md; the assertions hold the limits, not speeds.

mod common;
mod rtmp_peer;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use rtmp_peer::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const MAIN: &str = "main";
const MAIN_KEY: &str = "main-key";
/// `ingest::DEFAULT_MAX_CONNECTIONS` and `DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_ADDRESS: usize = 8;
/// `ingest::DEFAULT_MAX_BYTES_BEFORE_PUBLISH` and `..._TOTAL`.
const MAX_BEFORE_PUBLISH: usize = 64 << 10;
const MAX_BEFORE_PUBLISH_TOTAL: usize = 4 << 20;
/// `/healthz` must answer within this while the RTMP port is flooded.
const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);

fn attacker(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// The daemon's TCP connections to its RTMP port from addresses `from` accepts.
fn held_from(daemon: &Daemon, from: impl Fn(IpAddr) -> bool) -> usize {
    daemon.held_connections(daemon.rtmp_port, from)
}

/// The slowest of `n` `/healthz` answers.
async fn slowest_healthz(daemon: &Daemon, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let (status, _) = daemon.get("/healthz").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// `per_address` connections from each of `addresses`, each sending C0 (the start of a
/// handshake that never goes on) unless the daemon closed it already; held by the caller.
async fn open_idle(
    addresses: impl IntoIterator<Item = IpAddr>,
    per_address: usize,
    port: u16,
) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for from in addresses {
        for _ in 0..per_address {
            let mut stream = connect_from(from, port)
                .await
                .expect("connect to the RTMP port");
            let _ = stream.write_all(&[3]).await;
            held.push(stream);
        }
    }
    held
}

async fn daemon_with_main() -> Daemon {
    raise_fd_limit();
    Daemon::spawn(&relay_config(
        MAIN,
        &format!("stream_key = \"{MAIN_KEY}\""),
        "",
    ))
    .await
}

/// Asserts the log holds no stream key: a refusal names its reason, never the key tried.
fn assert_no_keys_logged(daemon: &Daemon, keys: &[&str]) {
    let log = daemon.log();
    for key in keys {
        assert!(!log.contains(key), "the log shows the key {key:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_are_held_at_the_caps() {
    let daemon = daemon_with_main().await;
    let port = daemon.rtmp_port;
    let rss_before = daemon.rss_mib();

    // 2,000 from one address: the daemon keeps its 8, and closes the rest at accept.
    let started = Instant::now();
    let one = open_idle([attacker(2)], 2000, port).await;
    let opened_in = started.elapsed();
    let held = wait_for(
        "the daemon to hold 8 from 127.0.0.2",
        Duration::from_secs(3),
        || async {
            let held = held_from(&daemon, |ip| ip == attacker(2));
            (held == MAX_PER_ADDRESS).then_some(held)
        },
    )
    .await;
    let healthz = slowest_healthz(&daemon, 20).await;
    let held_after = held_from(&daemon, |ip| ip == attacker(2));
    eprintln!(
        "2000 connections from one address (opened in {opened_in:?}): the daemon holds \
         {held}, then {held_after}; slowest of 20 /healthz: {healthz:?}"
    );
    assert!(held_after <= MAX_PER_ADDRESS, "held {held_after}");
    assert!(healthz < HEALTHZ_WITHIN, "/healthz took {healthz:?}");

    // A real publisher from another address goes on air meanwhile.
    let _publisher = ffmpeg_publisher(&daemon.publish_url(MAIN_KEY), 60);
    daemon
        .wait_on_air(MAIN, "input", Duration::from_secs(20))
        .await;

    // 2,000 more from 100 addresses: no more than 256 in all, the publisher's included, and
    // it stays on air.
    let many = open_idle((10..110).map(attacker), 20, port).await;
    let total = held_from(&daemon, |_| true);
    let healthz = slowest_healthz(&daemon, 20).await;
    let rss = daemon.rss_mib();
    eprintln!(
        "2000 more from 100 addresses: the daemon holds {total} RTMP connections in all; \
         slowest of 20 /healthz: {healthz:?}; RSS {rss_before:.0} MiB before the floods, \
         {rss:.0} MiB now"
    );
    assert!(total <= MAX_CONNECTIONS, "held {total}");
    assert!(
        total >= MAX_CONNECTIONS / 2,
        "held only {total}: the cap is not what limits"
    );
    assert!(healthz < HEALTHZ_WITHIN, "/healthz took {healthz:?}");
    let relay = daemon.relay(MAIN).await;
    assert_eq!(relay["on_air"]["showing"], "input", "{relay}");
    assert_publisher_is_the_real_one(&relay);

    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("rtmp connections closed at accept"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines about connections closed at accept (one per 10 s at most):\n{log}"
    );
    drop((one, many));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_guessing_on_parallel_connections_shuts_the_address_out() {
    raise_fd_limit();
    let config = format!(
        "{}\n[ingest]\nmax_failed_publishes = 4\n",
        relay_config(MAIN, &format!("stream_key = \"{MAIN_KEY}\""), "")
    );
    let daemon = Daemon::spawn(&config).await;
    let port = daemon.rtmp_port;
    let guesser = attacker(2);

    // A connection made before any guess, ready to publish.
    let mut early = RtmpClient::connect(guesser, port)
        .await
        .expect("the first connection is taken");
    // Six guesses at once, each on a connection of its own: all refused, and the address has
    // spent its budget of 4.
    let guesses = (0..6).map(|i| async move {
        let mut client = RtmpClient::connect(guesser, port).await?;
        Some(client.publish(&format!("guess-{i}")).await)
    });
    let answers = futures_util::future::join_all(guesses).await;
    assert!(
        answers.iter().all(|a| *a != Some(true)),
        "a wrong key was taken: {answers:?}"
    );
    // The early connection now publishes the right key: refused, the address is shut out.
    assert!(
        !early.publish(MAIN_KEY).await,
        "a connection opened before the shut-out got the right key on air"
    );
    // And its new connections are closed before the handshake.
    let mut late = connect_from(guesser, port).await.expect("connect");
    let closed = wait_closed(&mut late, Duration::from_secs(2), "a shut-out address").await;
    eprintln!("a new connection from the shut-out address was closed after {closed:?}");

    // Another address is unaffected.
    let _publisher = ffmpeg_publisher(&daemon.publish_url(MAIN_KEY), 30);
    let relay = daemon
        .wait_on_air(MAIN, "input", Duration::from_secs(20))
        .await;
    assert_publisher_is_the_real_one(&relay);

    let log = daemon.log();
    let shut_outs = log
        .matches("too many failed publishes: this address is shut out")
        .count();
    assert_eq!(shut_outs, 1, "one warning per shut-out:\n{log}");
    assert_no_keys_logged(&daemon, &["guess-", MAIN_KEY]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_before_a_publish_are_bounded() {
    let daemon = daemon_with_main().await;
    let port = daemon.rtmp_port;
    let rss_before = daemon.rss_mib();

    // One connection sends a message that never ends: cut off at its 64 KiB allowance.
    let mut endless = connect_from(attacker(2), port).await.expect("connect");
    let written = write_endless_message(&mut endless, Duration::from_secs(10))
        .await
        .expect("the daemon took 16 MiB from a connection that never published");
    // Most of what was written sat in the kernel's socket buffers; the log says the daemon
    // took no more than its allowance.
    eprintln!(
        "a connection that never published saw its writes fail after {written} bytes \
         (socket buffers included)"
    );

    // 96 connections from 12 addresses each send 60 KiB (under their own allowance) and wait:
    // together they are over the server's 4 MiB, so the last ones are closed (in their
    // handshake, or while they send).
    const SENT: usize = 60 << 10;
    const { assert!(SENT < MAX_BEFORE_PUBLISH) };
    let tasks: Vec<_> = (20..32)
        .flat_map(|n| std::iter::repeat_n(attacker(n), MAX_PER_ADDRESS))
        .map(|from| {
            tokio::spawn(async move {
                let mut stream = connect_from(from, port).await.expect("connect");
                // Once the budget is spent, even a handshake is over it.
                if try_handshake(&mut stream).await.is_err() {
                    return (true, stream);
                }
                let mut body = endless_message_head();
                body.resize(SENT, 0);
                let _ = stream.write_all(&body).await;
                // Held ones stay open until the publish deadline (10 s).
                let closed = closed_within(&mut stream, Duration::from_secs(3)).await;
                (closed, stream)
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut closed = 0;
    for task in tasks {
        let (was_closed, stream) = task.await.expect("a connection task");
        closed += usize::from(was_closed);
        streams.push(stream);
    }
    let held = streams.len() - closed;
    let rss = daemon.rss_mib();
    eprintln!(
        "96 connections sent {SENT} bytes each without publishing: {held} held, {closed} \
         closed; RSS {rss_before:.0} MiB before, {rss:.0} MiB after"
    );
    let each = SENT + 1536 * 2 + 1;
    assert!(
        held * each <= MAX_BEFORE_PUBLISH_TOTAL,
        "{held} held: over the server's budget"
    );
    assert!(
        held >= 32,
        "only {held} held: the budget is spent on closed connections"
    );
    assert!(
        rss - rss_before < 64.0,
        "RSS grew from {rss_before:.0} to {rss:.0} MiB"
    );
    let log = daemon.log();
    assert!(log.contains("before a publish was accepted"), "{log}");
    assert!(log.contains("the server's budget"), "{log}");

    // The budget comes back: a real publisher goes on air.
    drop(streams);
    let _publisher = ffmpeg_publisher(&daemon.publish_url(MAIN_KEY), 30);
    daemon
        .wait_on_air(MAIN, "input", Duration::from_secs(20))
        .await;
    daemon.stop().await;
}

/// The relay's publisher is the real one, from 127.0.0.1 (the attackers use other addresses).
fn assert_publisher_is_the_real_one(relay: &serde_json::Value) {
    assert!(
        relay["publisher"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{relay}"
    );
}
