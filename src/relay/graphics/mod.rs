//! A relay's graphics layers beyond the scorebug (`"graphics"` in its spec): a lower third, a
//! match clock, a line of text, a series score and a rotation of images, each with its data,
//! shown and hidden with a fade.
//!
//! Owns the layers' state: their data (from the spec, then set by hand over the API), whether
//! each is shown, its fade, a clock's reading and how it counts between updates, and which
//! picture of a rotation is up. It says what each visible layer should look like at an
//! instant ([`Graphics::draws`]) and when that next changes ([`Graphics::next_change`]). It
//! must not render or touch a pipeline: the [`super::scorebug`] renders what it is told.
//! What a valid `"graphics"` spec is lives in [`spec`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use image::RgbaImage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::render::graphics::{clock_text, Anchor, Graphic, Style};
use crate::scores::Scoreboard;

mod spec;

pub use spec::{
    check_data, GraphicsSpec, LayerKind, LayerSpec, DATA_PREFIX, DEFAULT_FADE_FRAMES, MAX_LAYERS,
};
use spec::{coerce, is_url, read_capped};

/// A picture file's largest size.
const MAX_IMAGE_BYTES: u64 = 4 * 1024 * 1024;

/// A layer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerView {
    pub id: String,
    pub kind: LayerKind,
    pub anchor: Anchor,
    pub visible: bool,
    /// Its data now; a running clock's `seconds` is its reading at this moment.
    pub data: Map<String, Value>,
}

/// A change asked of a layer over the API: `{"visible", "data"}`, data fields merged into
/// what it has (`null` removes one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerChange {
    #[serde(default)]
    pub visible: Option<bool>,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

/// Why a layer change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphicsError {
    #[error("no layer {0:?}")]
    NoLayer(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// What one visible layer looks like now: enough to tell a change (`key`) and to draw it.
#[derive(Debug, Clone)]
pub struct Draw {
    pub id: String,
    /// Equal keys draw equal pictures.
    pub key: String,
    pub graphic: OwnedGraphic,
    pub anchor: Anchor,
    pub margin: u32,
    pub alpha: f32,
}

impl Draw {
    /// Its picture in `style` for a `width`x`height` frame.
    pub fn render(&self, style: &Style, width: u32, height: u32) -> crate::render::Bug {
        crate::render::graphics::render(
            &self.graphic.graphic(),
            style,
            self.anchor,
            self.margin,
            self.alpha,
            width,
            height,
        )
    }
}

/// A [`Graphic`] that owns its text and picture.
#[derive(Debug, Clone)]
pub enum OwnedGraphic {
    LowerThird {
        title: String,
        subtitle: Option<String>,
    },
    Clock {
        label: Option<String>,
        seconds: u64,
    },
    Text(String),
    Series {
        home: String,
        away: String,
        home_wins: u32,
        away_wins: u32,
        best_of: u32,
    },
    Image(Arc<RgbaImage>),
}

impl OwnedGraphic {
    pub fn graphic(&self) -> Graphic<'_> {
        match self {
            OwnedGraphic::LowerThird { title, subtitle } => Graphic::LowerThird {
                title,
                subtitle: subtitle.as_deref(),
            },
            OwnedGraphic::Clock { label, seconds } => Graphic::Clock {
                label: label.as_deref(),
                seconds: *seconds,
            },
            OwnedGraphic::Text(text) => Graphic::Text { text },
            OwnedGraphic::Series {
                home,
                away,
                home_wins,
                away_wins,
                best_of,
            } => Graphic::Series {
                home,
                away,
                home_wins: *home_wins,
                away_wins: *away_wins,
                best_of: *best_of,
            },
            OwnedGraphic::Image(image) => Graphic::Image { image },
        }
    }
}

/// One layer's state.
struct Layer {
    spec: LayerSpec,
    visible: bool,
    data: Map<String, Value>,
    /// When it was last shown or hidden (its fade runs from there).
    toggled_at: Option<Instant>,
    /// When the clock read its `seconds`.
    read_at: Instant,
    /// An image layer's pictures, loaded.
    images: Vec<Arc<RgbaImage>>,
    /// The last value the scores API gave each bound field: only a new one is set.
    bound: HashMap<String, Value>,
    /// Why its pictures did not load, if they did not.
    image_error: Option<String>,
}

/// A relay's layers.
pub struct Graphics {
    style: Style,
    /// Why the style's font file is not used, if it is not.
    font_error: Option<String>,
    layers: Vec<Layer>,
    fps: u32,
    /// Where image layers' files are.
    dir: Option<std::path::PathBuf>,
    /// `graphics.data_url`, its poll interval and whether it may be private.
    data: Option<(String, Duration, bool)>,
    /// Whether `data_url` and pictures by URL may be on private addresses.
    allow_private: bool,
    /// Pictures fetched by URL, for image layers that name them.
    fetched: HashMap<String, Arc<RgbaImage>>,
}

impl Graphics {
    /// The layers of `spec` (checked), with pictures from `dir`, at `fps` frames a second.
    pub fn new(spec: &GraphicsSpec, dir: Option<&Path>, fps: u32, now: Instant) -> Self {
        let (style, font_error) = spec.style(dir);
        let mut graphics = Graphics {
            style,
            font_error,
            layers: Vec::new(),
            fps: fps.max(1),
            dir: dir.map(Path::to_path_buf),
            data: spec
                .data_url
                .clone()
                .map(|url| (url, spec.poll_interval(), spec.allow_private)),
            allow_private: spec.allow_private,
            fetched: HashMap::new(),
        };
        for layer in &spec.layers {
            let mut state = Layer {
                visible: layer.visible,
                data: layer.data.clone(),
                toggled_at: None,
                read_at: now,
                images: Vec::new(),
                image_error: None,
                bound: HashMap::new(),
                spec: layer.clone(),
            };
            load_images(dir, &graphics.fetched, &mut state);
            graphics.layers.push(state);
        }
        graphics
    }

    /// The pictures image layers name by URL that are not fetched yet, and whether they may
    /// be on private addresses.
    pub fn missing_pictures(&self) -> (Vec<String>, bool) {
        let mut urls: Vec<String> = self
            .layers
            .iter()
            .filter(|l| l.spec.kind == LayerKind::Image)
            .flat_map(picture_names)
            .filter(|n| is_url(n) && !self.fetched.contains_key(n))
            .collect();
        urls.sort();
        urls.dedup();
        (urls, self.allow_private)
    }

    /// A picture fetched from `url`: every image layer naming it shows it from now on.
    pub fn add_picture(&mut self, url: &str, picture: RgbaImage) {
        self.fetched.insert(url.to_owned(), Arc::new(picture));
        for layer in &mut self.layers {
            if picture_names(layer).iter().any(|n| n == url) {
                load_images(self.dir.as_deref(), &self.fetched, layer);
            }
        }
    }

    /// The second data source, if any: its URL, poll interval, and whether it may be private.
    pub fn data_source(&self) -> Option<(String, Duration, bool)> {
        self.data.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn style(&self) -> Style {
        self.style.clone()
    }

    /// What did not load: the font file, an image layer's pictures (by layer).
    pub fn load_errors(&self) -> Vec<String> {
        self.font_error
            .iter()
            .cloned()
            .chain(self.layers.iter().filter_map(|l| {
                Some(format!(
                    "layer {:?}: {}",
                    l.spec.id,
                    l.image_error.as_ref()?
                ))
            }))
            .collect()
    }

    /// The layers as the API shows them at `now`.
    pub fn views(&self, now: Instant) -> Vec<LayerView> {
        self.layers.iter().map(|l| view(l, now)).collect()
    }

    /// Applies `change` to layer `id` at `now`: its data merged and checked, then its
    /// visibility (starting a fade). A clock given `seconds` reads them from now on.
    pub fn change(
        &mut self,
        id: &str,
        change: LayerChange,
        now: Instant,
    ) -> Result<LayerView, GraphicsError> {
        let at = self
            .layers
            .iter()
            .position(|l| l.spec.id == id)
            .ok_or_else(|| GraphicsError::NoLayer(id.to_owned()))?;
        if let Some(patch) = change.data {
            let layer = &self.layers[at];
            // A running clock's reading is carried to now before new fields land on it.
            let mut data = layer.data.clone();
            if layer.spec.kind == LayerKind::Clock {
                data.insert("seconds".to_owned(), Value::from(clock_seconds(layer, now)));
            }
            for (k, v) in patch.iter() {
                if v.is_null() {
                    data.remove(k);
                } else {
                    data.insert(k.clone(), v.clone());
                }
            }
            check_data(layer.spec.kind, &data).map_err(|(field, message)| {
                GraphicsError::Invalid {
                    field: format!("data.{field}"),
                    message,
                }
            })?;
            let layer = &mut self.layers[at];
            layer.data = data;
            layer.read_at = now;
            if patch.contains_key("images") {
                load_images(self.dir.as_deref(), &self.fetched, layer);
            }
        }
        let layer = &mut self.layers[at];
        if let Some(visible) = change.visible {
            if visible != layer.visible {
                layer.visible = visible;
                layer.toggled_at = Some(now);
            }
        }
        Ok(view(layer, now))
    }

    /// The JSON Pointers layers are bound to in the scores API's answer, for its poller.
    pub fn pointers(&self) -> Vec<String> {
        let mut pointers: Vec<String> = self
            .layers
            .iter()
            .flat_map(|l| l.spec.bind.values().cloned())
            .filter(|p| !p.starts_with(DATA_PREFIX))
            .collect();
        pointers.sort();
        pointers.dedup();
        pointers
    }

    /// Sets bound fields from an answer of `graphics.data_url`, as [`Graphics::bind`] does.
    pub fn bind_data(&mut self, json: &Value, now: Instant) -> Vec<String> {
        let bound: Vec<(String, Value)> = self
            .layers
            .iter()
            .flat_map(|l| l.spec.bind.values())
            .filter_map(|p| {
                let pointer = p.strip_prefix(DATA_PREFIX)?;
                Some((p.clone(), json.pointer(pointer)?.clone()))
            })
            .collect();
        self.bind(&bound, now)
    }

    /// Sets bound fields from a scores answer (`bound`: pointer → value) at `now`: a field
    /// whose value is new since the last answer is set, as a `PUT` would. A clock's
    /// `seconds` may come as a number or as `m:ss`. Returns why values were not used.
    pub fn bind(&mut self, bound: &[(String, Value)], now: Instant) -> Vec<String> {
        let mut refused = Vec::new();
        for at in 0..self.layers.len() {
            let mut patch = Map::new();
            let layer = &mut self.layers[at];
            for (field, pointer) in &layer.spec.bind {
                let Some((_, value)) = bound.iter().find(|(p, _)| p == pointer) else {
                    continue;
                };
                if layer.bound.get(field) == Some(value) {
                    continue;
                }
                layer.bound.insert(field.clone(), value.clone());
                patch.insert(field.clone(), coerce(layer.spec.kind, field, value));
            }
            if patch.is_empty() {
                continue;
            }
            let id = layer.spec.id.clone();
            let change = LayerChange {
                visible: None,
                data: Some(patch),
            };
            if let Err(e) = self.change(&id, change, now) {
                refused.push(format!("layer {id:?}: {e}"));
            }
        }
        refused
    }

    /// What every layer that shows anything looks like at `now`, in spec order (later
    /// layers on top). `board` gives a series its team names when its data has none.
    pub fn draws(&self, now: Instant, board: Option<&Scoreboard>) -> Vec<Draw> {
        self.layers
            .iter()
            .filter_map(|layer| {
                let alpha = self.alpha(layer, now)?;
                let graphic = content(layer, now, board)?;
                // Alpha in whole fade steps: one picture per frame of a fade, no more.
                let steps = self.fade_frames(layer).max(1);
                let step = (alpha * steps as f32).round() as u32;
                let key = format!("{}|{step}|{}", layer.spec.id, describe(&graphic));
                Some(Draw {
                    id: layer.spec.id.clone(),
                    key,
                    graphic,
                    anchor: layer.spec.anchor,
                    margin: layer.spec.margin.unwrap_or(24),
                    alpha: step as f32 / steps as f32,
                })
            })
            .collect()
    }

    /// When what [`Graphics::draws`] returns next changes by itself: the next frame of a
    /// fade, the next second of a running clock, the next picture of a rotation. `None`
    /// when nothing moves.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let frame = Duration::from_secs(1) / self.fps;
        self.layers
            .iter()
            .filter_map(|layer| {
                if self.fading(layer, now) {
                    return Some(now + frame);
                }
                if !layer.visible {
                    return None;
                }
                match layer.spec.kind {
                    LayerKind::Clock if running(layer) => {
                        // The moment the shown second changes.
                        let elapsed = now.duration_since(layer.read_at);
                        let into = elapsed.as_nanos() % 1_000_000_000;
                        Some(now + Duration::from_nanos((1_000_000_000 - into) as u64))
                    }
                    LayerKind::Image if layer.images.len() > 1 => {
                        let period = period(layer);
                        let elapsed = now.duration_since(layer.read_at);
                        let into = elapsed.as_nanos() % period.as_nanos().max(1);
                        Some(now + Duration::from_nanos((period.as_nanos() - into) as u64))
                    }
                    _ => None,
                }
            })
            .min()
    }

    fn fade_frames(&self, layer: &Layer) -> u32 {
        layer.spec.fade_frames.unwrap_or(DEFAULT_FADE_FRAMES)
    }

    fn fade_length(&self, layer: &Layer) -> Duration {
        Duration::from_secs(u64::from(self.fade_frames(layer))) / self.fps
    }

    fn fading(&self, layer: &Layer, now: Instant) -> bool {
        layer
            .toggled_at
            .is_some_and(|at| now.duration_since(at) < self.fade_length(layer))
    }

    /// The layer's opacity at `now` (its fade), or `None` when it shows nothing.
    fn alpha(&self, layer: &Layer, now: Instant) -> Option<f32> {
        let length = self.fade_length(layer);
        let progress = match layer.toggled_at {
            Some(at) if !length.is_zero() => {
                (now.duration_since(at).as_secs_f32() / length.as_secs_f32()).min(1.0)
            }
            _ => 1.0,
        };
        let alpha = if layer.visible {
            progress
        } else {
            1.0 - progress
        };
        (alpha > 0.0).then_some(alpha)
    }
}

fn view(layer: &Layer, now: Instant) -> LayerView {
    let mut data = layer.data.clone();
    if layer.spec.kind == LayerKind::Clock {
        data.insert("seconds".to_owned(), Value::from(clock_seconds(layer, now)));
    }
    LayerView {
        id: layer.spec.id.clone(),
        kind: layer.spec.kind,
        anchor: layer.spec.anchor,
        visible: layer.visible,
        data,
    }
}

fn text_field<'a>(layer: &'a Layer, name: &str) -> Option<&'a str> {
    layer.data.get(name).and_then(Value::as_str)
}

fn number_field(layer: &Layer, name: &str) -> Option<u64> {
    layer.data.get(name).and_then(Value::as_u64)
}

fn running(layer: &Layer) -> bool {
    layer.data.get("running").and_then(Value::as_bool) == Some(true)
}

fn period(layer: &Layer) -> Duration {
    text_field(layer, "period")
        .and_then(crate::scores::poller::parse_duration)
        .filter(|d| *d >= Duration::from_secs(1))
        .unwrap_or(Duration::from_secs(10))
}

/// A clock's reading at `now`: its `seconds`, counted down (to 0) or up since it was read
/// when it runs.
fn clock_seconds(layer: &Layer, now: Instant) -> u64 {
    let seconds = number_field(layer, "seconds").unwrap_or(0);
    if !running(layer) {
        return seconds;
    }
    let elapsed = now.duration_since(layer.read_at).as_secs();
    match text_field(layer, "direction") {
        Some("up") => seconds + elapsed,
        _ => seconds.saturating_sub(elapsed),
    }
}

/// What a layer draws at `now`, or `None` when its data gives it nothing to show.
fn content(layer: &Layer, now: Instant, board: Option<&Scoreboard>) -> Option<OwnedGraphic> {
    Some(match layer.spec.kind {
        LayerKind::LowerThird => OwnedGraphic::LowerThird {
            title: text_field(layer, "title")?.to_owned(),
            subtitle: text_field(layer, "subtitle").map(str::to_owned),
        },
        LayerKind::Clock => OwnedGraphic::Clock {
            label: text_field(layer, "label").map(str::to_owned),
            seconds: clock_seconds(layer, now),
        },
        LayerKind::Text => OwnedGraphic::Text(text_field(layer, "text")?.to_owned()),
        LayerKind::Series => {
            let name = |field: &str, team: Option<&str>| {
                text_field(layer, field)
                    .or(team)
                    .unwrap_or(if field == "home" { "HOME" } else { "AWAY" })
                    .to_owned()
            };
            OwnedGraphic::Series {
                home: name("home", board.map(|b| b.home.name.as_str())),
                away: name("away", board.map(|b| b.away.name.as_str())),
                home_wins: number_field(layer, "home_wins").unwrap_or(0) as u32,
                away_wins: number_field(layer, "away_wins").unwrap_or(0) as u32,
                best_of: number_field(layer, "best_of").unwrap_or(3) as u32,
            }
        }
        LayerKind::Image => {
            if layer.images.is_empty() {
                return None;
            }
            let elapsed = now.duration_since(layer.read_at);
            let turn = (elapsed.as_nanos() / period(layer).as_nanos().max(1)) as usize;
            OwnedGraphic::Image(layer.images[turn % layer.images.len()].clone())
        }
    })
}

/// A short description of what a graphic draws, for telling two apart.
fn describe(graphic: &OwnedGraphic) -> String {
    match graphic {
        OwnedGraphic::LowerThird { title, subtitle } => format!("{title}|{subtitle:?}"),
        OwnedGraphic::Clock { label, seconds } => format!("{label:?}|{}", clock_text(*seconds)),
        OwnedGraphic::Text(text) => text.clone(),
        OwnedGraphic::Series {
            home,
            away,
            home_wins,
            away_wins,
            best_of,
        } => format!("{home}|{away}|{home_wins}|{away_wins}|{best_of}"),
        OwnedGraphic::Image(image) => format!("{:p}", Arc::as_ptr(image)),
    }
}

/// The pictures an image layer's data names, in order.
fn picture_names(layer: &Layer) -> Vec<String> {
    layer
        .data
        .get("images")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Loads an image layer's pictures: files from `dir`, URLs from those `fetched` (one not
/// fetched yet is left out until it is), noting why a file did not load.
fn load_images(dir: Option<&Path>, fetched: &HashMap<String, Arc<RgbaImage>>, layer: &mut Layer) {
    if layer.spec.kind != LayerKind::Image {
        return;
    }
    layer.images.clear();
    layer.image_error = None;
    for name in picture_names(layer) {
        if is_url(&name) {
            layer.images.extend(fetched.get(&name).cloned());
            continue;
        }
        let Some(dir) = dir else {
            layer.image_error = Some("no data_dir for graphics files".to_owned());
            continue;
        };
        match load_image(&dir.join(&name)) {
            Ok(image) => layer.images.push(Arc::new(image)),
            Err(e) => layer.image_error = Some(format!("{name}: {e}")),
        }
    }
}

/// A picture's largest size in bytes, read or fetched.
pub const MAX_PICTURE_BYTES: usize = MAX_IMAGE_BYTES as usize;

/// Reads a PNG or JPEG of at most [`MAX_IMAGE_BYTES`].
fn load_image(path: &Path) -> Result<RgbaImage, String> {
    let bytes = read_capped(path, MAX_IMAGE_BYTES)?;
    image::load_from_memory(&bytes)
        .map(|i| i.to_rgba8())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> GraphicsSpec {
        serde_json::from_str(json).expect("a graphics spec")
    }

    fn clock(running: bool, direction: &str) -> GraphicsSpec {
        spec(&format!(
            r#"{{"layers":[{{"id":"clock","kind":"clock","data":{{"seconds":300,"running":{running},"direction":"{direction}"}}}}]}}"#
        ))
    }

    fn seconds_shown(g: &Graphics, now: Instant) -> u64 {
        match &g.draws(now, None)[0].graphic {
            OwnedGraphic::Clock { seconds, .. } => *seconds,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_running_clock_counts_between_updates_and_ticks_once_a_second() {
        let start = Instant::now();
        let g = Graphics::new(&clock(true, "down"), None, 30, start);
        assert_eq!(seconds_shown(&g, start), 300);
        assert_eq!(seconds_shown(&g, start + Duration::from_millis(4_500)), 296);
        assert_eq!(
            g.next_change(start + Duration::from_millis(4_500)),
            Some(start + Duration::from_secs(5))
        );
        // Down to 0 and no further.
        assert_eq!(seconds_shown(&g, start + Duration::from_secs(400)), 0);
        let up = Graphics::new(&clock(true, "up"), None, 30, start);
        assert_eq!(seconds_shown(&up, start + Duration::from_secs(61)), 361);
        let stopped = Graphics::new(&clock(false, "down"), None, 30, start);
        assert_eq!(seconds_shown(&stopped, start + Duration::from_secs(9)), 300);
        assert_eq!(stopped.next_change(start), None);
    }

    #[test]
    fn a_new_reading_restarts_the_count_from_it() {
        let start = Instant::now();
        let mut g = Graphics::new(&clock(true, "down"), None, 30, start);
        let at = start + Duration::from_secs(10);
        let data = serde_json::from_str(r#"{"seconds": 120}"#).unwrap();
        g.change(
            "clock",
            LayerChange {
                data: Some(data),
                ..Default::default()
            },
            at,
        )
        .expect("a good change");
        assert_eq!(seconds_shown(&g, at + Duration::from_secs(5)), 115);
        // Stopping it keeps its reading.
        let data = serde_json::from_str(r#"{"running": false}"#).unwrap();
        let view = g
            .change(
                "clock",
                LayerChange {
                    data: Some(data),
                    ..Default::default()
                },
                at + Duration::from_secs(7),
            )
            .expect("a good change");
        assert_eq!(view.data["seconds"], 113);
        assert_eq!(seconds_shown(&g, at + Duration::from_secs(60)), 113);
    }

    #[test]
    fn showing_a_layer_fades_it_in_frame_by_frame() {
        let start = Instant::now();
        let s = spec(
            r#"{"layers":[{"id":"caster","kind":"lower_third","visible":false,"fade_frames":10,"data":{"title":"Anders"}}]}"#,
        );
        let mut g = Graphics::new(&s, None, 30, start);
        assert!(g.draws(start, None).is_empty());
        assert_eq!(g.next_change(start), None);
        g.change(
            "caster",
            LayerChange {
                visible: Some(true),
                ..Default::default()
            },
            start,
        )
        .unwrap();
        // 10 frames at 30 fps: a third of a second, in tenths.
        let at = |ms| g.draws(start + Duration::from_millis(ms), None);
        assert!(at(0).is_empty());
        assert_eq!(at(100)[0].alpha, 0.3);
        assert_eq!(at(400)[0].alpha, 1.0);
        assert!(g.next_change(start + Duration::from_millis(100)).is_some());
        assert_eq!(g.next_change(start + Duration::from_millis(400)), None);
        let keys: std::collections::BTreeSet<String> = (0..40)
            .map(|f| at(f * 1000 / 30))
            .filter_map(|d| d.first().map(|d| d.key.clone()))
            .collect();
        assert_eq!(keys.len(), 10, "one picture per fade step: {keys:?}");
    }

    #[test]
    fn bad_data_is_refused_by_its_field_and_changes_nothing() {
        let start = Instant::now();
        let mut g = Graphics::new(&clock(false, "down"), None, 30, start);
        let data = serde_json::from_str(r#"{"direction": "sideways"}"#).unwrap();
        let err = g
            .change(
                "clock",
                LayerChange {
                    data: Some(data),
                    ..Default::default()
                },
                start,
            )
            .unwrap_err();
        assert!(
            matches!(err, GraphicsError::Invalid { ref field, .. } if field == "data.direction")
        );
        assert_eq!(g.views(start)[0].data["direction"], "down");
        assert_eq!(
            g.change("nope", LayerChange::default(), start).unwrap_err(),
            GraphicsError::NoLayer("nope".to_owned())
        );
    }

    #[test]
    fn a_bound_clock_is_read_from_each_new_answer_and_counts_between() {
        let start = Instant::now();
        let s = spec(
            r#"{"layers":[{"id":"clock","kind":"clock","data":{"running":true},"bind":{"seconds":"/match/clock","label":"/match/map"}}]}"#,
        );
        let mut g = Graphics::new(&s, None, 30, start);
        assert_eq!(g.pointers(), ["/match/clock", "/match/map"]);
        let answer = |clock: &str| {
            vec![
                ("/match/clock".to_owned(), Value::from(clock)),
                ("/match/map".to_owned(), Value::from(2)),
            ]
        };
        assert!(g.bind(&answer("3:20"), start).is_empty());
        assert_eq!(seconds_shown(&g, start + Duration::from_secs(3)), 197);
        // The same answer again changes nothing: the clock keeps counting.
        g.bind(&answer("3:20"), start + Duration::from_secs(4));
        assert_eq!(seconds_shown(&g, start + Duration::from_secs(5)), 195);
        // A new reading is taken from then on.
        g.bind(&answer("3:15"), start + Duration::from_secs(5));
        assert_eq!(seconds_shown(&g, start + Duration::from_secs(7)), 193);
        assert_eq!(g.views(start)[0].data["label"], "2");
        let refused = g.bind(&answer("soon"), start + Duration::from_secs(8));
        assert_eq!(refused.len(), 1, "{refused:?}");
    }

    #[test]
    fn data_url_pointers_are_read_from_its_own_answers() {
        let start = Instant::now();
        let s = spec(
            r#"{"data_url":"http://data.example/now","layers":[{"id":"t","kind":"text","bind":{"text":"data:/ticker/0"}},{"id":"c","kind":"clock","bind":{"seconds":"/clock"}}]}"#,
        );
        assert!(s.check().is_ok());
        let mut g = Graphics::new(&s, None, 30, start);
        assert_eq!(g.pointers(), ["/clock"]);
        let json: Value = serde_json::from_str(r#"{"ticker":["GG WP"]}"#).unwrap();
        assert!(g.bind_data(&json, start).is_empty());
        assert_eq!(g.views(start)[0].data["text"], "GG WP");
        let without: GraphicsSpec =
            spec(r#"{"layers":[{"id":"t","kind":"text","bind":{"text":"data:/x"}}]}"#);
        assert_eq!(without.check().unwrap_err().0, "graphics.layers[0].bind");
    }

    #[test]
    fn a_spec_is_checked_field_by_field() {
        let field = |json: &str| spec(json).check().unwrap_err().0;
        assert_eq!(field(r#"{"theme":"neon"}"#), "graphics.theme");
        assert_eq!(
            field(r##"{"style":{"accent":"red"}}"##),
            "graphics.style.accent"
        );
        assert_eq!(
            field(r#"{"layers":[{"id":"a","kind":"text"},{"id":"a","kind":"text"}]}"#),
            "graphics.layers[1].id"
        );
        assert_eq!(
            field(r#"{"layers":[{"id":"s","kind":"series","data":{"best_of":4}}]}"#),
            "graphics.layers[0].data.best_of"
        );
        assert_eq!(
            field(r#"{"layers":[{"id":"i","kind":"image","data":{"images":["../x.png"]}}]}"#),
            "graphics.layers[0].data.images"
        );
        assert_eq!(
            field(r#"{"layers":[{"id":"t","kind":"text","bind":{"title":"/x"}}]}"#),
            "graphics.layers[0].bind.title"
        );
        let by_url = spec(
            r#"{"layers":[{"id":"i","kind":"image","data":{"images":["a.png","https://cdn.example/b.png"]}}]}"#,
        );
        assert!(by_url.check().is_ok());
        let g = Graphics::new(&by_url, None, 30, Instant::now());
        assert_eq!(g.missing_pictures().0, ["https://cdn.example/b.png"]);
        assert!(spec(
            r#"{"theme":"arena","layers":[{"id":"t","kind":"text","data":{"text":"GG"}}]}"#
        )
        .check()
        .is_ok());
    }
}
