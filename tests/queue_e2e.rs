//! A queue relay with real publishers: three ffmpeg casters, each a solid colour, each with
//! their own caster key, share one broadcast in 8 s turns; nginx-rtmp stands in for YouTube
//! and records what it receives.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require_tool, wait_for, Daemon, Nginx, Process};

/// A caster: a solid `colour` at 320x180 with a tone, keyframe every second.
fn caster(url: &str, colour: &str, tone: u32) -> Process {
    require_tool("ffmpeg");
    Process::spawn(
        "ffmpeg caster",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("color=c={colour}:size=320x180:rate=30"),
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("sine=frequency={tone}:sample_rate=48000"),
            ])
            .args([
                "-t",
                "60",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
            ])
            .args(["-f", "flv", url])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Each frame of `file` at 10 fps, as the name of the colour it is (`R`, `G`, `B`) or `?`.
fn colours(file: &std::path::Path) -> Vec<char> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-vf",
            "fps=10,scale=16:9",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    out.stdout
        .chunks_exact(16 * 9 * 3)
        .map(|frame| {
            // The centre pixel: away from any overlay or slate text.
            let at = (4 * 16 + 8) * 3;
            let (r, g, b) = (frame[at], frame[at + 1], frame[at + 2]);
            match (r > 180, g > 100, b > 180) {
                _ if r > 180 && g < 70 && b < 70 => 'R',
                _ if g > 100 && r < 70 && b < 70 => 'G',
                _ if b > 180 && r < 70 && g < 70 => 'B',
                _ => '?',
            }
        })
        .collect()
}

/// Runs of the same colour: `("R", 80), ("?", 2), ...`.
fn runs(frames: &[char]) -> Vec<(char, usize)> {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for &c in frames {
        match runs.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread")]
async fn three_casters_take_turns_on_one_session_without_the_slate() {
    let nginx = Nginx::start_recording().await;
    let config = format!(
        "[program]\nwidth = 640\nheight = 360\nx264_preset = \"ultrafast\"\n\
         [hls]\nsegment_seconds = 2\n\
         [[relay]]\nid = \"community\"\ningest = {{ stream_key = \"house-key\" }}\n\
         queue = {{ turn = \"8s\", block_kicked = true, block_for = \"1m\" }}\n\
         outputs = [ {{ id = \"youtube\", url = \"{}\" }} ]\n",
        nginx.url("yt-key")
    );
    let daemon = Daemon::start(&config).await;
    daemon
        .wait_output("community", "youtube", "live", Duration::from_secs(30))
        .await;

    let mut keys = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (status, caster) = daemon
            .post(
                "/api/v1/relays/community/casters",
                &format!(r#"{{"name":"{name}"}}"#),
            )
            .await;
        assert_eq!(status, 201, "{caster}");
        let key = caster["stream_key"].as_str().expect("a key").to_owned();
        assert!(key.len() >= 32, "128 bits at least: {key}");
        keys.push(key);
    }
    // The relay's own key is not a caster's.
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    assert_eq!(queue["on_air"], serde_json::Value::Null, "{queue}");

    let mut casters = Vec::new();
    for (key, (colour, tone)) in keys
        .iter()
        .zip([("red", 440), ("green", 660), ("blue", 880)])
    {
        casters.push(caster(&daemon.publish_url(key), colour, tone));
        let joined = casters.len();
        wait_for("the caster to join", Duration::from_secs(20), || async {
            let (_, q) = daemon.get("/api/v1/relays/community/queue").await;
            let n = q["on_air"].is_object() as usize + q["waiting"].as_array().map_or(0, Vec::len);
            (n == joined).then_some(())
        })
        .await;
    }
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    assert_eq!(queue["on_air"]["name"], "alice", "{queue}");
    let waiting: Vec<&str> = queue["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, ["bob", "carol"]);

    // Alice's turn ends: bob, then carol.
    for next in ["bob", "carol"] {
        wait_for("the next turn", Duration::from_secs(20), || async {
            let (_, q) = daemon.get("/api/v1/relays/community/queue").await;
            (q["on_air"]["name"] == next).then_some(())
        })
        .await;
    }
    // A turn that ended blocks its caster: alice's key is refused.
    let (_, queue) = daemon.get("/api/v1/relays/community/queue").await;
    let blocked: Vec<&str> = queue["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(blocked, ["alice", "bob"], "{queue}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(casters);
    let log = daemon.log();
    daemon.stop().await;
    let mut nginx = nginx;
    nginx.stop();

    let recordings = nginx.recordings();
    assert_eq!(
        recordings.len(),
        1,
        "one RTMP session throughout: {recordings:?}"
    );
    let frames = colours(&recordings[0]);
    let runs = runs(&frames);
    eprintln!("colour runs at 10 fps: {runs:?}");
    if std::env::var_os("QUEUE_LOG").is_some() {
        eprintln!("{log}");
    }
    let order: Vec<char> = runs
        .iter()
        .filter(|(c, n)| *c != '?' && *n >= 10)
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(order, ['R', 'G', 'B'], "{runs:?}");
    // Between two casters, nothing but their frames (a frozen last frame is the caster's).
    let first_red = runs.iter().position(|(c, _)| *c == 'R').unwrap();
    let last_blue = runs.iter().rposition(|(c, _)| *c == 'B').unwrap();
    let between: usize = runs[first_red..=last_blue]
        .iter()
        .filter(|(c, _)| *c == '?')
        .map(|(_, n)| n)
        .sum();
    assert!(
        between <= 2,
        "frames neither caster's between turns: {between}: {runs:?}"
    );
}
