//! The scorebug renderer: [`Scoreboard`] + [`Theme`] → an RGBA image and where it goes.
//!
//! Pure: no I/O, no GStreamer, no clock. The same inputs give the same pixels, which is what
//! the golden-image tests and `scorecast render-overlay` rely on. It must not be called on a
//! streaming thread; the relay renders on a blocking task and hands the pipeline the result.
//!
//! Layout, in units of the bar height `H` (6 % of the frame height, at least 24 px):
//! `[strip][logo][ home name ][ 3 ][ 1 ][ away name ][logo][strip]  [ period · clock · status ]`
//! A stale scoreboard dims the info box and adds an amber dot at its corner.

pub mod graphics;

use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{imageops, Rgba, RgbaImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;
use serde::{Deserialize, Serialize};

use crate::scores::{Scoreboard, Team};

/// The bundled font (DejaVu Sans Condensed Bold; licence in `fonts/`).
static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../../fonts/DejaVuSansCondensed-Bold.ttf"))
        .expect("the bundled font parses")
});

/// Bar height as a share of the frame height, and its floor for small frames.
const BAR_SHARE: f32 = 0.06;
const MIN_BAR_PX: u32 = 24;
/// Text size as a share of the bar height.
const TEXT_SHARE: f32 = 0.62;
/// A logo's side as a share of the bar height.
const LOGO_SHARE: f32 = 0.8;
const DEFAULT_MARGIN_720P: u32 = 24;

const BACKGROUND: Rgba<u8> = Rgba([16, 18, 26, 230]);
const SCORE_BACKGROUND: Rgba<u8> = Rgba([38, 42, 56, 240]);
const INFO_BACKGROUND: Rgba<u8> = Rgba([28, 31, 42, 230]);
const TEXT: Rgba<u8> = Rgba([255, 255, 255, 255]);
const DIM_TEXT: Rgba<u8> = Rgba([170, 174, 186, 255]);
const STALE: Rgba<u8> = Rgba([255, 176, 0, 255]);
const DEFAULT_STRIP: Rgba<u8> = Rgba([120, 126, 140, 255]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corner {
    #[default]
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

/// How the scorebug looks and where it sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Theme {
    pub position: Corner,
    /// Distance from the frame's edges, in pixels at 720p (scaled with the frame).
    pub margin: u32,
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            position: Corner::TopLeft,
            margin: DEFAULT_MARGIN_720P,
        }
    }
}

/// The bar height for a `frame_height` frame.
fn bar_height(frame_height: u32) -> u32 {
    ((frame_height as f32 * BAR_SHARE).round() as u32).max(MIN_BAR_PX)
}

/// The side of the square a logo is drawn in on a `frame_height` frame. A logo already this
/// size is drawn as it is; any other size is scaled on every render, so callers that redraw
/// (the relay's scorebug) scale their logos to it once.
pub fn logo_size(frame_height: u32) -> u32 {
    (bar_height(frame_height) as f32 * LOGO_SHARE) as u32
}

/// Decoded team logos, when the scores data names them and they loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logos<'a> {
    pub home: Option<&'a RgbaImage>,
    pub away: Option<&'a RgbaImage>,
}

/// A rendered scorebug and its top-left corner in the frame.
#[derive(Debug, Clone)]
pub struct Bug {
    pub image: RgbaImage,
    pub x: u32,
    pub y: u32,
}

/// Renders the scorebug for a `frame_width`x`frame_height` frame.
pub fn render(
    board: &Scoreboard,
    logos: Logos<'_>,
    stale: bool,
    theme: &Theme,
    frame_width: u32,
    frame_height: u32,
) -> Bug {
    let h = bar_height(frame_height);
    let scale = PxScale::from(h as f32 * TEXT_SHARE);
    let small = PxScale::from(h as f32 * TEXT_SHARE * 0.8);
    let unit = |share: f32| ((h as f32 * share).round() as u32).max(1);
    let strip = unit(0.12);
    let name_w = unit(3.0);
    let score_w = unit(1.25);
    let pad = unit(0.25);
    let gap = unit(0.2);

    let info_text = [&board.period, &board.clock, &board.status]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" · ");
    let info_w = if info_text.is_empty() {
        0
    } else {
        (text_size(small, &*FONT, &info_text).0 + 2 * pad).max(unit(1.5))
    };
    let logo_w = |logo: Option<&RgbaImage>| if logo.is_some() { h } else { 0 };
    let teams_w = 2 * (strip + name_w + score_w) + logo_w(logos.home) + logo_w(logos.away);
    let width = teams_w + if info_w > 0 { gap + info_w } else { 0 };
    let mut img = RgbaImage::from_pixel(width, h, Rgba([0, 0, 0, 0]));

    // Home, left to right: strip, logo, name, score.
    let mut x = 0;
    fill(&mut img, x, 0, teams_w, h, BACKGROUND);
    fill(&mut img, x, 0, strip, h, team_color(&board.home));
    x += strip;
    x += draw_logo(&mut img, logos.home, x, h);
    text_in_box(
        &*FONT,
        &mut img,
        &fit_name(&board.home.name, scale, name_w - 2 * pad),
        scale,
        x + pad,
        h,
        TEXT,
        Align::Left,
        name_w - 2 * pad,
    );
    x += name_w;
    fill(&mut img, x, 0, 2 * score_w, h, SCORE_BACKGROUND);
    for score in [&board.home.score, &board.away.score] {
        text_in_box(
            &*FONT,
            &mut img,
            score,
            scale,
            x,
            h,
            TEXT,
            Align::Center,
            score_w,
        );
        x += score_w;
    }
    // Away, mirrored: name, logo, strip.
    text_in_box(
        &*FONT,
        &mut img,
        &fit_name(&board.away.name, scale, name_w - 2 * pad),
        scale,
        x + pad,
        h,
        TEXT,
        Align::Right,
        name_w - 2 * pad,
    );
    x += name_w;
    x += draw_logo(&mut img, logos.away, x, h);
    fill(&mut img, x, 0, strip, h, team_color(&board.away));
    x += strip;

    if info_w > 0 {
        x += gap;
        fill(&mut img, x, 0, info_w, h, INFO_BACKGROUND);
        let color = if stale { DIM_TEXT } else { TEXT };
        text_in_box(
            &*FONT,
            &mut img,
            &info_text,
            small,
            x,
            h,
            color,
            Align::Center,
            info_w,
        );
    }
    if stale {
        // A discreet amber dot at the bug's top-right corner.
        let r = unit(0.1) as i32;
        draw_filled_circle_mut(&mut img, (width as i32 - 2 * r, 2 * r), r, STALE);
    }

    let margin = (theme.margin as f32 * frame_height as f32 / 720.0).round() as u32;
    let (x, y) = match theme.position {
        Corner::TopLeft => (margin, margin),
        Corner::TopRight => (frame_width.saturating_sub(width + margin), margin),
        Corner::BottomLeft => (margin, frame_height.saturating_sub(h + margin)),
        Corner::BottomRight => (
            frame_width.saturating_sub(width + margin),
            frame_height.saturating_sub(h + margin),
        ),
    };
    Bug { image: img, x, y }
}

/// Renders a queue relay's line (who is on air, their time left, who is next) for a
/// `frame_width`x`frame_height` frame: a bar as tall as the scorebug's, in the corner on the
/// scorebug's side and the opposite edge (a scorebug at the top puts the line at the bottom).
pub fn queue_line(text: &str, theme: &Theme, frame_width: u32, frame_height: u32) -> Bug {
    let h = bar_height(frame_height);
    let scale = PxScale::from(h as f32 * TEXT_SHARE * 0.8);
    let pad = ((h as f32 * 0.35).round() as u32).max(1);
    let margin = (theme.margin as f32 * frame_height as f32 / 720.0).round() as u32;
    let max_text = frame_width.saturating_sub(2 * margin + 2 * pad).max(1);
    let text = fit_name(text, scale, max_text);
    let width = text_size(scale, &*FONT, &text).0 + 2 * pad;
    let mut img = RgbaImage::from_pixel(width, h, BACKGROUND);
    text_in_box(
        &*FONT,
        &mut img,
        &text,
        scale,
        pad,
        h,
        TEXT,
        Align::Left,
        width - 2 * pad,
    );
    let left = matches!(theme.position, Corner::TopLeft | Corner::BottomLeft);
    let top = matches!(theme.position, Corner::BottomLeft | Corner::BottomRight);
    let x = if left {
        margin
    } else {
        frame_width.saturating_sub(width + margin)
    };
    let y = if top {
        margin
    } else {
        frame_height.saturating_sub(h + margin)
    };
    Bug { image: img, x, y }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

fn fill(img: &mut RgbaImage, x: u32, y: u32, w: u32, h: u32, color: Rgba<u8>) {
    if w > 0 && h > 0 {
        draw_filled_rect_mut(img, Rect::at(x as i32, y as i32).of_size(w, h), color);
    }
}

/// What the slate says: before the first publisher, and after one is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlateMessage {
    StartingSoon,
    BeRightBack,
}

impl SlateMessage {
    pub fn text(self) -> &'static str {
        match self {
            SlateMessage::StartingSoon => "STARTING SOON",
            SlateMessage::BeRightBack => "WE'LL BE RIGHT BACK",
        }
    }
}

/// Text height on the slate, as a share of the frame height.
const SLATE_TEXT_SHARE: f32 = 0.085;
const SLATE_ACCENT: Rgba<u8> = Rgba([255, 176, 0, 255]);

/// The slate: `background` stretched to `width`x`height`, the message centred on it and an
/// accent rule under it. Opaque, whatever the background's alpha.
pub fn slate(background: &RgbaImage, width: u32, height: u32, message: SlateMessage) -> RgbaImage {
    let mut img = imageops::resize(background, width, height, imageops::FilterType::Triangle);
    let text = message.text();
    let mut scale = PxScale::from((height as f32 * SLATE_TEXT_SHARE).max(8.0));
    let (mut w, _) = text_size(scale, &*FONT, text);
    // Narrow frames: shrink the text to 90 % of the width.
    let room = width * 9 / 10;
    if w > room {
        scale = PxScale::from(scale.y * room as f32 / w as f32);
        w = text_size(scale, &*FONT, text).0;
    }
    let scaled = FONT.as_scaled(scale);
    let glyph_h = scaled.ascent() - scaled.descent();
    let y = ((height as f32 - glyph_h) / 2.0).round() as i32;
    draw_text_mut(
        &mut img,
        TEXT,
        ((width - w) / 2) as i32,
        y,
        scale,
        &*FONT,
        text,
    );
    let rule_h = (height / 120).max(2);
    let rule_w = w / 3;
    let rule_y = y + glyph_h.round() as i32 + rule_h as i32 * 3;
    draw_filled_rect_mut(
        &mut img,
        Rect::at(((width - rule_w) / 2) as i32, rule_y).of_size(rule_w.max(1), rule_h),
        SLATE_ACCENT,
    );
    // Anti-aliased text blends alpha too: the program has none.
    for pixel in img.pixels_mut() {
        pixel[3] = 255;
    }
    img
}

/// Draws `text` in `font`, vertically centred in a bar of height `h`, in a box `box_w` wide at
/// `x`.
#[allow(clippy::too_many_arguments)]
fn text_in_box(
    font: &impl Font,
    img: &mut RgbaImage,
    text: &str,
    scale: PxScale,
    x: u32,
    h: u32,
    color: Rgba<u8>,
    align: Align,
    box_w: u32,
) {
    let (w, _) = text_size(scale, font, text);
    let scaled = font.as_scaled(scale);
    let glyph_h = scaled.ascent() - scaled.descent();
    let y = ((h as f32 - glyph_h) / 2.0).round() as i32;
    let x = match align {
        Align::Left => x,
        Align::Center => x + box_w.saturating_sub(w) / 2,
        Align::Right => x + box_w.saturating_sub(w),
    };
    draw_text_mut(img, color, x as i32, y, scale, font, text);
}

/// Draws a logo scaled into an `h`x`h` square at `x`; returns the width used. A logo that
/// is already [`logo_size`] is not scaled again.
fn draw_logo(img: &mut RgbaImage, logo: Option<&RgbaImage>, x: u32, h: u32) -> u32 {
    let Some(logo) = logo else { return 0 };
    let inner = (h as f32 * LOGO_SHARE) as u32;
    let offset = i64::from((h - inner) / 2);
    if logo.dimensions() == (inner, inner) {
        imageops::overlay(img, logo, i64::from(x) + offset, offset);
    } else {
        let resized = scale_logo(logo, inner);
        imageops::overlay(img, &resized, i64::from(x) + offset, offset);
    }
    h
}

/// A logo scaled to a `side`x`side` square, as the scorebug draws it.
pub fn scale_logo(logo: &RgbaImage, side: u32) -> RgbaImage {
    imageops::resize(logo, side, side, imageops::FilterType::Triangle)
}

/// The team's colour (`#RRGGBB`), or a neutral grey.
fn team_color(team: &Team) -> Rgba<u8> {
    team.color
        .as_deref()
        .and_then(parse_hex_color)
        .unwrap_or(DEFAULT_STRIP)
}

pub fn parse_hex_color(s: &str) -> Option<Rgba<u8>> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some(Rgba([byte(0)?, byte(2)?, byte(4)?, 255]))
}

/// The team name as it fits: in full, else abbreviated, else cut.
pub fn fit_name(name: &str, scale: PxScale, max_width: u32) -> String {
    fit_name_with(&*FONT, name, scale, max_width)
}

/// [`fit_name`] in `font`.
fn fit_name_with(font: &impl Font, name: &str, scale: PxScale, max_width: u32) -> String {
    let fits = |s: &str| text_size(scale, font, s).0 <= max_width;
    if fits(name) {
        return name.to_owned();
    }
    let short = abbreviate(name);
    if fits(&short) {
        return short;
    }
    let mut cut: String = short.clone();
    while cut.chars().count() > 1 && !fits(&cut) {
        cut.pop();
    }
    cut
}

/// "Team Liquid" → "TL", "Fnatic" → "FNA", "Paris Saint-Germain" → "PSG".
pub fn abbreviate(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() >= 2 {
        words
            .iter()
            .filter_map(|w| w.chars().next())
            .take(4)
            .collect::<String>()
            .to_uppercase()
    } else {
        name.chars().take(3).collect::<String>().to_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_line_sits_on_the_scorebugs_side_at_the_other_edge() {
        let text = "ON AIR alice · 12:34 left · NEXT bob";
        let top_left = queue_line(text, &Theme::default(), 1280, 720);
        let (w, h) = top_left.image.dimensions();
        assert_eq!((top_left.x, top_left.y + h + 24), (24, 720));
        assert!(w > 200 && w < 1280 - 48, "{w}");
        let white = top_left.image.pixels().filter(|p| p.0 == [255; 4]).count();
        assert!(white > 100, "letters drawn: {white}");
        let theme = Theme {
            position: Corner::BottomRight,
            margin: 24,
        };
        let bottom_right = queue_line(text, &theme, 1280, 720);
        assert_eq!(
            (
                bottom_right.x + bottom_right.image.width() + 24,
                bottom_right.y
            ),
            (1280, 24)
        );
        // Too long for the frame: cut to fit.
        let long = queue_line(&"x".repeat(500), &Theme::default(), 640, 360);
        assert!(long.image.width() <= 640 - 24, "{}", long.image.width());
    }

    #[test]
    fn the_slate_fills_the_frame_and_says_its_message() {
        let background = RgbaImage::from_pixel(16, 9, Rgba([20, 20, 40, 0]));
        let soon = slate(&background, 640, 360, SlateMessage::StartingSoon);
        let back = slate(&background, 640, 360, SlateMessage::BeRightBack);
        assert_eq!(soon.dimensions(), (640, 360));
        assert!(soon.pixels().all(|p| p[3] == 255), "the slate is opaque");
        // White text in the middle band, none in the corners.
        let white = |img: &RgbaImage, y0: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (0..640).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0[..3] == [255, 255, 255])
                .count()
        };
        assert!(white(&soon, 150, 210) > 500);
        assert_eq!(white(&soon, 0, 60), 0);
        assert_ne!(soon, back, "the two messages look different");
        // A narrow frame still fits the longer message.
        let narrow = slate(&background, 240, 360, SlateMessage::BeRightBack);
        assert_eq!(narrow.dimensions(), (240, 360));
    }

    #[test]
    fn abbreviations() {
        assert_eq!(abbreviate("Team Liquid"), "TL");
        assert_eq!(abbreviate("Fnatic"), "FNA");
        assert_eq!(abbreviate("Paris Saint-Germain"), "PSG");
    }

    #[test]
    fn long_names_are_shortened_to_fit() {
        let scale = PxScale::from(26.0);
        assert_eq!(fit_name("G2", scale, 120), "G2");
        assert_eq!(
            fit_name("Borussia Mönchengladbach Esports Club", scale, 120),
            "BMEC"
        );
    }

    #[test]
    fn a_logo_scaled_once_draws_the_same_pixels() {
        let board: Scoreboard = serde_json::from_str(
            r#"{"home":{"name":"NAVI","score":1},"away":{"name":"G2","score":0}}"#,
        )
        .expect("valid");
        let logo = RgbaImage::from_fn(300, 200, |x, y| Rgba([(x % 256) as u8, y as u8, 90, 255]));
        let side = logo_size(720);
        assert_eq!(side, 34, "6 % of 720 px is a 43 px bar; 80 % of it");
        let scaled = scale_logo(&logo, side);
        let draw = |l: &RgbaImage| {
            let logos = Logos {
                home: Some(l),
                away: None,
            };
            render(&board, logos, false, &Theme::default(), 1280, 720).image
        };
        assert_eq!(draw(&logo), draw(&scaled));
    }

    #[test]
    fn hex_colors() {
        assert_eq!(parse_hex_color("#ff0080"), Some(Rgba([255, 0, 128, 255])));
        assert_eq!(parse_hex_color("red"), None);
    }
}
