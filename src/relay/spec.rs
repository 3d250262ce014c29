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

/// Names of the renditions this version can encode, with their frame heights.
pub const RENDITION_PRESETS: &[(&str, u32)] = &[
    ("1080p", 1080),
    ("720p", 720),
    ("480p", 480),
    ("360p", 360),
    ("240p", 240),
];

/// The longest id or stream key we accept; they end up in paths and URLs.
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The JSON field (or config key below the relay) that is wrong, e.g. `outputs[1].url`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsSpec {
    #[serde(default)]
    pub renditions: Vec<String>,
}

/// No rendition named means one rendition at the program's own size.
impl Default for HlsSpec {
    fn default() -> Self {
        Self {
            renditions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub id: String,
    pub url: String,
}

impl RelaySpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("id", &self.id)?;
        match (&self.ingest.stream_key, &self.ingest.url) {
            (Some(key), None) => check_name("ingest.stream_key", key)?,
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
        if let Some(overlay) = &self.overlay {
            if let Some(url) = &overlay.scores_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(SpecError::new(
                        "overlay.scores_url",
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
        match self.hls.renditions.as_slice() {
            [name] => {
                if rendition_height(name).is_none() {
                    let names: Vec<_> = RENDITION_PRESETS.iter().map(|(n, _)| *n).collect();
                    return Err(SpecError::new(
                        "hls.renditions[0]",
                        format!(
                            "unknown rendition {name:?}; expected one of {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
            [] => {}
            _ => {
                return Err(SpecError::new(
                    "hls.renditions",
                    "this version encodes a single rendition; the ABR ladder is not built yet",
                ))
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, output) in self.outputs.iter().enumerate() {
            check_name(&format!("outputs[{i}].id"), &output.id)?;
            check_rtmp_url(&format!("outputs[{i}].url"), &output.url)?;
            if !ids.insert(output.id.as_str()) {
                return Err(SpecError::new(
                    format!("outputs[{i}].id"),
                    format!("duplicate output id {:?}", output.id),
                ));
            }
        }
        Ok(())
    }
}

impl RelaySpec {
    /// Checks that no rendition is taller than the program: renditions never upscale.
    pub fn check_fits(&self, program_height: u32) -> Result<(), SpecError> {
        for (i, name) in self.hls.renditions.iter().enumerate() {
            if rendition_height(name).is_some_and(|h| h > program_height) {
                return Err(SpecError::new(
                    format!("hls.renditions[{i}]"),
                    format!("{name} is taller than the program ({program_height}p); renditions never upscale"),
                ));
            }
        }
        Ok(())
    }
}

/// The frame height of a named rendition preset.
pub fn rendition_height(name: &str) -> Option<u32> {
    RENDITION_PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
}

/// Ids and stream keys become path segments and URL parts: keep them plain.
fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
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

fn check_rtmp_url(field: &str, url: &str) -> Result<(), SpecError> {
    let rest = url
        .strip_prefix("rtmp://")
        .or_else(|| url.strip_prefix("rtmps://"));
    match rest {
        Some(rest) if rest.contains('/') && !rest.starts_with('/') => Ok(()),
        _ => Err(SpecError::new(
            field,
            format!("{url:?} is not an rtmp://host[:port]/app[/key] URL"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RelaySpec {
        serde_json::from_str(json).expect("valid JSON")
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
    fn errors_name_the_field() {
        let cases = [
            (r#"{"id":"a/b","ingest":{"stream_key":"k"}}"#, "id"),
            (r#"{"id":"a","ingest":{}}"#, "ingest"),
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
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"rtmp://h/a/k"},{"id":"y","url":"rtmp://h/a/k"}]}"#,
                "outputs[1].id",
            ),
            (
                r#"{"id":"a","ingest":{"stream_key":"k"},"outputs":[{"id":"y","url":"youtube"}]}"#,
                "outputs[0].url",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(spec(json).validate().unwrap_err().field, field, "{json}");
        }
    }
}
