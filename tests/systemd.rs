//! Running under systemd: the notify protocol spoken to a real unix datagram socket given as
//! `NOTIFY_SOCKET`, as systemd gives it to a `Type=notify` unit, and the shipped unit file
//! checked by `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// The datagrams the daemon sends, in order, as text.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl Manager {
    fn bind(path: &std::path::Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one satisfies `wanted`, for up to `timeout`; returns it.
    fn wait(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text.clone()));
                if wanted(&text) {
                    return text;
                }
            }
        }
        panic!("no {what} within {timeout:?}; got {:?}", self.seen);
    }
}

/// A daemon with one relay (`show`), started as systemd starts a `Type=notify` unit with
/// `WatchdogSec=watchdog`, and the socket it reports to.
async fn under_systemd(watchdog: Duration) -> (Daemon, Manager) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = relay_config("show", r#"stream_key = "show-key""#, "");
    std::fs::write(dir.path().join("scorecast.toml"), config).expect("config");
    let socket_path = dir.path().join("notify.sock");
    let manager = Manager::bind(&socket_path);
    let env = [
        ("NOTIFY_SOCKET", socket_path.display().to_string()),
        ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
    ];
    let daemon = Daemon::try_spawn_with_env(dir, &env)
        .await
        .unwrap_or_else(|exit| panic!("scorecast exited at start:\n{}", exit.log));
    (daemon, manager)
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_status_and_watchdog_reach_the_notify_socket() {
    let (daemon, mut manager) = under_systemd(Duration::from_secs(2)).await;

    // Ready once it serves: the API already answered /healthz.
    let ready = manager.wait("READY=1", Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(ready.contains("STATUS=1 relay, "), "{ready}");

    // The relay goes live on the slate, and the status line says so.
    manager.wait(
        "a status with the relay live",
        Duration::from_secs(20),
        |m| m == "STATUS=1 relay, 1 live",
    );

    // Pings at half the 2 s interval, not faster than systemd needs and not slower.
    manager.wait("a first ping", Duration::from_secs(5), |m| {
        m == "WATCHDOG=1"
    });
    let first = Instant::now();
    for _ in 0..3 {
        manager.wait("the next ping", Duration::from_secs(3), |m| {
            m == "WATCHDOG=1"
        });
    }
    let per_ping = first.elapsed() / 3;
    assert!(
        per_ping >= Duration::from_millis(700) && per_ping <= Duration::from_millis(1500),
        "pings every {per_ping:?}, expected about 1 s"
    );

    // SIGTERM: systemd is told the daemon is stopping.
    daemon.stop().await;
    manager.wait("STOPPING=1", Duration::from_secs(1), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/scorecast.service");
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(unit).expect("unit file");
    let text = text.replace("/usr/local/bin/scorecast", env!("CARGO_BIN_EXE_scorecast"));
    let copy = dir.path().join("scorecast.service");
    std::fs::write(&copy, &text).expect("copy the unit");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains(copy.to_string_lossy().as_ref()),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    // A flood or a leak must stop at the service's own ceilings.
    for limit in ["LimitNOFILE=", "TasksMax=", "MemoryMax="] {
        assert!(
            text.lines().any(|l| l.starts_with(limit)),
            "the unit sets no {limit}"
        );
    }
}

/// For journald and log shippers: with `server.log_format = "json"` every line the daemon
/// writes is one JSON object with its level, target and fields, and none carries a terminal
/// colour code.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let config = format!(
        "[server]\nlog_format = \"json\"\n{}",
        relay_config("show", r#"stream_key = "show-key""#, "")
    );
    let daemon = Daemon::spawn(&config).await;
    daemon
        .wait_on_air("show", "slate", Duration::from_secs(20))
        .await;
    let dir = daemon.stop().await;
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).expect("daemon log");
    assert!(!log.contains('\u{1b}'), "a colour code in the log:\n{log}");
    let mut ready = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["target"].is_string(),
            "{line}"
        );
        if event["fields"]["message"] == "scorecast ready" {
            assert!(event["fields"]["api"].is_string(), "{line}");
            ready = true;
        }
    }
    assert!(ready, "no `scorecast ready` event:\n{log}");
}

/// The config's relays: `keep` (transcoded, published to, with a destination) and the
/// passthrough relays given, each `[[relay]]` with its stream key `<id>-key`.
fn reload_config(nginx: &Nginx, passthrough: &[(&str, &str)]) -> String {
    let mut config = relay_config(
        "keep",
        r#"stream_key = "keep-key""#,
        &youtube_output(&nginx.url("keep")),
    );
    for (id, key) in passthrough {
        config.push_str(&format!(
            "[[relay]]\nid = \"{id}\"\ntranscode = false\ningest = {{ stream_key = \"{key}\" }}\n"
        ));
    }
    config
}

async fn relay_ids(daemon: &Daemon) -> Vec<String> {
    let (_, list) = daemon.get("/api/v1/relays").await;
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// SIGHUP applies the config file again: an added relay appears, a removed one goes, a
/// changed one gets its new spec, and an untouched relay keeps its publisher and its one
/// destination session. A config that does not load changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_the_config_and_leaves_untouched_relays_alone() {
    let nginx = Nginx::start_recording().await;
    let config = reload_config(&nginx, &[("drop", "drop-key"), ("change", "change-key")]);
    let daemon = Daemon::spawn(&config).await;
    let _publisher = ffmpeg_publisher(&daemon.publish_url("keep-key"), 120);
    daemon
        .wait_on_air("keep", "input", Duration::from_secs(20))
        .await;
    daemon
        .wait_output("keep", "youtube", "live", Duration::from_secs(20))
        .await;
    let before = daemon.relay("keep").await;
    assert_eq!(relay_ids(&daemon).await, ["change", "drop", "keep"]);

    let config_path = daemon.dir.path().join("scorecast.toml");
    let changed = reload_config(&nginx, &[("change", "changed-key"), ("add", "add-key")]);
    std::fs::write(&config_path, changed).expect("rewrite the config");
    daemon.process().signal("HUP");
    wait_for("the reload", Duration::from_secs(20), || async {
        daemon.log().contains("config reloaded").then_some(())
    })
    .await;
    assert_eq!(relay_ids(&daemon).await, ["add", "change", "keep"]);
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("config reloaded") && l.contains("added=1 changed=1 removed=1")),
        "{log}"
    );
    let change = daemon.relay("change").await;
    assert_eq!(change["ingest"]["stream_key"], "changed-key", "{change}");
    let add = daemon.relay("add").await;
    assert_eq!(add["state"], "waiting", "{add}");

    // The untouched relay: the same publisher on air, never restarted, one session at nginx.
    let after = daemon.relay("keep").await;
    assert_eq!(
        after["publisher"]["peer"], before["publisher"]["peer"],
        "{after}"
    );
    assert_eq!(after["on_air"]["showing"], "input", "{after}");
    assert_eq!(after["outputs"][0]["state"], "live", "{after}");
    assert!(
        after["uptime"].as_f64() > before["uptime"].as_f64(),
        "keep was restarted: {before} then {after}"
    );

    // A broken file: an error in the log, and every relay as it was.
    std::fs::write(&config_path, "[[relay]]\nid = \"oops\"\nstream_kee = 1\n").expect("break it");
    daemon.process().signal("HUP");
    wait_for("the refused reload", Duration::from_secs(20), || async {
        daemon.log().contains("config not reloaded").then_some(())
    })
    .await;
    assert_eq!(relay_ids(&daemon).await, ["add", "change", "keep"]);
    let still = daemon.relay("keep").await;
    assert_eq!(
        still["publisher"]["peer"], before["publisher"]["peer"],
        "{still}"
    );
    // A destination that had been restarted would be back at nginx within its first retry
    // (at most 1.25 s) as a second recording.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        nginx.recordings().len(),
        1,
        "the destination's session broke: {:?}",
        nginx.recordings()
    );
}

/// One thread of another process, stopped with ptrace while everything else in it runs: a
/// streaming thread hung as on a stuck system call. Resumed when dropped.
struct FrozenThread {
    resume: Option<std::sync::mpsc::Sender<()>>,
    done: Option<std::thread::JoinHandle<()>>,
}

impl FrozenThread {
    /// Stops thread `tid`. ptrace requests must all come from the tracing thread, so one
    /// thread of ours holds it until resumed.
    fn freeze(tid: i32) -> Self {
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        let (frozen_tx, frozen) = std::sync::mpsc::channel::<Result<(), String>>();
        let done = std::thread::spawn(move || {
            // SAFETY: plain ptrace requests on a thread of our own child; no memory is shared.
            let seized = unsafe {
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) == 0
                    && libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) == 0
            };
            if !seized {
                let _ = frozen_tx.send(Err(std::io::Error::last_os_error().to_string()));
                return;
            }
            let mut status = 0;
            // SAFETY: waits for the interrupted thread's stop; `status` is ours.
            unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
            let _ = frozen_tx.send(Ok(()));
            let _ = resumed.recv();
            // SAFETY: lets the thread go on; it is in ptrace-stop.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, 0usize) };
        });
        frozen
            .recv()
            .expect("the tracing thread answers")
            .unwrap_or_else(|e| panic!("cannot stop thread {tid}: {e}"));
        Self {
            resume: Some(resume),
            done: Some(done),
        }
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        drop(self.resume.take());
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

/// The thread of `pid` whose name is `name` with the lowest id (GStreamer names a queue's
/// streaming thread after its pad, and x264's own threads inherit that name later).
fn thread_named(pid: u32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let tid: i32 = task.file_name().to_str()?.parse().ok()?;
            (comm.trim() == name).then_some(tid)
        })
        .min()
}

/// A wedged pipeline stops the watchdog: the thread feeding the program's encoder is frozen
/// (its bus and the relay's actor still answer), the pings stop and the log says why; once it
/// runs again, so do the pings.
#[tokio::test(flavor = "multi_thread")]
async fn watchdog_pings_stop_while_a_pipeline_is_wedged() {
    let (daemon, mut manager) = under_systemd(Duration::from_secs(1)).await;
    daemon
        .wait_on_air("show", "slate", Duration::from_secs(20))
        .await;
    manager.wait("a ping", Duration::from_secs(5), |m| m == "WATCHDOG=1");

    let tid = thread_named(daemon.process().pid(), "enc-q-720p:src")
        .expect("the encoder queue's streaming thread");
    let frozen = FrozenThread::freeze(tid);
    // Pings in flight may still land; after that, none for several intervals.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = std::mem::take(&mut manager.seen);
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < Duration::from_secs(3) {
        let mut buf = [0u8; 256];
        if let Ok(n) = manager.socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert_ne!(message, "WATCHDOG=1", "a ping while the encoder is wedged");
        }
    }
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("watchdog ping withheld")
            && l.contains("relay show")
            && l.contains("encoded no frame")),
        "{log}"
    );
    // The API still answers: only the pipeline is stuck.
    assert_eq!(daemon.relay("show").await["id"], "show");

    drop(frozen);
    manager.wait("pings again", Duration::from_secs(5), |m| m == "WATCHDOG=1");
    wait_for(
        "the resumed pings logged",
        Duration::from_secs(5),
        || async {
            daemon
                .log()
                .contains("watchdog pings resumed")
                .then_some(())
        },
    )
    .await;
}
