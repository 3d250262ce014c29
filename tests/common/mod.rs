//! Test peers: the daemon binary, an nginx-rtmp stand-in for YouTube, ffmpeg and gst-launch
//! publishers, and an RFC 8216 playlist checker. Everything listens on 127.0.0.1 with ports
//! chosen at run time, and every process is killed when its guard drops.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A free TCP port on loopback (bound, read back, released).
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

/// The scorecast daemon, run from the built binary with a config of the test's.
pub struct Daemon {
    pub api: String,
    pub rtmp_port: u16,
    pub dir: tempfile::TempDir,
    pub process: Process,
    pub http: reqwest::Client,
}

/// Settings that keep tests light: ultrafast x264, 2 s segments.
pub const TEST_PROGRAM: &str =
    "[program]\nx264_preset = \"ultrafast\"\n[hls]\nsegment_seconds = 2\n";

/// A config with [`TEST_PROGRAM`] and one relay: `ingest` is the inline table's body (e.g.
/// `stream_key = "k"`), `extra` any further lines of the relay table.
pub fn relay_config(id: &str, ingest: &str, extra: &str) -> String {
    format!("{TEST_PROGRAM}\n[[relay]]\nid = \"{id}\"\ningest = {{ {ingest} }}\n{extra}\n")
}

impl Daemon {
    /// Starts the daemon with `config` (TOML) and waits for `/healthz`.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("scorecast.toml");
        std::fs::write(&config_path, config).expect("write config");
        let api_port = free_port();
        let rtmp_port = free_port();
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
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
                .env("RUST_LOG", "info,scorecast::relay=debug")
                .stdout(log.try_clone().expect("log file"))
                .stderr(log),
        );
        let mut daemon = Self {
            api: format!("http://127.0.0.1:{api_port}"),
            rtmp_port,
            dir,
            process,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        };
        let url = format!("{}/healthz", daemon.api);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = daemon.process.try_wait() {
                panic!("scorecast exited at start ({status}):\n{}", daemon.log());
            }
            if let Ok(r) = daemon.http.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "scorecast did not come up:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn hls_dir(&self, relay: &str) -> PathBuf {
        self.dir.path().join("data/hls").join(relay)
    }

    pub fn publish_url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.rtmp_port)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("GET");
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

    /// POSTs a raw body; returns status and JSON.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
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
}

/// nginx with the RTMP module, standing in for YouTube's ingest: application `live`.
pub struct Nginx {
    pub port: u16,
    _dir: tempfile::TempDir,
    _process: Process,
}

pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

impl Nginx {
    pub async fn start() -> Self {
        require_tool("nginx");
        assert!(
            Path::new(NGINX_RTMP_MODULE).exists(),
            "{NGINX_RTMP_MODULE} is missing: install libnginx-mod-rtmp (scripts/deps)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = format!(
            "load_module {NGINX_RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {dir}/error.log info;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record off; }} }} }}\n",
            dir = dir.path().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let process = Process::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for("nginx to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            port,
            _dir: dir,
            _process: process,
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }
}

/// ffmpeg publishing a 1280x720 30 fps test pattern with a 440 Hz tone, in real time.
pub fn ffmpeg_publisher(url: &str, seconds: u32) -> Process {
    require_tool("ffmpeg");
    Process::spawn(
        "ffmpeg publisher",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", &seconds.to_string()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
            ])
            .args(["-f", "flv", url])
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

/// What ffprobe sees in a file or URL: (codec_type, codec_name, width, height) per stream.
pub fn probe(input: &str) -> Vec<(String, String, i64, i64)> {
    require_tool("ffprobe");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000"])
        .args(["-show_entries", "stream=codec_type,codec_name,width,height"])
        .args(["-of", "json", input])
        .output()
        .expect("run ffprobe");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    json["streams"]
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
    pub segments: Vec<(f64, String)>,
}

/// Parses a media playlist and applies RFC 8216's rules; panics with the playlist on a breach.
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
            segments.push((duration, line.to_owned()));
        }
    }
    let target = target.unwrap_or_else(|| fail("no EXT-X-TARGETDURATION"));
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
    }
}

/// Checks a master playlist and returns its variant URIs.
pub fn check_master_playlist(text: &str) -> Vec<String> {
    assert!(
        text.starts_with("#EXTM3U"),
        "master playlist: no #EXTM3U\n{text}"
    );
    let mut variants = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            for attr in [
                "BANDWIDTH=",
                "AVERAGE-BANDWIDTH=",
                "RESOLUTION=",
                "FRAME-RATE=",
                "CODECS=",
            ] {
                assert!(attrs.contains(attr), "variant lacks {attr}: {line}");
            }
            let uri = lines.next().expect("a URI after EXT-X-STREAM-INF");
            variants.push(uri.to_owned());
        }
    }
    assert!(
        !variants.is_empty(),
        "master playlist names no variant\n{text}"
    );
    variants
}

/// Saves bytes to a file in `dir` and returns its path as a string for ffprobe.
pub fn save(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}
