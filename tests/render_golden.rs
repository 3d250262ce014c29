//! Golden images for the scorebug renderer. Each case renders a scoreboard and compares it
//! with `tests/golden/<case>.png` within a tolerance (fonts rasterise the same on one build,
//! but a different ab_glyph may move an edge pixel). `UPDATE_GOLDEN=1` rewrites the files.

use image::{Rgba, RgbaImage};
use scorecast::render::{render, Corner, Logos, Theme};
use scorecast::scores::Scoreboard;

fn board(json: &str) -> Scoreboard {
    serde_json::from_str(json).expect("valid scoreboard")
}

/// A stand-in team logo: a filled disc.
fn logo(color: [u8; 3]) -> RgbaImage {
    RgbaImage::from_fn(64, 64, |x, y| {
        let (dx, dy) = (x as i32 - 32, y as i32 - 32);
        if dx * dx + dy * dy < 30 * 30 {
            Rgba([color[0], color[1], color[2], 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
}

/// Fails when more than 0.5 % of pixels differ by more than 48 in any channel.
fn compare(case: &str, actual: &RgbaImage) {
    let path = format!("{}/tests/golden/{case}.png", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        actual.save(&path).expect("write golden");
        return;
    }
    let expected = image::open(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"))
        .to_rgba8();
    assert_eq!(
        expected.dimensions(),
        actual.dimensions(),
        "{case}: size changed"
    );
    let differing = expected
        .pixels()
        .zip(actual.pixels())
        .filter(|(a, b)| a.0.iter().zip(b.0.iter()).any(|(x, y)| x.abs_diff(*y) > 48))
        .count();
    let share = differing as f64 / (expected.width() * expected.height()) as f64;
    if share > 0.005 {
        let out = std::env::temp_dir().join(format!("scorecast-{case}-actual.png"));
        let _ = actual.save(&out);
        panic!(
            "{case}: {:.2} % of pixels differ from {path}; actual saved to {}",
            share * 100.0,
            out.display()
        );
    }
}

#[test]
fn basic_scoreboard() {
    let b = board(
        r##"{"home":{"name":"NAVI","score":1,"color":"#f5d100"},"away":{"name":"G2","score":0,"color":"#e3001b"},"period":"Map 2","clock":"12:41"}"##,
    );
    let bug = render(&b, Logos::default(), false, &Theme::default(), 1280, 720);
    assert_eq!((bug.x, bug.y), (24, 24));
    compare("basic", &bug.image);
}

#[test]
fn long_names_and_two_digit_scores() {
    let b = board(
        r##"{"home":{"name":"Borussia Mönchengladbach Esports","score":13},"away":{"name":"Paris Saint-Germain Esports","score":"11"},"period":"OT","status":"LIVE"}"##,
    );
    let bug = render(&b, Logos::default(), false, &Theme::default(), 1280, 720);
    compare("long-names", &bug.image);
}

#[test]
fn logos_and_a_missing_logo() {
    let b = board(
        r#"{"home":{"name":"Home","score":2,"logo":"http://x/h.png"},"away":{"name":"Away","score":1,"logo":"http://x/a.png"},"clock":"67'"}"#,
    );
    let home = logo([30, 144, 255]);
    // The away logo did not load: its place closes up.
    let logos = Logos {
        home: Some(&home),
        away: None,
    };
    let theme = Theme {
        position: Corner::BottomRight,
        margin: 24,
    };
    let bug = render(&b, logos, false, &theme, 1280, 720);
    assert_eq!(bug.x + bug.image.width() + 24, 1280);
    assert_eq!(bug.y + bug.image.height() + 24, 720);
    compare("logos", &bug.image);
}

#[test]
fn stale_marker() {
    let b = board(
        r#"{"home":{"name":"NAVI","score":1},"away":{"name":"G2","score":0},"period":"Map 2","clock":"12:41"}"#,
    );
    let fresh = render(&b, Logos::default(), false, &Theme::default(), 1280, 720);
    let stale = render(&b, Logos::default(), true, &Theme::default(), 1280, 720);
    assert_eq!(fresh.image.dimensions(), stale.image.dimensions());
    assert_ne!(
        fresh.image, stale.image,
        "the stale marker changes the picture"
    );
    compare("stale", &stale.image);
}

#[test]
fn legible_at_360p() {
    let b = board(
        r#"{"home":{"name":"NAVI","score":1},"away":{"name":"G2","score":0},"period":"Map 2"}"#,
    );
    let bug = render(&b, Logos::default(), false, &Theme::default(), 640, 360);
    assert!(bug.image.height() >= 24, "the bar keeps a legible height");
    compare("360p", &bug.image);
}

/// Every graphics layer kind in every bundled theme at 360p, 720p and 1080p:
/// `tests/golden/graphics/<kind>-<theme>-<height>p.png`.
#[test]
fn graphics_layers_in_every_theme_and_size() {
    use scorecast::render::graphics::{render, Anchor, Graphic, Style, THEMES};
    let sponsor = logo([0, 160, 255]);
    let kinds = [
        (
            "lower-third",
            Graphic::LowerThird {
                title: "Anders Blume",
                subtitle: Some("Play-by-play · @OnFireAnders"),
            },
        ),
        (
            "clock",
            Graphic::Clock {
                label: Some("ROUND 14"),
                seconds: 1_394,
            },
        ),
        (
            "text",
            Graphic::Text {
                text: "Next: Team Liquid vs FaZe Clan — 18:30 CET",
            },
        ),
        (
            "series",
            Graphic::Series {
                home: "NAVI",
                away: "G2",
                home_wins: 2,
                away_wins: 1,
                best_of: 5,
            },
        ),
        ("image", Graphic::Image { image: &sponsor }),
    ];
    for (kind, graphic) in &kinds {
        // A picture is drawn as it is, in any theme.
        let themes = if *kind == "image" {
            &THEMES[..1]
        } else {
            &THEMES[..]
        };
        for theme in themes {
            let style = Style::theme(theme).expect("a bundled theme");
            for (width, height) in [(640, 360), (1280, 720), (1920, 1080)] {
                let bug = render(graphic, &style, Anchor::BottomLeft, 24, 1.0, width, height);
                compare(&format!("graphics/{kind}-{theme}-{height}p"), &bug.image);
            }
        }
    }
}
