//! The relay spec: what an operator asked a relay to be. The config file's `[[relay]]` tables
//! and the API's relay JSON are this same shape.
//!
//! Owns parsing-level validation (field names, value shapes). It must not know about running
//! relays: uniqueness across relays is checked by the config loader and the registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::render::{Corner, Theme};
use crate::scores::poller::parse_duration;
use crate::scores::{validate_mapping, Mapping};

/// The named rendition presets: frame height and video bitrate (kb/s) at 30 fps. The bitrates
/// follow Apple's HLS authoring ladder for H.264 (6000 at 1080p, 3000 at 720p, 730 at
/// 432p, 365 at 360p), taken at the upper end where a height falls between its rungs,
/// because `veryfast` x264 needs more bits than Apple's reference encodes.
pub const RENDITION_PRESETS: &[(&str, u32, u32)] = &[
    ("1080p", 1080, 6000),
    ("720p", 720, 3000),
    ("480p", 480, 1400),
    ("360p", 360, 800),
    ("240p", 240, 400),
];

/// Destination presets. Each is H.264 High, CBR, a 2 s GOP, AAC-LC from the program's audio
/// (128 kb/s at 48 kHz by default); they differ in their bitrate ceiling (kb/s).
pub const OUTPUT_PRESETS: &[(&str, u32)] = &[("youtube", 51_000), ("twitch", 6000)];
/// The GOP every destination preset asks for.
pub const OUTPUT_GOP_SECONDS: u32 = 2;

/// The longest id or stream key we accept; they end up in paths and URLs.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The JSON field (or config key below the relay) that is wrong, e.g. `outputs[1].url`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    pub id: String,
    pub ingest: IngestSpec,
    /// The score overlay; absent means the program carries none (the score can still be PUT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlaySpec>,
    #[serde(default)]
    pub hls: HlsSpec,
    #[serde(default)]
    pub outputs: Vec<OutputSpec>,
    /// `false`: remux the publisher's stream without decoding (no overlay, no ladder).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub transcode: bool,
    /// Casters share the relay in turns ([`super::queue`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// Record the program ([`super::recordings`]); absent, nothing is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordSpec>,
    /// Graphics layers beyond the scorebug ([`super::graphics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics: Option<super::graphics::GraphicsSpec>,
}

/// `"record": {"retention": "24h", "split": "1h", "max_bytes": 50000000000}`: each field
/// defaults to the config's `[record]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// Files older than this (by their end) are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// A new file after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The relay's recordings may take this many bytes; the oldest go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl RecordSpec {
    /// Checks the durations and the budget; the error names the `record.` field.
    pub fn check(&self) -> Result<(), SpecError> {
        for (field, value, least) in [
            ("record.retention", &self.retention, Duration::from_secs(1)),
            ("record.split", &self.split, Duration::from_secs(2)),
        ] {
            let Some(text) = value else { continue };
            match parse_duration(text) {
                Some(d) if d >= least => {}
                _ => {
                    return Err(SpecError::new(
                        field,
                        format!(
                        "{text:?} is not a duration of {least:?} or more, like \"24h\" or \"30m\""
                    ),
                    ))
                }
            }
        }
        if self.max_bytes == Some(0) {
            return Err(SpecError::new("record.max_bytes", "must be more than 0"));
        }
        Ok(())
    }

    /// The rules in force: this spec's fields, else `defaults`'.
    pub fn rules(&self, defaults: &crate::config::RecordSettings) -> super::recordings::Rules {
        super::recordings::Rules {
            retention: self
                .retention
                .as_deref()
                .and_then(parse_duration)
                .unwrap_or(defaults.retention()),
            split: self
                .split
                .as_deref()
                .and_then(parse_duration)
                .unwrap_or(defaults.split()),
            max_bytes: self.max_bytes.or(defaults.max_bytes),
        }
    }
}

/// `"queue": {"turn": "20m", "block_kicked": true, "block_for": "10m"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// How long a turn lasts (`20m`, `90s`).
    pub turn: String,
    /// Whether a caster whose turn ended or who was kicked is refused for `block_for`.
    #[serde(default)]
    pub block_kicked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_for: Option<String>,
    /// How long a waiting caster who disconnected keeps their place (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// Default `queue.block_for`.
pub const DEFAULT_BLOCK_FOR: &str = "10m";
/// Default `queue.grace`.
pub const DEFAULT_GRACE: &str = "60s";

impl QueueSpec {
    /// The queue's rules; [`RelaySpec::validate`] has checked the durations.
    pub fn rules(&self) -> super::queue::QueueRules {
        super::queue::QueueRules {
            turn: duration_or(Some(&self.turn), "20m"),
            block_kicked: self.block_kicked,
            block_for: duration_or(self.block_for.as_deref(), DEFAULT_BLOCK_FOR),
            grace: duration_or(self.grace.as_deref(), DEFAULT_GRACE),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        for (field, value) in [
            ("queue.turn", Some(&self.turn)),
            ("queue.block_for", self.block_for.as_ref()),
            ("queue.grace", self.grace.as_ref()),
        ] {
            let Some(text) = value else { continue };
            match parse_duration(text) {
                Some(d) if d >= Duration::from_secs(1) => {}
                _ => {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "{text:?} is not a duration of 1s or more, like \"90s\" or \"20m\""
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Where the relay's input comes from: exactly one of `stream_key` (push to our RTMP server)
/// or `url` (pull from an external RTMP server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A publish hook: a publish to our RTMP server with a key no relay or caster has is
    /// POSTed here as `{relay, stream_key, peer}`; a 2xx answer (optionally `{"name"}`)
    /// admits it to this relay (see `docs/queue.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    /// The passphrase (AES) an SRT publisher to this relay must use, 10 to 79 characters;
    /// absent, SRT publishers send in the clear (`server.srt_listen`, `docs/srt.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srt_passphrase: Option<String>,
}

impl IngestSpec {
    pub fn stream_key(&self) -> Option<&str> {
        self.stream_key.as_deref()
    }
}

/// Default poll interval of the scores API.
pub const DEFAULT_POLL_INTERVAL: &str = "1s";
/// Default age after which an unconfirmed API scoreboard is marked stale.
pub const DEFAULT_STALE_AFTER: &str = "10s";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySpec {
    /// The scores API; absent means the scoreboard comes only from `PUT .../score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores_url: Option<String>,
    /// How often to poll, e.g. `1s` or `500ms` (default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Another API's JSON mapped onto the built-in shape: `"home.score": "/teams/0/score"`.
    #[serde(default, skip_serializing_if = "Mapping::is_empty")]
    pub map: Mapping,
    /// After this long without the API confirming the scoreboard, it is marked stale (10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<String>,
    #[serde(default)]
    pub position: Corner,
    /// Distance from the frame's edges in pixels at 720p (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<u32>,
    /// Let the scores API and the logos be fetched from private, loopback and link-local
    /// addresses, which are refused otherwise (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_private: bool,
    /// Where a logo given as a relative path or a bare file name (`navi.png`) is fetched
    /// from: `http://images.example:3000/` gives `http://images.example:3000/navi.png`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_base: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl OverlaySpec {
    pub fn poll_interval(&self) -> Duration {
        duration_or(self.poll_interval.as_deref(), DEFAULT_POLL_INTERVAL)
    }

    pub fn stale_after(&self) -> Duration {
        duration_or(self.stale_after.as_deref(), DEFAULT_STALE_AFTER)
    }

    pub fn theme(&self) -> Theme {
        let mut theme = Theme {
            position: self.position,
            ..Theme::default()
        };
        if let Some(margin) = self.margin {
            theme.margin = margin;
        }
        theme
    }
}

fn duration_or(text: Option<&str>, default: &str) -> Duration {
    text.and_then(parse_duration)
        .or_else(|| parse_duration(default))
        .expect("valid default duration")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsSpec {
    /// No rendition named means one rendition at the program's own size.
    #[serde(default)]
    pub renditions: Vec<RenditionSpec>,
    /// Segment format: MPEG-TS (default) or fMP4/CMAF.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: SegmentFormat,
    /// How far back each rendition's `dvr.m3u8` reaches (`"2h"`); absent, no DVR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dvr: Option<String>,
    /// LL-HLS partial segments: refused, as hlscmafsink 0.15.4 writes none (docs/limits.md).
    #[serde(default, skip_serializing_if = "is_default")]
    pub low_latency: bool,
}

/// The longest DVR window: 48 hours of segments on disk.
const MAX_DVR: Duration = Duration::from_secs(48 * 3600);

impl HlsSpec {
    /// The DVR window asked for, if any (checked by [`RelaySpec::validate`]).
    pub fn dvr_window(&self) -> Option<Duration> {
        self.dvr.as_deref().and_then(parse_duration)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentFormat {
    #[default]
    Ts,
    Fmp4,
}

/// A rendition: a preset's name, or a custom size and bitrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a preset name (\"1080p\", \"720p\", \"480p\", \"360p\", \"240p\") or {name, width, height, video_kbps}"
)]
pub enum RenditionSpec {
    Preset(String),
    Custom(CustomRendition),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
}

impl RenditionSpec {
    pub fn name(&self) -> &str {
        match self {
            RenditionSpec::Preset(name) => name,
            RenditionSpec::Custom(c) => &c.name,
        }
    }

    /// Frame height and video bitrate; `None` for an unknown preset name.
    pub fn height_and_kbps(&self) -> Option<(u32, u32)> {
        match self {
            RenditionSpec::Preset(name) => RENDITION_PRESETS
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, h, kbps)| (*h, *kbps)),
            RenditionSpec::Custom(c) => Some((c.height, c.video_kbps)),
        }
    }
}

/// An RTMP destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub id: String,
    pub url: String,
    /// What the destination expects: `youtube` (default) or `twitch`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// A frame height of its own (no taller than the program); default: the top rendition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A video bitrate of its own (kb/s); default: the top rendition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_kbps: Option<u32>,
    /// Consecutive failures after which it gives up (`failed`); default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

fn default_preset() -> String {
    OUTPUT_PRESETS[0].0.to_owned()
}

impl OutputSpec {
    /// A destination with the default preset and the top rendition's encode.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            preset: default_preset(),
            height: None,
            video_kbps: None,
            max_retries: None,
        }
    }

    /// The preset's bitrate ceiling (kb/s); `None` for an unknown preset.
    pub fn preset_max_kbps(&self) -> Option<u32> {
        OUTPUT_PRESETS
            .iter()
            .find(|(n, _)| *n == self.preset)
            .map(|(_, max)| *max)
    }

    /// Checks the destination on its own; `at` is where it sits (`outputs[1]`, or empty for
    /// an output on its own, as in `POST .../outputs`).
    pub fn validate(&self, at: &str) -> Result<(), SpecError> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        check_name(&field("id"), &self.id)?;
        check_rtmp_url(&field("url"), &self.url)?;
        let Some(max) = self.preset_max_kbps() else {
            let names: Vec<_> = OUTPUT_PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(SpecError::new(
                field("preset"),
                format!(
                    "unknown preset {:?}; expected one of {}",
                    self.preset,
                    names.join(", ")
                ),
            ));
        };
        if let Some(kbps) = self.video_kbps {
            if !(100..=max).contains(&kbps) {
                return Err(SpecError::new(
                    field("video_kbps"),
                    format!("must be 100 to {max} for the {} preset", self.preset),
                ));
            }
        }
        if let Some(height) = self.height {
            if !(120..=4320).contains(&height) || height % 2 != 0 {
                return Err(SpecError::new(
                    field("height"),
                    "must be an even number from 120 to 4320",
                ));
            }
        }
        Ok(())
    }
}

impl RelaySpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("id", &self.id)?;
        match (&self.ingest.stream_key, &self.ingest.url) {
            (Some(key), None) => {
                check_name("ingest.stream_key", key)?;
                if *key == self.id {
                    return Err(SpecError::new(
                        "ingest.stream_key",
                        "must differ from the relay's id: the id is public (HLS paths, \
                         metrics, events), the stream key is the publisher's secret",
                    ));
                }
            }
            (None, Some(url)) => check_rtmp_url("ingest.url", url)?,
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    "ingest",
                    "give either stream_key (push) or url (pull), not both",
                ))
            }
            (None, None) => {
                return Err(SpecError::new(
                    "ingest",
                    "give stream_key (push) or url (pull)",
                ))
            }
        }
        if let Some(queue) = &self.queue {
            queue.validate()?;
            if self.ingest.stream_key.is_none() {
                return Err(SpecError::new(
                    "queue",
                    "a queue relay takes its casters' publishes: give ingest.stream_key, not url",
                ));
            }
            if !self.transcode {
                return Err(SpecError::new(
                    "queue",
                    "a queue relay hands the air from caster to caster through its decoded \
                     program: it needs transcode (the default)",
                ));
            }
        }
        if let Some(record) = &self.record {
            record.check()?;
        }
        if let Some(graphics) = &self.graphics {
            graphics
                .check()
                .map_err(|(field, message)| SpecError::new(field, message))?;
            if !self.transcode {
                return Err(SpecError::new(
                    "graphics",
                    "graphics need decoding; a relay with \"transcode\": false only remuxes",
                ));
            }
        }
        if let Some(passphrase) = &self.ingest.srt_passphrase {
            if self.ingest.stream_key.is_none() {
                return Err(SpecError::new(
                    "ingest.srt_passphrase",
                    "SRT publishers push: give ingest.stream_key too (an ingest.url carries its own passphrase)",
                ));
            }
            if !(10..=79).contains(&passphrase.chars().count()) {
                return Err(SpecError::new(
                    "ingest.srt_passphrase",
                    "an SRT passphrase is 10 to 79 characters",
                ));
            }
        }
        if let Some(url) = &self.ingest.auth_url {
            if self.ingest.stream_key.is_none() {
                return Err(SpecError::new(
                    "ingest.auth_url",
                    "a publish hook admits publishers: give ingest.stream_key, not url",
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(SpecError::new(
                    "ingest.auth_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(overlay) = &self.overlay {
            for (field, url) in [
                ("overlay.scores_url", &overlay.scores_url),
                ("overlay.logo_base", &overlay.logo_base),
            ] {
                let Some(url) = url else { continue };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(SpecError::new(
                        field,
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            for (field, value) in [
                ("overlay.poll_interval", &overlay.poll_interval),
                ("overlay.stale_after", &overlay.stale_after),
            ] {
                if let Some(text) = value {
                    if parse_duration(text).is_none() {
                        return Err(SpecError::new(
                            field,
                            format!("{text:?} is not a duration like \"1s\" or \"500ms\""),
                        ));
                    }
                }
            }
            if overlay.poll_interval().as_millis() < 100 {
                return Err(SpecError::new(
                    "overlay.poll_interval",
                    "must be at least 100ms",
                ));
            }
            validate_mapping(&overlay.map)
                .map_err(|e| SpecError::new("overlay.map", e.to_string()))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.hls.renditions.iter().enumerate() {
            let field = format!("hls.renditions[{i}]");
            match r {
                RenditionSpec::Preset(name) if r.height_and_kbps().is_none() => {
                    let presets: Vec<_> = RENDITION_PRESETS.iter().map(|(n, _, _)| *n).collect();
                    return Err(SpecError::new(
                        field,
                        format!(
                            "unknown rendition {name:?}; expected one of {}",
                            presets.join(", ")
                        ),
                    ));
                }
                RenditionSpec::Preset(_) => {}
                RenditionSpec::Custom(c) => {
                    check_name(&format!("{field}.name"), &c.name)?;
                    if !(64..=7680).contains(&c.width) || c.width % 2 != 0 {
                        return Err(SpecError::new(
                            format!("{field}.width"),
                            "must be an even number from 64 to 7680",
                        ));
                    }
                    if !(64..=4320).contains(&c.height) || c.height % 2 != 0 {
                        return Err(SpecError::new(
                            format!("{field}.height"),
                            "must be an even number from 64 to 4320",
                        ));
                    }
                    if !(100..=50_000).contains(&c.video_kbps) {
                        return Err(SpecError::new(
                            format!("{field}.video_kbps"),
                            "must be 100 to 50000",
                        ));
                    }
                }
            }
            if !names.insert(r.name()) {
                return Err(SpecError::new(
                    field,
                    format!("duplicate rendition name {:?}", r.name()),
                ));
            }
        }
        if let Some(text) = &self.hls.dvr {
            match parse_duration(text) {
                Some(d) if d >= Duration::from_secs(10) && d <= MAX_DVR => {}
                _ => {
                    return Err(SpecError::new(
                        "hls.dvr",
                        format!("{text:?} is not a duration from 10s to 48h, like \"2h\""),
                    ))
                }
            }
        }
        if self.hls.low_latency {
            return Err(SpecError::new(
                "hls.low_latency",
                "LL-HLS is not available: hlscmafsink 0.15.4, the newest that runs on GStreamer 1.22, writes no partial segments (EXT-X-PART)",
            ));
        }
        let audio = crate::pipeline::ladder::AUDIO_RENDITION;
        if self.hls.format == SegmentFormat::Fmp4 && names.contains(audio) {
            return Err(SpecError::new(
                "hls.renditions",
                format!("{audio:?} is the audio's own rendition with \"fmp4\" segments; name the video rendition otherwise"),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, output) in self.outputs.iter().enumerate() {
            output.validate(&format!("outputs[{i}]"))?;
            if !ids.insert(output.id.as_str()) {
                return Err(SpecError::new(
                    format!("outputs[{i}].id"),
                    format!("duplicate output id {:?}", output.id),
                ));
            }
        }
        if !self.transcode {
            let refuse = |field: &str, why: &str| {
                Err(SpecError::new(
                    field,
                    format!("{why}; a relay with \"transcode\": false only remuxes"),
                ))
            };
            if self.overlay.is_some() {
                return refuse("overlay", "an overlay needs decoding");
            }
            if !self.hls.renditions.is_empty() {
                return refuse("hls.renditions", "renditions need encoding");
            }
            for (i, output) in self.outputs.iter().enumerate() {
                if output.height.is_some() {
                    return refuse(
                        &format!("outputs[{i}].height"),
                        "a size of its own needs encoding",
                    );
                }
                if output.video_kbps.is_some() {
                    return refuse(
                        &format!("outputs[{i}].video_kbps"),
                        "a bitrate of its own needs encoding",
                    );
                }
            }
        }
        Ok(())
    }
}

impl RelaySpec {
    /// Checks what depends on the program format: renditions and destinations never upscale.
    pub fn check_fits(&self, program_width: u32, program_height: u32) -> Result<(), SpecError> {
        for (i, r) in self.hls.renditions.iter().enumerate() {
            let too_big = match r {
                RenditionSpec::Custom(c) => c.width > program_width || c.height > program_height,
                preset => preset
                    .height_and_kbps()
                    .is_some_and(|(h, _)| h > program_height),
            };
            if too_big {
                return Err(SpecError::new(
                    format!("hls.renditions[{i}]"),
                    format!(
                        "{} is larger than the program ({program_width}x{program_height}); renditions never upscale",
                        r.name()
                    ),
                ));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if o.height.is_some_and(|h| h > program_height) {
                return Err(SpecError::new(
                    format!("outputs[{i}].height"),
                    format!(
                        "taller than the program ({program_height}p); destinations never upscale"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Ids and stream keys become path segments and URL parts: keep them plain. The error names
/// `field` and the limit it breaks.
pub fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(SpecError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if value.starts_with('.')
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SpecError::new(
            field,
            format!(
                "{value:?} may only hold letters, digits, '-', '_' and '.', and not start with '.'"
            ),
        ));
    }
    Ok(())
}

/// An RTMP(S) URL with an app (`rtmp://host[:port]/app[/key]`), or an SRT URL with a host and
/// a port (`srt://host:port[?options]`, the caller's options as ffmpeg and srtsink take them).
fn check_rtmp_url(field: &str, url: &str) -> Result<(), SpecError> {
    if let Some(rest) = url.strip_prefix("srt://") {
        return check_srt_url(field, url, rest);
    }
    let rest = url
        .strip_prefix("rtmp://")
        .or_else(|| url.strip_prefix("rtmps://"));
    match rest {
        Some(rest) if rest.contains('/') && !rest.starts_with('/') => Ok(()),
        _ => Err(SpecError::new(
            field,
            format!("{url:?} is not an rtmp://host[:port]/app[/key] or srt://host:port URL"),
        )),
    }
}

fn check_srt_url(field: &str, url: &str, rest: &str) -> Result<(), SpecError> {
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_end_matches('/');
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port > 0);
    if port.is_none() {
        return Err(SpecError::new(
            field,
            format!("{url:?} is not an srt://host:port[?options] URL"),
        ));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "mode" if value != "caller" => {
                return Err(SpecError::new(
                    field,
                    format!("mode={value}: scorecast connects to SRT peers as a caller"),
                ))
            }
            "passphrase" if !(10..=79).contains(&value.len()) => {
                return Err(SpecError::new(
                    field,
                    "an SRT passphrase is 10 to 79 characters",
                ))
            }
            "latency" if value.parse::<u32>().is_err() => {
                return Err(SpecError::new(
                    field,
                    format!("latency={value:?} is not a whole number of milliseconds"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RelaySpec {
        serde_json::from_str(json).expect("valid JSON")
    }

    #[test]
    fn srt_urls_and_passphrases_are_taken() {
        let s = spec(
            r#"{ "id": "remote", "ingest": { "stream_key": "remote-key", "srt_passphrase": "long-enough-secret" },
                 "outputs": [ { "id": "venue", "url": "srt://venue.example:9000?passphrase=long-enough-secret&latency=200&mode=caller" } ] }"#,
        );
        assert_eq!(s.validate(), Ok(()));
        let pull =
            spec(r#"{ "id": "far", "ingest": { "url": "srt://203.0.113.10:9000?latency=300" } }"#);
        assert_eq!(pull.validate(), Ok(()));
    }

    #[test]
    fn contract_example_is_valid() {
        let s = spec(
            r#"{ "id": "final", "ingest": { "stream_key": "final-key" },
                 "overlay": { "scores_url": "http://scores.example/api/match/42", "poll_interval": "1s" },
                 "hls": { "renditions": ["720p"] },
                 "outputs": [ { "id": "youtube", "url": "rtmp://a.rtmp.youtube.com/live2/KEY" } ] }"#,
        );
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn the_queue_contract_example_is_valid() {
        let s = spec(
            r#"{ "id": "community", "ingest": { "stream_key": "house-key" },
                 "queue": {"turn": "20m", "block_kicked": true, "block_for": "10m"} }"#,
        );
        assert_eq!(s.validate(), Ok(()));
        let rules = s.queue.expect("a queue").rules();
        assert_eq!(rules.turn, Duration::from_secs(1200));
        assert_eq!(rules.block_for, Duration::from_secs(600));
        assert!(rules.block_kicked);
        assert_eq!(rules.grace, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"queue":{"turn":"soon"}}"#,
                "queue.turn",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"queue":{"turn":"20m","block_for":"500ms"}}"#,
                "queue.block_for",
            ),
            (r#"{"id":"a/b","ingest":{"stream_key":"k"}}"#, "id"),
            (r#"{"id":"a","ingest":{}}"#, "ingest"),
            (
                r#"{"id":"same","ingest":{"stream_key":"same"}}"#,
                "ingest.stream_key",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k","url":"rtmp://h/a/b"}}"#,
                "ingest",
            ),
            (r#"{"id":"a","ingest":{"url":"http://h/a"}}"#, "ingest.url"),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"hls":{"renditions":["4k"]}}"#,
                "hls.renditions[0]",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"hls":{"dvr":"5s"}}"#,
                "hls.dvr",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"hls":{"format":"fmp4","low_latency":true}}"#,
                "hls.low_latency",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"hls":{"format":"fmp4","renditions":[{"name":"audio","width":640,"height":360,"video_kbps":800}]}}"#,
                "hls.renditions",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"rtmp://h/a/k"},{"id":"y","url":"rtmp://h/a/k"}]}"#,
                "outputs[1].id",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"youtube"}]}"#,
                "outputs[0].url",
            ),
            (r#"{"id":"a","ingest":{"url":"srt://h"}}"#, "ingest.url"),
            (
                r#"{"id":"a","ingest":{"url":"srt://h:9000?mode=listener"}}"#,
                "ingest.url",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"srt://h:9000?passphrase=short"}]}"#,
                "outputs[0].url",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"srt://h:9000?latency=soon"}]}"#,
                "outputs[0].url",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k","srt_passphrase":"short"}}"#,
                "ingest.srt_passphrase",
            ),
            (
                r#"{"id":"a","ingest":{"url":"srt://h:9000","srt_passphrase":"long-enough-secret"}}"#,
                "ingest.srt_passphrase",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(spec(json).validate().unwrap_err().field, field, "{json}");
        }
    }
}
