//! The drop-in for the Flask overlay relay: `[compat]` in the config, and what a
//! `/start_stream` relay is made of under it.
//!
//! Owns the translation from a stream name to a relay spec (pull from `ingest`, an overlay
//! polling `scores_url`, logos from `images_url`, the destination's and the HLS settings) and
//! back (which relay a stream name is, for `/stop_stream` and `/list_streams`). It must not
//! know about HTTP: the handlers in `api::handlers` call it, and `api` serves the routes on
//! `listen` too.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::relay::spec::{
    check_name, HlsSpec, IngestSpec, OutputSpec, OverlaySpec, RelaySpec, SpecError,
};
use crate::render::Corner;
use crate::scores::Mapping;

/// The id of the destination a `/start_stream` relay pushes to (its `youtube_url`).
pub const OUTPUT_ID: &str = "youtube";
/// Where `/start_stream`'s stream name goes in a template.
pub const PLACEHOLDER: &str = "{stream_name}";
/// The longest stream name a pulling relay takes.
pub const MAX_STREAM_NAME: usize = 128;
/// What a pulled stream name may hold besides ASCII letters and digits: the characters an
/// RTMP URL's path carries as they are (RFC 3986 `pchar`, not `%`). nginx-rtmp takes the
/// stream name verbatim, with no URL-decoding, so the name goes into `ingest` unchanged; in
/// `scores_url` it is percent-encoded.
pub const STREAM_NAME_PUNCTUATION: &str = "-._~!$&'()*+,;=:@";

/// `[compat]`: every key optional; absent, `/start_stream` works as it did before.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatSettings {
    /// The compatible routes on a listener of their own as well (the old service's port).
    pub listen: Option<SocketAddr>,
    /// Relays pull from this RTMP URL (`rtmp://localhost:1935/live/{stream_name}`) instead of
    /// taking the caster's push under the stream name.
    pub ingest: Option<String>,
    /// Every relay gets an overlay polling this URL (`{stream_name}` substituted).
    pub scores_url: Option<String>,
    /// Where logos named by a relative path or a bare file name are fetched from.
    pub images_url: Option<String>,
    /// The overlay's fields, as in a relay's `overlay`.
    pub map: Mapping,
    pub poll_interval: Option<String>,
    pub stale_after: Option<String>,
    pub position: Corner,
    pub margin: Option<u32>,
    pub allow_private: bool,
    /// The YouTube destination's encode.
    pub outputs: CompatOutput,
    /// The relay's HLS.
    pub hls: HlsSpec,
    /// The queue relay the seed's queue routes (`/queue-json`, `/queue-list`,
    /// `/update-timer/{seconds}`, `/update-block-toggle/`) act on.
    pub queue_relay: Option<String>,
}

/// `[compat.outputs]`: the destination `/start_stream` pushes to, as a relay's `outputs[]`
/// without its id and URL.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatOutput {
    pub preset: Option<String>,
    pub height: Option<u32>,
    pub video_kbps: Option<u32>,
    pub max_retries: Option<u32>,
}

/// `name` with every byte but the URL's unreserved ones percent-encoded, for `scores_url`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn fill(template: &str, name: &str) -> String {
    template.replace(PLACEHOLDER, &encode(name))
}

impl CompatSettings {
    /// Whether `/start_stream` relays pull, so a stream name is not a stream key of ours.
    pub fn pulls(&self) -> bool {
        self.ingest.is_some()
    }

    /// Checks a stream name: a pulled one is an nginx-rtmp stream name
    /// ([`STREAM_NAME_PUNCTUATION`]); a pushed one is a stream key on our RTMP server.
    pub fn check_stream_name(&self, name: &str) -> Result<(), SpecError> {
        if !self.pulls() {
            return check_name("stream_name", name);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || STREAM_NAME_PUNCTUATION.contains(c);
        if name.is_empty() || name.len() > MAX_STREAM_NAME || !name.chars().all(allowed) {
            return Err(SpecError::new(
                "stream_name",
                format!(
                    "{name:?} must be 1 to {MAX_STREAM_NAME} characters: ASCII letters, digits \
                     and {STREAM_NAME_PUNCTUATION}"
                ),
            ));
        }
        Ok(())
    }

    /// Where a relay for stream `name` takes its input from.
    pub fn ingest_for(&self, name: &str) -> IngestSpec {
        match &self.ingest {
            Some(template) => IngestSpec {
                stream_key: None,
                url: Some(template.replace(PLACEHOLDER, name)),
                ..IngestSpec::default()
            },
            None => IngestSpec {
                stream_key: Some(name.to_owned()),
                ..IngestSpec::default()
            },
        }
    }

    /// The overlay of a relay for stream `name`; none without `scores_url`.
    pub fn overlay_for(&self, name: &str) -> Option<OverlaySpec> {
        let template = self.scores_url.as_ref()?;
        Some(OverlaySpec {
            scores_url: Some(fill(template, name)),
            poll_interval: self.poll_interval.clone(),
            map: self.map.clone(),
            stale_after: self.stale_after.clone(),
            position: self.position,
            margin: self.margin,
            allow_private: self.allow_private,
            logo_base: self.images_url.clone(),
        })
    }

    /// The relay `/start_stream` makes for stream `name`, pushing to `url`, under `id`.
    pub fn spec_for(&self, id: &str, name: &str, url: &str) -> RelaySpec {
        let mut output = OutputSpec::new(OUTPUT_ID, url);
        let o = &self.outputs;
        if let Some(preset) = &o.preset {
            output.preset = preset.clone();
        }
        output.height = o.height;
        output.video_kbps = o.video_kbps;
        output.max_retries = o.max_retries;
        RelaySpec {
            id: id.to_owned(),
            ingest: self.ingest_for(name),
            overlay: self.overlay_for(name),
            hls: self.hls.clone(),
            outputs: vec![output],
            transcode: true,
            queue: None,
            record: None,
            graphics: None,
        }
    }

    /// The stream name of a relay `/start_stream` could have made: its stream key, or the
    /// name its pull URL was filled with.
    pub fn name_of(&self, spec: &RelaySpec) -> Option<String> {
        if let Some(key) = &spec.ingest.stream_key {
            return Some(key.clone());
        }
        let (template, url) = (self.ingest.as_ref()?, spec.ingest.url.as_ref()?);
        let (before, after) = template.split_once(PLACEHOLDER)?;
        let name = url.strip_prefix(before)?.strip_suffix(after)?;
        self.check_stream_name(name).ok()?;
        (template.replace(PLACEHOLDER, name) == *url).then(|| name.to_owned())
    }

    /// Checks the section by building the relay it would make, naming the `compat.` key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(id) = &self.queue_relay {
            crate::relay::spec::check_name("compat.queue_relay", id)
                .map_err(|e| (e.field, e.message))?;
        }
        if let Some(template) = &self.ingest {
            if !template.contains(PLACEHOLDER) {
                return Err((
                    "compat.ingest".to_owned(),
                    format!("must hold {PLACEHOLDER}, where each stream's name goes"),
                ));
            }
        }
        let spec = self.spec_for(
            "compat-check",
            "stream",
            "rtmp://a.rtmp.youtube.com/live2/key",
        );
        spec.validate()
            .map_err(|e| (compat_key(&e.field), e.message))
    }
}

/// The `[compat]` key a relay field comes from.
fn compat_key(field: &str) -> String {
    let key = if field == "ingest.url" {
        "ingest".to_owned()
    } else if field == "overlay.logo_base" {
        "images_url".to_owned()
    } else if let Some(rest) = field.strip_prefix("overlay.") {
        rest.to_owned()
    } else if let Some(rest) = field.strip_prefix("outputs[0].") {
        format!("outputs.{rest}")
    } else {
        field.to_owned()
    };
    format!("compat.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulling() -> CompatSettings {
        CompatSettings {
            ingest: Some("rtmp://localhost:1935/live/{stream_name}".to_owned()),
            scores_url: Some("http://scores:8000/match/{stream_name}?full=1".to_owned()),
            images_url: Some("http://images:3000/".to_owned()),
            ..CompatSettings::default()
        }
    }

    #[test]
    fn names_are_encoded_into_the_templates_and_read_back() {
        let compat = pulling();
        let name = "final:2@eu+1!(x)";
        let spec = compat.spec_for("s-1", name, "rtmp://a.rtmp.youtube.com/live2/k");
        assert_eq!(
            spec.ingest.url.as_deref(),
            Some("rtmp://localhost:1935/live/final:2@eu+1!(x)")
        );
        let overlay = spec.overlay.clone().expect("an overlay");
        assert_eq!(
            overlay.scores_url.as_deref(),
            Some("http://scores:8000/match/final%3A2%40eu%2B1%21%28x%29?full=1")
        );
        assert_eq!(overlay.logo_base.as_deref(), Some("http://images:3000/"));
        assert_eq!(spec.ingest.stream_key, None);
        assert_eq!(compat.name_of(&spec).as_deref(), Some(name));
        assert!(compat.check_stream_name(name).is_ok());
        for bad in ["final 2", "a/b", "a?b", "a#b", "50%", "ü", ""] {
            assert!(compat.check_stream_name(bad).is_err(), "{bad:?}");
        }
        spec.validate().expect("a valid relay");
    }

    #[test]
    fn without_ingest_the_name_is_the_stream_key() {
        let compat = CompatSettings::default();
        let spec = compat.spec_for("s-1", "match1", "rtmp://a.rtmp.youtube.com/live2/k");
        assert_eq!(spec.ingest.stream_key.as_deref(), Some("match1"));
        assert!(spec.overlay.is_none());
        assert_eq!(compat.name_of(&spec).as_deref(), Some("match1"));
        assert!(compat.check_stream_name("final:2").is_err());
    }

    #[test]
    fn a_pull_url_of_another_shape_is_no_stream_name() {
        let compat = pulling();
        let mut spec = compat.spec_for("s-1", "a", "rtmp://a.rtmp.youtube.com/live2/k");
        spec.ingest.url = Some("rtmp://elsewhere/live/a".to_owned());
        assert_eq!(compat.name_of(&spec), None);
    }

    #[test]
    fn bad_settings_name_the_compat_key() {
        let bad = |compat: CompatSettings| compat.validate().unwrap_err().0;
        let mut c = pulling();
        c.ingest = Some("rtmp://localhost/live/fixed".to_owned());
        assert_eq!(bad(c), "compat.ingest");
        let mut c = pulling();
        c.ingest = Some("http://localhost/live/{stream_name}".to_owned());
        assert_eq!(bad(c), "compat.ingest");
        let mut c = pulling();
        c.poll_interval = Some("soon".to_owned());
        assert_eq!(bad(c), "compat.poll_interval");
        let mut c = pulling();
        c.images_url = Some("ftp://images/".to_owned());
        assert_eq!(bad(c), "compat.images_url");
        let mut c = pulling();
        c.outputs.preset = Some("myspace".to_owned());
        assert_eq!(bad(c), "compat.outputs.preset");
        let mut c = pulling();
        c.map.insert("home.nickname".to_owned(), "/x".to_owned());
        assert_eq!(bad(c), "compat.map");
        pulling().validate().expect("valid");
    }
}
