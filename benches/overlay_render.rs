//! Time per overlay update: render the scorebug and build the composition the pipeline
//! swaps in, as the relay does on each scoreboard change (off the streaming thread).
//!
//! `cargo bench --bench overlay_render` (release profile). Prints the median, p99 and max over
//! many updates, each with a different score, at 720p (the aim: ≤ 5 ms), 1080p and 360p.

use std::time::{Duration, Instant};

use image::{Rgba, RgbaImage};
use scorecast::pipeline::overlay::composition;
use scorecast::render::{render, Logos, Theme};
use scorecast::scores::Scoreboard;

const UPDATES: usize = 300;

fn board(n: usize) -> Scoreboard {
    let json = format!(
        r#"{{"home":{{"name":"Natus Vincere","score":{}}},"away":{{"name":"G2 Esports","score":{}}},
            "period":"Map 2","clock":"{}:{:02}","status":"LIVE"}}"#,
        n % 17,
        n / 17 % 13,
        n / 60 % 90,
        n % 60
    );
    serde_json::from_str(&json).expect("valid scoreboard")
}

/// A 128x128 logo: a filled disc, like a decoded team PNG.
fn logo(colour: [u8; 3]) -> RgbaImage {
    RgbaImage::from_fn(128, 128, |x, y| {
        let (dx, dy) = (x as i32 - 64, y as i32 - 64);
        if dx * dx + dy * dy < 60 * 60 {
            Rgba([colour[0], colour[1], colour[2], 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    gst::init().expect("GStreamer initialises");
    let (home, away) = (logo([200, 30, 30]), logo([30, 60, 200]));
    let theme = Theme::default();
    println!("overlay update = render + composition, {UPDATES} updates each, one per score");
    for (label, width, height, with_logos) in [
        ("720p", 1280, 720, false),
        ("720p + logos", 1280, 720, true),
        ("1080p + logos", 1920, 1080, true),
        ("360p", 640, 360, false),
    ] {
        let logos = || Logos {
            home: with_logos.then_some(&home),
            away: with_logos.then_some(&away),
        };
        // Warm up: the font's glyph outlines and the allocator.
        for n in 0..10 {
            let bug = render(&board(n), logos(), false, &theme, width, height);
            composition(std::slice::from_ref(&bug)).expect("composition");
        }
        let mut times: Vec<Duration> = (0..UPDATES)
            .map(|n| {
                let start = Instant::now();
                let bug = render(&board(n), logos(), n % 7 == 0, &theme, width, height);
                let built = composition(std::slice::from_ref(&bug)).expect("composition");
                let took = start.elapsed();
                std::hint::black_box(built);
                took
            })
            .collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label:>14}: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().expect("times"))
        );
    }
}
