//! Broadcast graphics beyond the scorebug: a lower third, a match clock, a line of text, a
//! series score (maps won, best of N) and an image, each one layer drawn in a [`Style`] at an
//! [`Anchor`] of the frame, faded by an alpha.
//!
//! Pure like the scorebug renderer: the same inputs give the same pixels, for golden images
//! and `scorecast render-overlay`. Sizes follow the scorebug's bar height (6 % of the frame
//! height), so a layer looks the same at 360p and at 1080p. It must not be called on a
//! streaming thread; what to draw when (data, fades, a ticking clock) is decided elsewhere.

use image::{imageops, Rgba, RgbaImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_circle_mut, text_size};
use serde::{Deserialize, Serialize};

use std::sync::LazyLock;

use super::{
    bar_height, fill, fit_name_with, parse_hex_color, text_in_box, Align, Bug, FONT, TEXT_SHARE,
};
use ab_glyph::{FontArc, FontRef, PxScale};

/// The bundled fonts by name, the first the default.
pub const FONTS: [&str; 2] = ["condensed-bold", "sans"];

/// DejaVu Sans (regular); licence in `fonts/`.
static SANS: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../../fonts/DejaVuSans.ttf"))
        .expect("the bundled font parses")
});

/// A bundled font by name.
pub fn bundled_font(name: &str) -> Option<FontArc> {
    match name {
        "condensed-bold" => Some(FontArc::new(FONT.clone())),
        "sans" => Some(FontArc::new(SANS.clone())),
        _ => None,
    }
}

/// A font from a TrueType or OpenType file's bytes.
pub fn font_from_bytes(bytes: Vec<u8>) -> Result<FontArc, String> {
    FontArc::try_from_vec(bytes).map_err(|_| "not a TrueType or OpenType font".to_owned())
}

/// One of nine places in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anchor {
    TopLeft,
    Top,
    TopRight,
    Left,
    Center,
    Right,
    #[default]
    BottomLeft,
    Bottom,
    BottomRight,
}

impl Anchor {
    /// The top-left corner of a `w`x`h` picture at this anchor, `margin` pixels from the
    /// edges it touches.
    pub fn place(self, w: u32, h: u32, margin: u32, frame_w: u32, frame_h: u32) -> (u32, u32) {
        let left = margin;
        let center_x = frame_w.saturating_sub(w) / 2;
        let right = frame_w.saturating_sub(w + margin);
        let top = margin;
        let middle = frame_h.saturating_sub(h) / 2;
        let bottom = frame_h.saturating_sub(h + margin);
        match self {
            Anchor::TopLeft => (left, top),
            Anchor::Top => (center_x, top),
            Anchor::TopRight => (right, top),
            Anchor::Left => (left, middle),
            Anchor::Center => (center_x, middle),
            Anchor::Right => (right, middle),
            Anchor::BottomLeft => (left, bottom),
            Anchor::Bottom => (center_x, bottom),
            Anchor::BottomRight => (right, bottom),
        }
    }
}

/// How graphics look: colours, corner radius, panel opacity and font.
#[derive(Debug, Clone)]
pub struct Style {
    pub background: Rgba<u8>,
    /// The second panel (a lower third's subtitle, the series' label).
    pub panel: Rgba<u8>,
    pub accent: Rgba<u8>,
    pub text: Rgba<u8>,
    pub dim: Rgba<u8>,
    /// Corner radius as a share of the bar height (0 to 0.5).
    pub radius: f32,
    /// Panel opacity, 0 to 1 (text stays opaque).
    pub opacity: f32,
    pub font: FontArc,
}

/// The bundled themes' names, the first the default.
pub const THEMES: [&str; 3] = ["dark", "light", "arena"];

impl Style {
    /// A bundled theme by name.
    pub fn theme(name: &str) -> Option<Style> {
        let rgb = |r, g, b| Rgba([r, g, b, 255]);
        let font = bundled_font(FONTS[0]).expect("the default font");
        Some(match name {
            "dark" => Style {
                background: rgb(16, 18, 26),
                panel: rgb(38, 42, 56),
                accent: rgb(255, 176, 0),
                text: rgb(255, 255, 255),
                dim: rgb(150, 156, 170),
                radius: 0.0,
                opacity: 0.9,
                font: font.clone(),
            },
            "light" => Style {
                background: rgb(245, 246, 250),
                panel: rgb(222, 226, 236),
                accent: rgb(0, 102, 204),
                text: rgb(20, 24, 34),
                dim: rgb(120, 126, 140),
                radius: 0.25,
                opacity: 0.95,
                font: font.clone(),
            },
            "arena" => Style {
                background: rgb(90, 12, 40),
                panel: rgb(30, 6, 18),
                accent: rgb(0, 230, 180),
                text: rgb(255, 255, 255),
                dim: rgb(200, 160, 180),
                radius: 0.5,
                opacity: 0.85,
                font: font.clone(),
            },
            _ => return None,
        })
    }

    /// This style with the colours and numbers `over` names in place of its own.
    pub fn with(mut self, over: &StyleOverride) -> Style {
        let colour = |text: &Option<String>, into: &mut Rgba<u8>| {
            if let Some(c) = text.as_deref().and_then(parse_hex_color) {
                *into = c;
            }
        };
        colour(&over.background, &mut self.background);
        colour(&over.panel, &mut self.panel);
        colour(&over.accent, &mut self.accent);
        colour(&over.text, &mut self.text);
        colour(&over.dim, &mut self.dim);
        if let Some(r) = over.radius {
            self.radius = r.clamp(0.0, 0.5);
        }
        if let Some(o) = over.opacity {
            self.opacity = o.clamp(0.0, 1.0);
        }
        // A bundled font by name; a file is the caller's to load.
        if let Some(font) = over.font.as_deref().and_then(bundled_font) {
            self.font = font;
        }
        self
    }
}

impl Default for Style {
    fn default() -> Self {
        Style::theme(THEMES[0]).expect("the default theme")
    }
}

/// A theme's values changed by hand: `#RRGGBB` colours, `radius` (0 to 0.5 of the bar
/// height) and `opacity` (0 to 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opacity: Option<f32>,
    /// `condensed-bold` (the default), `sans`, or a `.ttf` or `.otf` file in
    /// `<data_dir>/graphics/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub font: Option<String>,
}

impl StyleOverride {
    /// The first field that is not a colour or a number in range, and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [
            ("background", &self.background),
            ("panel", &self.panel),
            ("accent", &self.accent),
            ("text", &self.text),
            ("dim", &self.dim),
        ] {
            if let Some(v) = value {
                if parse_hex_color(v).is_none() {
                    return Err((field, format!("{v:?} is not a #RRGGBB colour")));
                }
            }
        }
        if self.radius.is_some_and(|r| !(0.0..=0.5).contains(&r)) {
            return Err(("radius", "must be 0 to 0.5".to_owned()));
        }
        if self.opacity.is_some_and(|o| !(0.0..=1.0).contains(&o)) {
            return Err(("opacity", "must be 0 to 1".to_owned()));
        }
        if let Some(font) = &self.font {
            let file = font.ends_with(".ttf") || font.ends_with(".otf");
            let bundled = FONTS.contains(&font.as_str());
            if !(bundled || (file && plain_file_name(font))) {
                return Err((
                    "font",
                    format!(
                        "{font:?} is neither a bundled font ({}) nor a .ttf or .otf file name",
                        FONTS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A file name with no path in it, for a file in `<data_dir>/graphics/`: 1 to 128 ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What one layer shows, ready to draw.
#[derive(Debug, Clone, Copy)]
pub enum Graphic<'a> {
    /// A name and a line under it (a caster, a player, a title).
    LowerThird {
        title: &'a str,
        subtitle: Option<&'a str>,
    },
    /// A match clock at `seconds`, `m:ss` (or `h:mm:ss`), with an optional label before it.
    Clock {
        label: Option<&'a str>,
        seconds: u64,
    },
    /// One line of text.
    Text { text: &'a str },
    /// Games or maps won in a best-of-N series.
    Series {
        home: &'a str,
        away: &'a str,
        home_wins: u32,
        away_wins: u32,
        best_of: u32,
    },
    /// A picture (a sponsor's logo), drawn 1.5 bar heights tall.
    Image { image: &'a RgbaImage },
}

/// `seconds` as a match clock shows it: `7:05`, `1:02:03`.
pub fn clock_text(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The most wins a best-of-`best_of` series needs.
fn wins_needed(best_of: u32) -> u32 {
    best_of / 2 + 1
}

/// Renders `graphic` in `style` at `anchor`, `margin` pixels at 720p from the frame's edges,
/// its opacity multiplied by `alpha` (0 to 1: a fade), for a `frame_w`x`frame_h` frame.
pub fn render(
    graphic: &Graphic<'_>,
    style: &Style,
    anchor: Anchor,
    margin: u32,
    alpha: f32,
    frame_w: u32,
    frame_h: u32,
) -> Bug {
    let h = bar_height(frame_h);
    let margin = (margin as f32 * frame_h as f32 / 720.0).round() as u32;
    let room = frame_w.saturating_sub(2 * margin).max(h);
    let mut image = match graphic {
        Graphic::LowerThird { title, subtitle } => lower_third(title, *subtitle, style, h, room),
        Graphic::Clock { label, seconds } => clock(*label, *seconds, style, h),
        Graphic::Text { text } => text_bar(text, style, h, room),
        Graphic::Series {
            home,
            away,
            home_wins,
            away_wins,
            best_of,
        } => series(home, away, *home_wins, *away_wins, *best_of, style, h),
        Graphic::Image { image } => picture(image, h, room),
    };
    fade(&mut image, alpha);
    let (w, ih) = image.dimensions();
    let (x, y) = anchor.place(w, ih, margin, frame_w, frame_h);
    Bug { image, x, y }
}

/// A panel colour at the style's opacity.
fn panel(color: Rgba<u8>, style: &Style) -> Rgba<u8> {
    let mut c = color;
    c[3] = (style.opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
    c
}

/// A `w`x`h` rectangle at (`x`, `y`) with corners rounded to `r` pixels.
fn rounded(img: &mut RgbaImage, x: u32, y: u32, w: u32, h: u32, r: u32, color: Rgba<u8>) {
    let r = r.min(w / 2).min(h / 2);
    if r == 0 {
        fill(img, x, y, w, h, color);
        return;
    }
    fill(img, x + r, y, w - 2 * r, h, color);
    fill(img, x, y + r, r, h - 2 * r, color);
    fill(img, x + w - r, y + r, r, h - 2 * r, color);
    let ri = r as i32 - 1;
    for (cx, cy) in [
        (x + r - 1, y + r - 1),
        (x + w - r, y + r - 1),
        (x + r - 1, y + h - r),
        (x + w - r, y + h - r),
    ] {
        draw_filled_circle_mut(img, (cx as i32, cy as i32), ri, color);
    }
}

fn radius(style: &Style, h: u32) -> u32 {
    (style.radius.clamp(0.0, 0.5) * h as f32).round() as u32
}

fn scale(h: u32, share: f32) -> PxScale {
    PxScale::from(h as f32 * TEXT_SHARE * share)
}

/// Title on a bar with an accent strip, the subtitle on a smaller bar under it.
fn lower_third(title: &str, subtitle: Option<&str>, style: &Style, h: u32, room: u32) -> RgbaImage {
    let strip = (h as f32 * 0.15).round().max(1.0) as u32;
    let pad = (h as f32 * 0.4).round() as u32;
    let title_scale = scale(h, 1.0);
    let sub_h = (h as f32 * 0.75).round() as u32;
    let sub_scale = scale(sub_h, 1.0);
    let max_text = room.saturating_sub(strip + 2 * pad).max(1);
    let title = fit_name_with(&style.font, title, title_scale, max_text);
    let subtitle = subtitle.map(|s| fit_name_with(&style.font, s, sub_scale, max_text));
    let text_w = [
        Some(text_size(title_scale, &style.font, &title).0),
        subtitle
            .as_deref()
            .map(|s| text_size(sub_scale, &style.font, s).0),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let w = (strip + 2 * pad + text_w)
        .max(h * 5)
        .min(room.max(strip + 2 * pad));
    let total_h = h + subtitle.as_ref().map_or(0, |_| sub_h);
    let mut img = RgbaImage::new(w, total_h);
    let r = radius(style, h);
    rounded(
        &mut img,
        0,
        0,
        w,
        total_h,
        r,
        panel(style.background, style),
    );
    if subtitle.is_some() {
        // The subtitle's panel: square at the top, rounded at the bottom like the whole.
        rounded(&mut img, 0, h, w, sub_h, r, panel(style.panel, style));
        fill(&mut img, 0, h, w, sub_h / 2, panel(style.panel, style));
    }
    fill(&mut img, r / 2, r / 2, strip, total_h - r, style.accent);
    text_in_box(
        &style.font,
        &mut img,
        &title,
        title_scale,
        strip + pad,
        h,
        style.text,
        Align::Left,
        max_text,
    );
    if let Some(subtitle) = subtitle {
        let mut sub = RgbaImage::new(w, sub_h);
        text_in_box(
            &style.font,
            &mut sub,
            &subtitle,
            sub_scale,
            strip + pad,
            sub_h,
            style.dim,
            Align::Left,
            max_text,
        );
        imageops::overlay(&mut img, &sub, 0, i64::from(h));
    }
    img
}

/// `label  m:ss` in a box, the time in tabular width so it does not jitter as it ticks.
fn clock(label: Option<&str>, seconds: u64, style: &Style, h: u32) -> RgbaImage {
    let pad = (h as f32 * 0.35).round() as u32;
    let time_scale = scale(h, 1.0);
    let text = clock_text(seconds);
    // Every digit drawn in the widest digit's box: the width stays as the clock ticks.
    let digit_w = ('0'..='9')
        .map(|d| text_size(time_scale, &style.font, &d.to_string()).0)
        .max()
        .unwrap_or(1);
    let colon_w = text_size(time_scale, &style.font, ":").0;
    let time_w: u32 = text
        .chars()
        .map(|c| if c == ':' { colon_w } else { digit_w })
        .sum();
    let label_scale = scale(h, 0.75);
    let label_w = label.map_or(0, |l| text_size(label_scale, &style.font, l).0 + pad);
    let w = label_w + time_w + 2 * pad;
    let mut img = RgbaImage::new(w, h);
    rounded(
        &mut img,
        0,
        0,
        w,
        h,
        radius(style, h),
        panel(style.background, style),
    );
    if let Some(label) = label {
        text_in_box(
            &style.font,
            &mut img,
            label,
            label_scale,
            pad,
            h,
            style.accent,
            Align::Left,
            label_w,
        );
    }
    let mut x = pad + label_w;
    for c in text.chars() {
        let box_w = if c == ':' { colon_w } else { digit_w };
        text_in_box(
            &style.font,
            &mut img,
            &c.to_string(),
            time_scale,
            x,
            h,
            style.text,
            Align::Center,
            box_w,
        );
        x += box_w;
    }
    img
}

/// One line of text on a bar, cut to the frame.
fn text_bar(text: &str, style: &Style, h: u32, room: u32) -> RgbaImage {
    let pad = (h as f32 * 0.35).round() as u32;
    let s = scale(h, 0.85);
    let text = fit_name_with(&style.font, text, s, room.saturating_sub(2 * pad).max(1));
    let w = text_size(s, &style.font, &text).0 + 2 * pad;
    let mut img = RgbaImage::new(w, h);
    rounded(
        &mut img,
        0,
        0,
        w,
        h,
        radius(style, h),
        panel(style.background, style),
    );
    text_in_box(
        &style.font,
        &mut img,
        &text,
        s,
        pad,
        h,
        style.text,
        Align::Left,
        w - 2 * pad,
    );
    img
}

/// `HOME ●●○  BO5  ○●○ AWAY`: a pip per win needed, filled for each won.
#[allow(clippy::too_many_arguments)]
fn series(
    home: &str,
    away: &str,
    home_wins: u32,
    away_wins: u32,
    best_of: u32,
    style: &Style,
    h: u32,
) -> RgbaImage {
    let pad = (h as f32 * 0.35).round() as u32;
    let s = scale(h, 0.85);
    let name_w = h * 3;
    let pip = (h as f32 * 0.18).round().max(2.0) as u32;
    let needed = wins_needed(best_of.max(1));
    let pips_w = needed * (2 * pip + pip);
    let label = format!("BO{best_of}");
    let label_scale = scale(h, 0.7);
    let label_w = text_size(label_scale, &style.font, &label).0 + 2 * pad;
    let w = 2 * (name_w + pips_w + pad) + label_w;
    let mut img = RgbaImage::new(w, h);
    rounded(
        &mut img,
        0,
        0,
        w,
        h,
        radius(style, h),
        panel(style.background, style),
    );
    let home = fit_name_with(&style.font, home, s, name_w - pad);
    let away = fit_name_with(&style.font, away, s, name_w - pad);
    text_in_box(
        &style.font,
        &mut img,
        &home,
        s,
        pad,
        h,
        style.text,
        Align::Left,
        name_w - pad,
    );
    let cy = (h / 2) as i32;
    let draw_pips = |img: &mut RgbaImage, x0: u32, won: u32, from_right: bool| {
        for i in 0..needed {
            let cx = (x0 + i * 3 * pip + pip + pip / 2) as i32;
            let filled = if from_right {
                needed - i <= won
            } else {
                i < won
            };
            if filled {
                draw_filled_circle_mut(img, (cx, cy), pip as i32, style.accent);
            } else {
                draw_hollow_circle_mut(img, (cx, cy), pip as i32, style.dim);
            }
        }
    };
    let home_pips = name_w + pad;
    draw_pips(&mut img, home_pips, home_wins.min(needed), false);
    let label_x = home_pips + pips_w;
    fill(&mut img, label_x, 0, label_w, h, panel(style.panel, style));
    text_in_box(
        &style.font,
        &mut img,
        &label,
        label_scale,
        label_x,
        h,
        style.dim,
        Align::Center,
        label_w,
    );
    let away_pips = label_x + label_w;
    draw_pips(&mut img, away_pips, away_wins.min(needed), true);
    text_in_box(
        &style.font,
        &mut img,
        &away,
        s,
        away_pips + pips_w,
        h,
        style.text,
        Align::Right,
        name_w,
    );
    img
}

/// A picture 1.5 bar heights tall, keeping its aspect ratio, no wider than `room`.
fn picture(image: &RgbaImage, h: u32, room: u32) -> RgbaImage {
    let (w0, h0) = image.dimensions();
    if w0 == 0 || h0 == 0 {
        return RgbaImage::new(1, 1);
    }
    let target_h = h * 3 / 2;
    let mut w = (u64::from(w0) * u64::from(target_h) / u64::from(h0)) as u32;
    let mut th = target_h;
    if w > room {
        th = (u64::from(th) * u64::from(room) / u64::from(w)) as u32;
        w = room;
    }
    imageops::resize(image, w.max(1), th.max(1), imageops::FilterType::Triangle)
}

/// Multiplies every pixel's alpha by `alpha` (0 to 1).
fn fade(img: &mut RgbaImage, alpha: f32) {
    let alpha = alpha.clamp(0.0, 1.0);
    if alpha >= 1.0 {
        return;
    }
    for p in img.pixels_mut() {
        p[3] = (f32::from(p[3]) * alpha).round() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_as_match_clocks() {
        assert_eq!(clock_text(0), "0:00");
        assert_eq!(clock_text(425), "7:05");
        assert_eq!(clock_text(3723), "1:02:03");
    }

    #[test]
    fn a_ticking_clock_keeps_its_width() {
        let style = Style::default();
        let render = |s| {
            render(
                &Graphic::Clock {
                    label: Some("MAP 2"),
                    seconds: s,
                },
                &style,
                Anchor::TopRight,
                24,
                1.0,
                1280,
                720,
            )
        };
        let (a, b) = (render(599), render(111));
        assert_eq!(a.image.dimensions(), b.image.dimensions());
        assert_eq!((a.x, a.y), (b.x, b.y));
    }

    #[test]
    fn anchors_place_a_picture_against_their_edges() {
        let at = |a: Anchor| a.place(100, 40, 24, 1280, 720);
        assert_eq!(at(Anchor::TopLeft), (24, 24));
        assert_eq!(at(Anchor::Bottom), (590, 656));
        assert_eq!(at(Anchor::Right), (1156, 340));
        assert_eq!(at(Anchor::Center), (590, 340));
    }

    #[test]
    fn a_fade_scales_the_alpha_and_nothing_else() {
        let style = Style::default();
        let graphic = Graphic::Text { text: "GG WP" };
        let full = render(&graphic, &style, Anchor::Bottom, 24, 1.0, 1280, 720);
        let half = render(&graphic, &style, Anchor::Bottom, 24, 0.5, 1280, 720);
        let (a, b) = (full.image.get_pixel(2, 2), half.image.get_pixel(2, 2));
        assert_eq!(a.0[..3], b.0[..3]);
        assert_eq!(b[3], (f32::from(a[3]) * 0.5).round() as u8);
    }

    #[test]
    fn overrides_change_a_theme_and_are_checked() {
        let over = StyleOverride {
            accent: Some("#ff0000".to_owned()),
            opacity: Some(0.5),
            ..Default::default()
        };
        let style = Style::default().with(&over);
        assert_eq!(style.accent, Rgba([255, 0, 0, 255]));
        assert_eq!(style.opacity, 0.5);
        let bad = StyleOverride {
            text: Some("red".to_owned()),
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "text");
        assert!(THEMES.iter().all(|t| Style::theme(t).is_some()));
    }
}
