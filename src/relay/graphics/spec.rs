//! The graphics part of a relay's spec (`"graphics": {"theme", "style", "layers", ...}`): its
//! types, the checks that name the bad field, a layer kind's data fields, and how a value
//! bound from JSON is made to fit one.
//!
//! Owns what a valid spec is. It must not hold the layers' running state ([`super`] does).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::render::graphics::{
    font_from_bytes, plain_file_name, Anchor, Style, StyleOverride, FONTS, THEMES,
};

/// Layers a relay may have.
pub const MAX_LAYERS: usize = 16;
/// Frames a layer takes to fade in or out unless it says.
pub const DEFAULT_FADE_FRAMES: u32 = 10;
/// The longest fade.
const MAX_FADE_FRAMES: u32 = 120;
/// Pictures in one image layer's rotation.
const MAX_IMAGES: usize = 16;
/// A font file's largest size.
const MAX_FONT_BYTES: u64 = 16 * 1024 * 1024;

/// `"graphics": {"theme", "style", "layers"}` in a relay's spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphicsSpec {
    /// A bundled theme: `dark` (the default), `light` or `arena`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<String>,
    /// The theme's colours, radius or opacity changed by hand.
    #[serde(default, skip_serializing_if = "is_default")]
    pub style: StyleOverride,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// A second data source for bound fields: JSON polled from this URL (`bind` pointers
    /// that start with `data:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_url: Option<String>,
    /// How often `data_url` is polled (default 1 s, at least 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Let `data_url` be on a private, loopback or link-local address (default false).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_private: bool,
}

/// The prefix of a `bind` pointer into `graphics.data_url`'s JSON.
pub const DATA_PREFIX: &str = "data:";

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn yes() -> bool {
    true
}

/// One layer: its kind, place, whether it starts shown, its fade and its first data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub id: String,
    pub kind: LayerKind,
    #[serde(default)]
    pub anchor: Anchor,
    /// Distance from the frame's edges, in pixels at 720p (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<u32>,
    #[serde(default = "yes")]
    pub visible: bool,
    /// Frames a fade in or out takes (default 10; 0 cuts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fade_frames: Option<u32>,
    /// The kind's fields ([`LayerKind`]).
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Fields taken from the scores API's answer (`overlay.scores_url`): field → JSON
    /// Pointer, `{"seconds": "/match/clock"}`. Each poll that brings a new value sets it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bind: BTreeMap<String, String>,
}

/// What a layer draws, and the fields of its `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// `title`, `subtitle`.
    LowerThird,
    /// `seconds` (its reading), `running`, `direction` (`down` or `up`), `label`.
    Clock,
    /// `text`.
    Text,
    /// `best_of`, `home_wins`, `away_wins`, and `home`, `away` (the scoreboard's names
    /// unless given).
    Series,
    /// `images` (file names in `<data_dir>/graphics/`), `period` (`"10s"`: the rotation).
    Image,
}

impl LayerKind {
    /// The fields its data may have, and what each must be.
    fn fields(self) -> &'static [(&'static str, Field)] {
        use Field::*;
        match self {
            LayerKind::LowerThird => &[("title", Text), ("subtitle", Text)],
            LayerKind::Clock => &[
                ("seconds", Count),
                ("running", Flag),
                ("direction", Direction),
                ("label", Text),
            ],
            LayerKind::Text => &[("text", Text)],
            LayerKind::Series => &[
                ("best_of", BestOf),
                ("home_wins", Count),
                ("away_wins", Count),
                ("home", Text),
                ("away", Text),
            ],
            LayerKind::Image => &[("images", Files), ("period", Period)],
        }
    }
}

/// What a data field must be.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A string of at most 200 characters.
    Text,
    /// A whole number from 0 to 10 days of seconds.
    Count,
    Flag,
    /// `down` or `up`.
    Direction,
    /// An odd number from 1 to 9.
    BestOf,
    /// A list of plain file names.
    Files,
    /// A duration of 1 s or more.
    Period,
}

/// Checks `data` against `kind`'s fields; the error names the field.
pub fn check_data(kind: LayerKind, data: &Map<String, Value>) -> Result<(), (String, String)> {
    let fields = kind.fields();
    for (name, value) in data {
        let Some((_, field)) = fields.iter().find(|(n, _)| n == name) else {
            let known: Vec<String> = fields.iter().map(|(n, _)| format!("`{n}`")).collect();
            return Err((
                name.clone(),
                format!(
                    "unknown field `{name}`, expected one of {}",
                    known.join(", ")
                ),
            ));
        };
        let fail = |why: &str| Err((name.clone(), why.to_owned()));
        match field {
            Field::Text => match value.as_str() {
                Some(s) if s.chars().count() <= 200 => {}
                _ => return fail("must be a string of at most 200 characters"),
            },
            Field::Count => match value.as_u64() {
                Some(n) if n <= 864_000 => {}
                _ => return fail("must be a whole number from 0 to 864000"),
            },
            Field::Flag => {
                if !value.is_boolean() {
                    return fail("must be true or false");
                }
            }
            Field::Direction => {
                if !matches!(value.as_str(), Some("down" | "up")) {
                    return fail("must be \"down\" or \"up\"");
                }
            }
            Field::BestOf => match value.as_u64() {
                Some(n) if (1..=9).contains(&n) && n % 2 == 1 => {}
                _ => return fail("must be 1, 3, 5, 7 or 9"),
            },
            Field::Files => {
                let names = value.as_array().map(|a| {
                    a.iter()
                        .map(|v| {
                            v.as_str()
                                .filter(|s| plain_file_name(s) || (is_url(s) && s.len() <= 2048))
                        })
                        .collect::<Option<Vec<_>>>()
                });
                match names {
                    Some(Some(names)) if !names.is_empty() && names.len() <= MAX_IMAGES => {}
                    _ => {
                        return fail(&format!(
                            "must be 1 to {MAX_IMAGES} pictures (PNG or JPEG): file names in <data_dir>/graphics/ or http(s) URLs"
                        ))
                    }
                }
            }
            Field::Period => match value
                .as_str()
                .and_then(crate::scores::poller::parse_duration)
            {
                Some(d) if d >= Duration::from_secs(1) => {}
                _ => return fail("must be a duration of 1s or more, like \"10s\""),
            },
        }
    }
    Ok(())
}

/// An `http://` or `https://` URL (a picture fetched rather than read from the data dir).
pub(super) fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

impl GraphicsSpec {
    /// Checks the theme, the style and every layer; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(theme) = &self.theme {
            if !THEMES.contains(&theme.as_str()) {
                return Err((
                    "graphics.theme".to_owned(),
                    format!(
                        "unknown theme {theme:?}; expected one of {}",
                        THEMES.join(", ")
                    ),
                ));
            }
        }
        self.style
            .check()
            .map_err(|(field, why)| (format!("graphics.style.{field}"), why))?;
        if self.layers.len() > MAX_LAYERS {
            return Err((
                "graphics.layers".to_owned(),
                format!("at most {MAX_LAYERS} layers"),
            ));
        }
        if let Some(url) = &self.data_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((
                    "graphics.data_url".to_owned(),
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(text) = &self.poll_interval {
            match crate::scores::poller::parse_duration(text) {
                Some(d) if d >= Duration::from_millis(100) => {}
                _ => {
                    return Err((
                        "graphics.poll_interval".to_owned(),
                        format!("{text:?} is not a duration of 100ms or more, like \"1s\""),
                    ))
                }
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let at = format!("graphics.layers[{i}]");
            let from_data = layer.bind.values().any(|p| p.starts_with(DATA_PREFIX));
            if from_data && self.data_url.is_none() {
                return Err((
                    format!("{at}.bind"),
                    "a \"data:\" pointer needs graphics.data_url".to_owned(),
                ));
            }
            if !plain_file_name(&layer.id) || layer.id.contains('.') {
                return Err((
                    format!("{at}.id"),
                    "must be 1 to 128 ASCII letters, digits, - and _".to_owned(),
                ));
            }
            if self.layers[..i].iter().any(|l| l.id == layer.id) {
                return Err((
                    format!("{at}.id"),
                    format!("duplicate layer id {:?}", layer.id),
                ));
            }
            if layer.fade_frames.is_some_and(|f| f > MAX_FADE_FRAMES) {
                return Err((
                    format!("{at}.fade_frames"),
                    format!("must be 0 to {MAX_FADE_FRAMES}"),
                ));
            }
            check_data(layer.kind, &layer.data)
                .map_err(|(field, why)| (format!("{at}.data.{field}"), why))?;
            for (field, pointer) in &layer.bind {
                if !layer.kind.fields().iter().any(|(n, _)| n == field) {
                    return Err((
                        format!("{at}.bind.{field}"),
                        format!("{:?} has no field {field:?}", layer.kind),
                    ));
                }
                let pointer = pointer.strip_prefix(DATA_PREFIX).unwrap_or(pointer);
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    return Err((
                        format!("{at}.bind.{field}"),
                        format!("{pointer:?} is not a JSON Pointer like \"/match/clock\""),
                    ));
                }
            }
        }
        Ok(())
    }

    /// How often `data_url` is polled.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
            .as_deref()
            .and_then(crate::scores::poller::parse_duration)
            .unwrap_or(Duration::from_secs(1))
    }

    /// The style in force: the theme with the overrides, a font file read from `dir`. When
    /// the file cannot be used, the theme's font and why.
    pub fn style(&self, dir: Option<&Path>) -> (Style, Option<String>) {
        let theme = self.theme.as_deref().unwrap_or(THEMES[0]);
        let mut style = Style::theme(theme).unwrap_or_default().with(&self.style);
        let file = self.style.font.as_deref().filter(|f| !FONTS.contains(f));
        let Some(file) = file else {
            return (style, None);
        };
        let loaded = dir
            .ok_or_else(|| "no data_dir for graphics files".to_owned())
            .and_then(|dir| read_capped(&dir.join(file), MAX_FONT_BYTES))
            .and_then(font_from_bytes);
        match loaded {
            Ok(font) => {
                style.font = font;
                (style, None)
            }
            Err(e) => (style, Some(format!("font {file}: {e}"))),
        }
    }
}

/// A bound value as `kind`'s `field` wants it: a clock's `m:ss` or `h:mm:ss` as seconds,
/// a number as text for a text field.
pub(super) fn coerce(kind: LayerKind, field: &str, value: &Value) -> Value {
    let wanted = kind
        .fields()
        .iter()
        .find(|(n, _)| *n == field)
        .map(|(_, f)| *f);
    match (wanted, value) {
        (Some(Field::Count), Value::String(text)) => {
            let parts: Option<Vec<u64>> = text.trim().split(':').map(|p| p.parse().ok()).collect();
            match parts.as_deref() {
                Some([s]) => Value::from(*s),
                Some([m, s]) => Value::from(m * 60 + s),
                Some([h, m, s]) => Value::from(h * 3600 + m * 60 + s),
                _ => value.clone(),
            }
        }
        (Some(Field::Count), Value::Number(n)) => n
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map_or_else(|| value.clone(), |f| Value::from(f.floor() as u64)),
        (Some(Field::Text), Value::Number(n)) => Value::from(n.to_string()),
        _ => value.clone(),
    }
}

/// A file's bytes, if it holds at most `max`.
pub(super) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > max {
        return Err(format!("larger than {max} bytes"));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}
