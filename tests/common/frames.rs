//! Reading the score overlay back out of decoded video: the bug's region of each frame, and
//! which of two renders it looks like.

use image::RgbaImage;
use scorecast::render::{render, Bug, Logos, Theme};
use scorecast::scores::Scoreboard;

/// The scoreboard the overlay tests set: NAVI `home`, G2 0, "Map 1".
pub fn score_json(home: u32) -> String {
    format!(
        r#"{{"home":{{"name":"NAVI","score":{home}}},"away":{{"name":"G2","score":0}},"period":"Map 1"}}"#
    )
}

/// What scorecast draws for [`score_json`]`(home)` on a 1280x720 frame.
pub fn bug(home: u32, stale: bool) -> Bug {
    let board: Scoreboard = serde_json::from_str(&score_json(home)).expect("valid");
    render(
        &board,
        Logos::default(),
        stale,
        &Theme::default(),
        1280,
        720,
    )
}

/// The bug region of every frame of a segment, decoded by ffmpeg, as RGBA images.
pub fn bug_regions(segment: &str, bug: &Bug) -> Vec<RgbaImage> {
    regions(segment, bug, &[])
}

/// The bug region of the next `frames` frames of a live stream (an RTMP URL).
pub fn live_bug_regions(url: &str, bug: &Bug, frames: u32) -> Vec<RgbaImage> {
    regions(url, bug, &["-frames:v", &frames.to_string()])
}

fn regions(input: &str, bug: &Bug, output_args: &[&str]) -> Vec<RgbaImage> {
    let (w, h) = bug.image.dimensions();
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i", input])
        .args(output_args)
        // Crop after converting: on subsampled YUV, ffmpeg rounds odd crop sizes.
        .args([
            "-vf",
            &format!("format=rgba,crop={w}:{h}:{}:{}", bug.x, bug.y),
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "rgba", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{input} does not decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact((w * h * 4) as usize)
        .map(|c| RgbaImage::from_raw(w, h, c.to_vec()).expect("frame"))
        .collect()
}

/// Which of two renders a decoded region is closer to, looking only where they differ.
/// Returns the error against `a` minus the error against `b` (negative: looks like `a`).
pub fn closer(region: &RgbaImage, a: &Bug, b: &Bug) -> f64 {
    let (mut ea, mut eb, mut n) = (0u64, 0u64, 0u64);
    for (x, y, px) in region.enumerate_pixels() {
        let (pa, pb) = (a.image.get_pixel(x, y).0, b.image.get_pixel(x, y).0);
        if !(0..3).any(|c| pa[c].abs_diff(pb[c]) > 64) {
            continue;
        }
        let err = |p: [u8; 4]| {
            (0..3)
                .map(|c| u64::from(px.0[c].abs_diff(p[c])))
                .sum::<u64>()
        };
        ea += err(pa);
        eb += err(pb);
        n += 1;
    }
    assert!(n > 20, "the two renders barely differ ({n} pixels)");
    (ea as f64 - eb as f64) / n as f64
}
