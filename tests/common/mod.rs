//! Test peers: the daemon (in the test's process, or the built binary), an nginx-rtmp
//! stand-in for YouTube, ffmpeg and gst-launch publishers, and an RFC 8216 playlist checker.
//! Everything listens on 127.0.0.1 with ports chosen at run time, and every process is killed
//! when its guard drops.

#![allow(dead_code)]

pub mod frames;
pub mod in_process;
pub mod scores;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

/// Polls `check` every 200 ms until it returns `Some`, or panics naming `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free TCP port on loopback (bound, read back, released). Only for a port the test cannot
/// hold on to: one that another process listens on (the daemon binary, nginx), which that
/// process binds later, so that something else may take it in between; or one that nothing may
/// listen on. A listener the test can hand over (the in-process daemon's) is bound on port 0
/// and passed as it is.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Fails plainly when a tool the test needs is missing.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/deps (the README's test command does)"
    );
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin and stdout, when they were piped (once).
    pub fn take_stdio(
        &mut self,
    ) -> (
        Option<std::process::ChildStdin>,
        Option<std::process::ChildStdout>,
    ) {
        (self.child.stdin.take(), self.child.stdout.take())
    }

    /// Whether it has exited, with its status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit on its own; panics naming `what` after `timeout`.
    pub async fn wait_exit(&mut self, what: &str, timeout: Duration) -> std::process::ExitStatus {
        wait_for(what, timeout, || {
            let status = self.try_wait();
            async move { status }
        })
        .await
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits up to `timeout`; then kills.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.terminate(Duration::from_secs(5));
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit: the flood tests hold a
/// few thousand sockets (and a daemon spawned afterwards inherits the limit).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 5000,
        "the hard limit on open files is {}; the flood tests need 5000",
        limit.rlim_cur
    );
}

/// The scorecast daemon with a config of the test's, and its directory: `scorecast.toml`,
/// `data/` as its data dir, and its log, `daemon.log`.
pub struct Daemon {
    /// Declared first, so it stops before its directory is removed.
    runner: Runner,
    pub api: String,
    pub rtmp_port: u16,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// How the daemon runs.
enum Runner {
    /// `daemon::run` in the test's process, on listeners the test bound ([`Daemon::start`]).
    InProcess(in_process::InProcess),
    /// The built binary, `scorecast run`, as systemd starts it ([`Daemon::spawn`]).
    Process(Process),
}

impl Runner {
    fn ended(&mut self) -> bool {
        match self {
            Runner::InProcess(daemon) => daemon.ended(),
            Runner::Process(process) => process.try_wait().is_some(),
        }
    }

    /// Stops it as systemd does: SIGTERM to the binary; in process, the shutdown future that
    /// `main` completes on SIGTERM. `Err` says how it did not end cleanly.
    async fn stop(self) -> Result<(), String> {
        match self {
            Runner::InProcess(daemon) => daemon.stop().await,
            Runner::Process(mut process) => {
                process.signal("TERM");
                let status = process
                    .wait_exit("scorecast to exit on SIGTERM", STOP_TIMEOUT)
                    .await;
                status.success().then_some(()).ok_or(status.to_string())
            }
        }
    }
}

/// The daemon's log in `dir`.
fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// The log filter of both runners (the binary's `RUST_LOG`): info, and debug for the relays.
pub const LOG_FILTER: &str = "info,scorecast::relay=debug";

/// How long a daemon may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings that keep tests light: ultrafast x264, 2 s segments.
pub const TEST_PROGRAM: &str =
    "[program]\nx264_preset = \"ultrafast\"\n[hls]\nsegment_seconds = 2\n";

/// A config with [`TEST_PROGRAM`] and one relay: `ingest` is the inline table's body (e.g.
/// `stream_key = "k"`), `extra` any further lines of the relay table.
pub fn relay_config(id: &str, ingest: &str, extra: &str) -> String {
    format!("{TEST_PROGRAM}\n[[relay]]\nid = \"{id}\"\ningest = {{ {ingest} }}\n{extra}\n")
}

/// Destination `id` in a relay's JSON (null when it has none by that id).
pub fn output_of(relay: &Value, id: &str) -> Value {
    relay["outputs"]
        .as_array()
        .and_then(|outputs| outputs.iter().find(|o| o["id"] == id))
        .cloned()
        .unwrap_or_default()
}

/// The `outputs` line of a relay with one destination, `youtube`, pushing to `url`.
pub fn youtube_output(url: &str) -> String {
    format!(r#"outputs = [ {{ id = "youtube", url = "{url}" }} ]"#)
}

/// A daemon binary that exited before it served: its status, its log, and its directory.
pub struct DaemonExit {
    pub status: std::process::ExitStatus,
    pub log: String,
    pub dir: tempfile::TempDir,
}

/// An HTTP client that trusts `ca` (PEM) and not a connection it made before.
pub fn https_client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).expect("a PEM certificate"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// A directory holding `config` as its `scorecast.toml`.
pub fn config_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("scorecast.toml"), config).expect("write config");
    dir
}

impl Daemon {
    /// Starts the daemon in this process with `config` (TOML) and waits for `/healthz`.
    pub async fn start(config: &str) -> Self {
        Self::start_in(config_dir(config)).await
    }

    /// Starts the daemon in this process on `dir` (see [`Daemon`]) and waits for `/healthz`.
    /// Its log is appended to `dir/daemon.log`.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let (api, rtmp) = (bind(), bind());
        let port = |l: &std::net::TcpListener| l.local_addr().expect("a bound port").port();
        let (api_port, rtmp_port) = (port(&api), port(&rtmp));
        let runner = in_process::InProcess::start(dir.path(), api, rtmp).await;
        let mut daemon = Self::new(Runner::InProcess(runner), api_port, rtmp_port, dir);
        if daemon.wait_healthy().await {
            return daemon;
        }
        let log = daemon.log();
        let Runner::InProcess(mut runner) = daemon.runner else {
            unreachable!("started in process")
        };
        let outcome = runner.outcome().err().unwrap_or_else(|| "Ok".to_owned());
        panic!("daemon::run returned at start ({outcome}):\n{log}");
    }

    /// Starts the daemon binary with `config` (TOML) and waits for `/healthz`.
    pub async fn spawn(config: &str) -> Self {
        Self::spawn_in(config_dir(config)).await
    }

    /// Starts the daemon binary on `dir` (see [`Daemon`]) and waits for `/healthz`.
    pub async fn spawn_in(dir: tempfile::TempDir) -> Self {
        match Self::try_spawn_in(dir).await {
            Ok(daemon) => daemon,
            Err(exit) => panic!("scorecast exited at start ({}):\n{}", exit.status, exit.log),
        }
    }

    /// Starts the daemon binary on `dir` and waits for `/healthz`; `Err` if it exits first.
    /// Its log is appended to `dir/daemon.log`, so the log of a restarted daemon holds both
    /// runs.
    pub async fn try_spawn_in(dir: tempfile::TempDir) -> Result<Self, DaemonExit> {
        Self::try_spawn_with_env(dir, &[]).await
    }

    /// As [`Daemon::try_spawn_in`], with extra environment variables.
    pub async fn try_spawn_with_env(
        dir: tempfile::TempDir,
        env: &[(&str, String)],
    ) -> Result<Self, DaemonExit> {
        Self::try_spawn_with(dir, env, None).await
    }

    /// As [`Daemon::try_spawn_in`], for a config that serves the API over TLS: `api` is
    /// `https://`, and `http` trusts `ca` (PEM) for it.
    pub async fn try_spawn_tls(dir: tempfile::TempDir, ca: &[u8]) -> Result<Self, DaemonExit> {
        Self::try_spawn_with(dir, &[], Some(ca)).await
    }

    async fn try_spawn_with(
        dir: tempfile::TempDir,
        env: &[(&str, String)],
        tls_ca: Option<&[u8]>,
    ) -> Result<Self, DaemonExit> {
        let config_path = dir.path().join("scorecast.toml");
        let api_port = free_port();
        let rtmp_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("daemon.log"))
            .expect("log file");
        let process = Process::spawn(
            "scorecast",
            Command::new(env!("CARGO_BIN_EXE_scorecast"))
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .arg("--api-listen")
                .arg(format!("127.0.0.1:{api_port}"))
                .arg("--rtmp-listen")
                .arg(format!("127.0.0.1:{rtmp_port}"))
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env("RUST_LOG", LOG_FILTER)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(log.try_clone().expect("log file"))
                .stderr(log),
        );
        let mut daemon = Self::new(Runner::Process(process), api_port, rtmp_port, dir);
        if let Some(ca) = tls_ca {
            daemon.api = format!("https://127.0.0.1:{api_port}");
            daemon.http = https_client(ca);
        }
        if daemon.wait_healthy().await {
            return Ok(daemon);
        }
        let log = daemon.log();
        let Runner::Process(mut process) = daemon.runner else {
            unreachable!("spawned")
        };
        let status = process.try_wait().expect("it exited");
        Err(DaemonExit {
            status,
            log,
            dir: daemon.dir,
        })
    }

    fn new(runner: Runner, api_port: u16, rtmp_port: u16, dir: tempfile::TempDir) -> Self {
        Self {
            runner,
            api: format!("http://127.0.0.1:{api_port}"),
            rtmp_port,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                // Well inside the server's idle timeout (header_timeout_seconds, 10 s): a
                // kept-alive connection the server is closing just then fails the request.
                .pool_idle_timeout(Duration::from_secs(4))
                .build()
                .expect("http client"),
        }
    }

    /// Waits for `/healthz` to answer; `false` if the daemon ended first.
    async fn wait_healthy(&mut self) -> bool {
        let url = format!("{}/healthz", self.api);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.runner.ended() {
                return false;
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "scorecast did not come up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the daemon as systemd does ([`Runner::stop`]), asserts it ends cleanly, and hands
    /// back its directory.
    pub async fn stop(self) -> tempfile::TempDir {
        let Daemon { runner, dir, .. } = self;
        if let Err(e) = runner.stop().await {
            panic!("scorecast ended with {e}:\n{}", read_log(dir.path()));
        }
        dir
    }

    /// The daemon binary's process (for signals and its threads).
    pub fn process(&self) -> &Process {
        match &self.runner {
            Runner::Process(process) => process,
            Runner::InProcess(_) => panic!("this daemon runs in process: start it with spawn"),
        }
    }

    /// The resident memory of a daemon run from the binary, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let pid = self.process().pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the daemon's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib / 1024.0
    }

    /// The port of the API (and HLS) listener.
    pub fn api_port(&self) -> u16 {
        self.api
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the API's URL ends in its port")
    }

    /// The daemon binary's TCP connections to its own `port` from addresses `from` accepts,
    /// read from /proc: its socket inodes matched against the kernel's connection table.
    pub fn held_connections(&self, port: u16, from: impl Fn(std::net::IpAddr) -> bool) -> usize {
        let pid = self.process().pid();
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("the daemon's fds")
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect();
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let port = format!(":{port:04X}");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(remote), Some(state), Some(inode)) =
                    (f.get(1), f.get(2), f.get(3), f.get(9))
                else {
                    return false;
                };
                let remote_ip = remote
                    .split(':')
                    .next()
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .map(|raw| std::net::IpAddr::from(raw.to_le_bytes()));
                // 0A: the listening socket itself.
                local.ends_with(&port)
                    && *state != "0A"
                    && inodes.contains(*inode)
                    && remote_ip.is_some_and(&from)
            })
            .count()
    }

    /// As [`Daemon::process`], to end it.
    pub fn process_mut(&mut self) -> &mut Process {
        match &mut self.runner {
            Runner::Process(process) => process,
            Runner::InProcess(_) => panic!("this daemon runs in process: start it with spawn"),
        }
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    pub fn hls_dir(&self, relay: &str) -> PathBuf {
        self.dir.path().join("data/hls").join(relay)
    }

    pub fn publish_url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.rtmp_port)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = match self.http.get(format!("{}{path}", self.api)).send().await {
            Ok(r) => r,
            Err(e) => panic!("GET {path}: {e}\ndaemon log:\n{}", self.log()),
        };
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path`; `None` unless it answers 2xx.
    async fn fetch_ok(&self, path: &str) -> Option<reqwest::Response> {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r)
    }

    /// A served file's MIME type and text.
    pub async fn get_text(&self, path: &str) -> Option<(String, String)> {
        let r = self.fetch_ok(path).await?;
        let mime = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some((mime, r.text().await.ok()?))
    }

    pub async fn get_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let r = self.fetch_ok(path).await?;
        Some(r.bytes().await.ok()?.to_vec())
    }

    /// Sends `method path` with a JSON `body` and, if given, a bearer token; the reply is
    /// the caller's to read (a stream may never end).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.request(
            method.parse().expect("an HTTP method"),
            format!("{}{path}", self.api),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// POSTs a raw body; returns status and JSON.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self.send("POST", path, body, None).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends DELETE to `path`; returns the status.
    pub async fn delete(&self, path: &str) -> u16 {
        self.http
            .delete(format!("{}{path}", self.api))
            .send()
            .await
            .expect("DELETE")
            .status()
            .as_u16()
    }

    /// Makes caster `name` on queue relay `id` and returns their stream key.
    pub async fn add_caster(&self, id: &str, name: &str) -> String {
        let (status, caster) = self
            .post(
                &format!("/api/v1/relays/{id}/casters"),
                &format!(r#"{{"name":"{name}"}}"#),
            )
            .await;
        assert_eq!(status, 201, "POST caster {name}: {caster}");
        caster["stream_key"].as_str().expect("a key").to_owned()
    }

    /// A queue relay's casters by name, the one on air first (`-` with nobody on air).
    pub async fn queue_names(&self, id: &str) -> Vec<String> {
        let (status, q) = self.get(&format!("/api/v1/relays/{id}/queue")).await;
        assert_eq!(status, 200, "GET queue of {id}: {q}");
        let on_air = q["on_air"]["name"].as_str().unwrap_or("-").to_owned();
        let waiting = q["waiting"].as_array().expect("waiting");
        std::iter::once(on_air)
            .chain(
                waiting
                    .iter()
                    .map(|w| w["name"].as_str().unwrap().to_owned()),
            )
            .collect()
    }

    pub async fn relay(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/relays/{id}")).await;
        assert_eq!(status, 200, "GET relay {id}: {body}");
        body
    }

    /// Waits until the relay reports `state`.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        wait_for(&format!("relay {id} to be {state}"), timeout, || async {
            let body = self.relay(id).await;
            (body["state"] == state).then_some(body)
        })
        .await
    }

    /// Waits until relay `id`'s program shows `showing` (`input` or `slate`).
    /// Waits until relay `id`'s destination `output` is in `state`; returns the destination.
    pub async fn wait_output(
        &self,
        id: &str,
        output: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        wait_for(
            &format!("{id}'s {output} to be {state}"),
            timeout,
            || async {
                let out = output_of(&self.relay(id).await, output);
                (out["state"] == state).then_some(out)
            },
        )
        .await
    }

    pub async fn wait_on_air(&self, id: &str, showing: &str, timeout: Duration) -> Value {
        wait_for(&format!("{id} to show {showing}"), timeout, || async {
            let relay = self.relay(id).await;
            (relay["on_air"]["showing"] == showing).then_some(relay)
        })
        .await
    }
}

/// nginx with the RTMP module, standing in for YouTube's ingest: application `live`.
pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
    process: Option<Process>,
}

pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

impl Nginx {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// nginx that records every publish session into a file of its own (see
    /// [`Nginx::recordings`]): one file means one unbroken session.
    pub async fn start_recording() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(record: bool) -> Self {
        require_tool("nginx");
        assert!(
            Path::new(NGINX_RTMP_MODULE).exists(),
            "{NGINX_RTMP_MODULE} is missing: install libnginx-mod-rtmp (scripts/deps)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir_all(&recordings).expect("recordings dir");
        let record = if record {
            format!(
                "record all; record_path {}; record_unique on;",
                recordings.display()
            )
        } else {
            "record off;".to_owned()
        };
        let conf = format!(
            "load_module {NGINX_RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {dir}/error.log info;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; {record} }} }} }}\n",
            dir = dir.path().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut nginx = Self {
            port,
            dir,
            conf: conf_path,
            process: None,
        };
        nginx.run().await;
        nginx
    }

    /// Starts nginx (again) on its port and waits until it listens.
    pub async fn run(&mut self) {
        self.process = Some(Process::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-c")
                .arg(&self.conf)
                .arg("-p")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        ));
        let port = self.port;
        wait_for("nginx to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// Stops nginx: every session to it ends.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(5));
        }
    }

    /// The files recorded so far, one per publish session.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("recordings"))
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }
}

/// ffmpeg publishing a 1280x720 30 fps test pattern with a 440 Hz tone, in real time.
pub fn ffmpeg_publisher(url: &str, seconds: u32) -> Process {
    ffmpeg_lavfi_publisher(
        url,
        "testsrc2=size=1280x720:rate=30",
        "sine=frequency=440:sample_rate=48000",
        seconds,
        60,
    )
}

/// ffmpeg publishing the lavfi sources `video` and `audio` for `seconds` in real time, H.264
/// (a keyframe every `gop` frames) and AAC.
pub fn ffmpeg_lavfi_publisher(
    url: &str,
    video: &str,
    audio: &str,
    seconds: u32,
    gop: u32,
) -> Process {
    ffmpeg_encoding_publisher(url, "flv", video, audio, seconds, gop)
}

/// ffmpeg publishing [`ffmpeg_publisher`]'s test pattern and tone as MPEG-TS over SRT to
/// `url` (`srt://…?streamid=…&passphrase=…`), a keyframe a second.
pub fn ffmpeg_srt_publisher(url: &str, seconds: u32) -> Process {
    ffmpeg_encoding_publisher(
        url,
        "mpegts",
        "testsrc2=size=1280x720:rate=30",
        "sine=frequency=440:sample_rate=48000",
        seconds,
        30,
    )
}

fn ffmpeg_encoding_publisher(
    url: &str,
    format: &str,
    video: &str,
    audio: &str,
    seconds: u32,
    gop: u32,
) -> Process {
    require_tool("ffmpeg");
    Process::spawn(
        "ffmpeg publisher",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", video])
            .args(["-f", "lavfi", "-i", audio])
            .args(["-t", &seconds.to_string()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", &gop.to_string(), "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac", "-b:a", "128k"])
            .args(["-f", format, url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// gst-launch-1.0 publishing with `rtmp2sink`.
pub fn gst_publisher(url: &str) -> Process {
    require_tool("gst-launch-1.0");
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=960,height=540,framerate=25/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 ! h264parse \
         ! flvmux name=mux streamable=true ! rtmp2sink location={url} \
         audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample \
         ! audio/x-raw,rate=44100,channels=2 ! avenc_aac ! aacparse ! mux."
    );
    Process::spawn(
        "gst-launch publisher",
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// ffprobe's JSON for `input` with `args` (Null when it printed none).
fn ffprobe_json(args: &[&str], input: &str) -> Value {
    require_tool("ffprobe");
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .args(["-of", "json", input])
        .output()
        .expect("run ffprobe");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// What ffprobe sees in a file or URL: (codec_type, codec_name, width, height) per stream.
pub fn probe(input: &str) -> Vec<(String, String, i64, i64)> {
    ffprobe_json(
        &[
            "-rw_timeout",
            "10000000",
            "-show_entries",
            "stream=codec_type,codec_name,width,height",
        ],
        input,
    )["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .map(|s| {
                    (
                        s["codec_type"].as_str().unwrap_or_default().to_owned(),
                        s["codec_name"].as_str().unwrap_or_default().to_owned(),
                        s["width"].as_i64().unwrap_or(0),
                        s["height"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes up to `frames` video frames from `input`; returns how many decoded without error.
pub fn decode_frames(input: &str, frames: u32) -> u32 {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-nostdin",
            "-rw_timeout",
            "10000000",
            "-i",
            input,
        ])
        .args(["-map", "0:v:0", "-frames:v", &frames.to_string()])
        .args(["-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg");
    if !out.status.success() || !out.stderr.is_empty() {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u32
}

/// Asserts a stream is H.264 at `width`x`height` plus AAC.
pub fn assert_h264_aac(
    streams: &[(String, String, i64, i64)],
    width: i64,
    height: i64,
    what: &str,
) {
    assert!(
        streams
            .iter()
            .any(|s| s.0 == "video" && s.1 == "h264" && s.2 == width && s.3 == height),
        "{what}: no H.264 {width}x{height} video in {streams:?}"
    );
    assert!(
        streams.iter().any(|s| s.0 == "audio" && s.1 == "aac"),
        "{what}: no AAC audio in {streams:?}"
    );
}

/// A media playlist, parsed.
#[derive(Debug, Clone)]
pub struct MediaPlaylist {
    pub target_duration: u64,
    pub media_sequence: u64,
    /// (EXTINF, URI) per segment.
    pub segments: Vec<(f64, String)>,
    pub ended: bool,
    /// Its `EXT-X-DATERANGE` tags, whole.
    pub date_ranges: Vec<String>,
}

/// Parses a media playlist and applies RFC 8216's rules, plus ours: every segment carries a
/// program date-time. Panics with the playlist on a breach.
pub fn check_media_playlist(text: &str) -> MediaPlaylist {
    let fail = |why: &str| -> ! { panic!("media playlist breaks RFC 8216: {why}\n{text}") };
    let mut lines = text.lines();
    if lines.next() != Some("#EXTM3U") {
        fail("first line is not #EXTM3U");
    }
    let mut target = None;
    let mut sequence = 0;
    let mut segments = Vec::new();
    let mut pending: Option<f64> = None;
    let mut dated = false;
    let mut ended = false;
    let mut date_ranges = std::collections::BTreeSet::new();
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            if target.is_some() {
                fail("EXT-X-TARGETDURATION appears twice");
            }
            target = Some(
                v.parse::<u64>()
                    .unwrap_or_else(|_| fail("TARGETDURATION not an integer")),
            );
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            sequence = v
                .parse()
                .unwrap_or_else(|_| fail("MEDIA-SEQUENCE not an integer"));
        } else if line.starts_with("#EXT-X-PROGRAM-DATE-TIME:") {
            dated = true;
        } else if line == "#EXT-X-ENDLIST" {
            ended = true;
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-DATERANGE:") {
            // RFC 8216 4.3.2.7: a quoted ID, unique, and a quoted START-DATE.
            let id = attrs
                .split(',')
                .find_map(|a| a.strip_prefix("ID=\""))
                .unwrap_or_else(|| fail("EXT-X-DATERANGE without ID"));
            if !attrs.contains("START-DATE=\"") {
                fail("EXT-X-DATERANGE without START-DATE");
            }
            if !date_ranges.insert(id.to_owned()) {
                fail("EXT-X-DATERANGE ID repeated");
            }
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            let duration = v.split(',').next().unwrap_or_default();
            pending = Some(
                duration
                    .parse()
                    .unwrap_or_else(|_| fail("EXTINF not a number")),
            );
        } else if !line.starts_with('#') {
            let duration = pending
                .take()
                .unwrap_or_else(|| fail("a URI without EXTINF"));
            if !std::mem::take(&mut dated) {
                fail(&format!("{line} has no EXT-X-PROGRAM-DATE-TIME"));
            }
            segments.push((duration, line.to_owned()));
        }
    }
    let target = target.unwrap_or_else(|| fail("no EXT-X-TARGETDURATION"));
    if !date_ranges.is_empty() && !text.contains("#EXT-X-PROGRAM-DATE-TIME:") {
        fail("EXT-X-DATERANGE in a playlist without EXT-X-PROGRAM-DATE-TIME");
    }
    for (duration, uri) in &segments {
        // RFC 8216 4.3.3.1: EXTINF rounded to the nearest integer must not exceed it.
        if duration.round() as u64 > target {
            fail(&format!(
                "{uri}: EXTINF {duration} exceeds TARGETDURATION {target}"
            ));
        }
    }
    MediaPlaylist {
        target_duration: target,
        media_sequence: sequence,
        segments,
        ended,
        date_ranges: text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-DATERANGE:"))
            .map(str::to_owned)
            .collect(),
    }
}

/// One `EXT-X-STREAM-INF` entry of a master playlist.
#[derive(Debug, Clone)]
pub struct MasterVariant {
    pub uri: String,
    pub width: i64,
    pub height: i64,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    /// The URI of the audio rendition its `AUDIO` group names (fMP4 segments), if any.
    pub audio: Option<String>,
}

/// Checks a master playlist (every variant has BANDWIDTH, AVERAGE-BANDWIDTH, RESOLUTION,
/// FRAME-RATE and CODECS; EXT-X-INDEPENDENT-SEGMENTS) and returns its variants.
pub fn check_master_playlist(text: &str) -> Vec<MasterVariant> {
    assert!(
        text.starts_with("#EXTM3U"),
        "master playlist: no #EXTM3U\n{text}"
    );
    assert!(
        text.lines().any(|l| l == "#EXT-X-INDEPENDENT-SEGMENTS"),
        "master playlist: no EXT-X-INDEPENDENT-SEGMENTS\n{text}"
    );
    // RFC 8216 4.3.4.1: each EXT-X-MEDIA has TYPE, GROUP-ID and NAME; an audio one a URI here.
    let groups: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MEDIA:"))
        .map(|attrs| {
            let attrs = attribute_list(attrs);
            for name in ["TYPE", "GROUP-ID", "NAME", "URI"] {
                assert!(attrs.contains_key(name), "EXT-X-MEDIA lacks {name}\n{text}");
            }
            assert_eq!(attrs["TYPE"], "AUDIO", "{text}");
            (attrs["GROUP-ID"].clone(), attrs["URI"].clone())
        })
        .collect();
    let mut variants = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            let attrs = attribute_list(attrs);
            let attr = |name: &str| -> String {
                attrs
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("variant lacks {name}: {line}"))
            };
            let number = |name: &str| -> u64 {
                attr(name)
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} is not a number: {line}"))
            };
            let resolution = attr("RESOLUTION");
            let (w, h) = resolution
                .split_once('x')
                .unwrap_or_else(|| panic!("RESOLUTION is not WxH: {line}"));
            let fps: f64 = attr("FRAME-RATE")
                .parse()
                .unwrap_or_else(|_| panic!("FRAME-RATE is not a number: {line}"));
            assert!(fps > 0.0, "FRAME-RATE {fps}: {line}");
            assert!(
                attr("CODECS").starts_with("avc1.") && attr("CODECS").contains("mp4a.40.2"),
                "CODECS: {line}"
            );
            let variant = MasterVariant {
                uri: lines
                    .next()
                    .expect("a URI after EXT-X-STREAM-INF")
                    .to_owned(),
                width: w.parse().expect("width"),
                height: h.parse().expect("height"),
                bandwidth: number("BANDWIDTH"),
                average_bandwidth: number("AVERAGE-BANDWIDTH"),
                audio: attrs.get("AUDIO").map(|group| {
                    groups
                        .get(group)
                        .unwrap_or_else(|| panic!("no EXT-X-MEDIA for AUDIO {group}: {line}"))
                        .clone()
                }),
            };
            assert!(
                variant.average_bandwidth <= variant.bandwidth,
                "AVERAGE-BANDWIDTH above BANDWIDTH: {line}"
            );
            variants.push(variant);
        }
    }
    assert!(
        !variants.is_empty(),
        "master playlist names no variant\n{text}"
    );
    variants
}

/// An HLS attribute list (`A=1,B="x,y"`) as a map, quotes removed.
fn attribute_list(text: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let (mut item, mut quoted) = (String::new(), false);
    for c in text.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if let Some((k, v)) = item.split_once('=') {
                    out.insert(k.to_owned(), v.to_owned());
                }
                item.clear();
            }
            c => item.push(c),
        }
    }
    out
}

/// Checks what may change between two reads of one live media playlist: TARGETDURATION stays,
/// MEDIA-SEQUENCE never goes back.
pub fn check_playlist_update(prev: &MediaPlaylist, next: &MediaPlaylist, text: &str) {
    assert_eq!(
        prev.target_duration, next.target_duration,
        "TARGETDURATION changed\n{text}"
    );
    assert!(
        next.media_sequence >= prev.media_sequence,
        "MEDIA-SEQUENCE went back\n{text}"
    );
}

/// Reads every playlist of `relay` (master and media) again and again until `stop` is set,
/// checking each read, and across reads: a constant TARGETDURATION and a MEDIA-SEQUENCE that
/// never goes back. Returns how many media playlist reads were checked.
pub async fn watch_playlists(
    daemon: &Daemon,
    relay: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> usize {
    use std::collections::HashMap;
    let mut seen: HashMap<String, MediaPlaylist> = HashMap::new();
    let mut reads = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some((_, master)) = daemon.get_text(&format!("/hls/{relay}/master.m3u8")).await {
            for variant in check_master_playlist(&master) {
                let path = format!("/hls/{relay}/{}", variant.uri);
                let Some((_, text)) = daemon.get_text(&path).await else {
                    assert!(!seen.contains_key(&path), "{path} disappeared");
                    continue;
                };
                let playlist = check_media_playlist(&text);
                if let Some(prev) = seen.get(&path) {
                    check_playlist_update(prev, &playlist, &text);
                }
                seen.insert(path, playlist);
                reads += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reads
}

/// A media playlist's segments: (program date-time, EXTINF, URI).
pub fn dated_segments(text: &str) -> Vec<(SystemTime, f64, String)> {
    let mut out = Vec::new();
    let (mut pdt, mut dur) = (None, 0.0);
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            pdt = parse_rfc3339(t);
        } else if let Some(d) = line.strip_prefix("#EXTINF:") {
            dur = d.split(',').next().unwrap_or("0").parse().unwrap_or(0.0);
        } else if !line.starts_with('#') && !line.is_empty() {
            if let Some(t) = pdt.take() {
                out.push((t, dur, line.to_owned()));
            }
        }
    }
    out
}

/// `2026-11-21T19:41:45.024Z` (what hlssink3 writes) as a SystemTime.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let t = text.trim().trim_end_matches('Z');
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let nanos = format!("{frac:0<9}")[..9].parse::<u64>().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos))
}

/// Per decoded video frame of a file: (width, height, key frame, pts in seconds).
pub fn video_frames(input: &str) -> Vec<(i64, i64, bool, f64)> {
    ffprobe_json(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=width,height,key_frame,pts_time",
        ],
        input,
    )["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| {
                    (
                        f["width"].as_i64().unwrap_or(0),
                        f["height"].as_i64().unwrap_or(0),
                        f["key_frame"].as_i64() == Some(1),
                        f["pts_time"]
                            .as_str()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Saves bytes to a file in `dir` and returns its path as a string for ffprobe.
pub fn save(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

/// Fetches the newest segment over HTTP and asserts it decodes as H.264 1280x720 + AAC.
pub async fn assert_segment_decodes(daemon: &Daemon, relay: &str, playlist: &MediaPlaylist) {
    let (_, uri) = playlist.segments.last().expect("a segment");
    let path = format!("/hls/{relay}/720p/{uri}");
    let bytes = daemon.get_bytes(&path).await.expect("segment served");
    let file = save(daemon.dir.path(), "segment.ts", &bytes);
    assert_h264_aac(&probe(&file), 1280, 720, &path);
    assert!(
        decode_frames(&file, 30) >= 30,
        "{path}: fewer than 30 frames decode"
    );
}

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key: (cert, key) paths.
pub fn make_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_tool("openssl");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
