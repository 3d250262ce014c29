//! Scores: the scoreboard model, reading it from any JSON (built-in shape or JSON Pointers),
//! the rule that decides between the scores API and the operator ([`ScoreKeeper`]), the
//! poller that fetches the API ([`poller`]), the limits and cache of team logos ([`logos`]),
//! and the addresses fetches may reach ([`guard`]).
//!
//! Owns scores data only. It must not draw (that is [`crate::render`]) or touch pipelines.

pub mod guard;
pub mod logos;
pub mod poller;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// The longest team name, score, period, clock or status we keep.
const MAX_TEXT_CHARS: usize = 48;

/// One side of the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub name: String,
    /// A number or a string ("3", "245/6"): drawn as text.
    #[serde(deserialize_with = "number_or_string")]
    pub score: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo: Option<String>,
    /// `#RRGGBB`, drawn as a strip beside the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// The scoreboard as drawn: the built-in JSON shape of the scores API and of `PUT /score`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoreboard {
    pub home: Team,
    pub away: Team,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoresError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = Value::deserialize(d)?;
    text_of(&value).ok_or_else(|| serde::de::Error::custom("expected a number or a string"))
}

/// A JSON scalar as display text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The fields a mapping may set, in the built-in shape's dotted names.
pub const MAPPABLE_FIELDS: &[&str] = &[
    "home.name",
    "home.score",
    "home.logo",
    "home.color",
    "away.name",
    "away.score",
    "away.logo",
    "away.color",
    "period",
    "clock",
    "status",
];

/// Maps another API's JSON onto the built-in shape: dotted field → JSON Pointer.
pub type Mapping = BTreeMap<String, String>;

/// Checks a mapping's keys and pointers; the error names the bad key.
pub fn validate_mapping(mapping: &Mapping) -> Result<(), ScoresError> {
    for (field, pointer) in mapping {
        if !MAPPABLE_FIELDS.contains(&field.as_str()) {
            return Err(ScoresError::Field {
                field: field.clone(),
                message: format!(
                    "not a scoreboard field; expected one of {}",
                    MAPPABLE_FIELDS.join(", ")
                ),
            });
        }
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(ScoresError::Field {
                field: field.clone(),
                message: format!("{pointer:?} is not a JSON Pointer (it must start with '/')"),
            });
        }
    }
    Ok(())
}

/// Reads a scoreboard from an API body: the built-in shape, with `mapping` pointing at fields
/// elsewhere. Every required field must be there; the error names the first one missing.
pub fn parse(body: &[u8], mapping: &Mapping) -> Result<Scoreboard, ScoresError> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| ScoresError::NotJson(e.to_string()))?;
    let get = |field: &str| -> Option<&Value> {
        match mapping.get(field) {
            Some(pointer) => json.pointer(pointer),
            None => {
                let mut v = &json;
                for part in field.split('.') {
                    v = v.get(part)?;
                }
                Some(v)
            }
        }
    };
    let required = |field: &str| -> Result<String, ScoresError> {
        let missing = || ScoresError::Field {
            field: field.to_owned(),
            message: match mapping.get(field) {
                Some(p) => format!("nothing usable at {p}"),
                None => "missing".to_owned(),
            },
        };
        let text = get(field).and_then(text_of).ok_or_else(missing)?;
        if text.is_empty() {
            return Err(missing());
        }
        Ok(clip(text))
    };
    let optional = |field: &str| get(field).and_then(text_of).filter(|t| !t.is_empty());
    let team = |side: &str| -> Result<Team, ScoresError> {
        Ok(Team {
            name: required(&format!("{side}.name"))?,
            score: required(&format!("{side}.score"))?,
            logo: optional(&format!("{side}.logo")),
            color: optional(&format!("{side}.color")).map(clip),
        })
    };
    Ok(Scoreboard {
        home: team("home")?,
        away: team("away")?,
        period: optional("period").map(clip),
        clock: optional("clock").map(clip),
        status: optional("status").map(clip),
    })
}

impl Scoreboard {
    /// Checks what the types cannot for a scoreboard set by hand: the fields every scorebug
    /// draws are not blank, and no drawn text is longer than the scorebug can use. An API's
    /// body is clipped instead by [`parse`]; an operator is told.
    pub fn check(&self) -> Result<(), ScoresError> {
        let field = |field: &str, message: String| ScoresError::Field {
            field: field.to_owned(),
            message,
        };
        for (name, text) in [
            ("home.name", &self.home.name),
            ("home.score", &self.home.score),
            ("away.name", &self.away.name),
            ("away.score", &self.away.score),
        ] {
            if text.trim().is_empty() {
                return Err(field(name, "must not be empty".to_owned()));
            }
        }
        let drawn = [
            ("home.name", Some(&self.home.name)),
            ("home.score", Some(&self.home.score)),
            ("home.color", self.home.color.as_ref()),
            ("away.name", Some(&self.away.name)),
            ("away.score", Some(&self.away.score)),
            ("away.color", self.away.color.as_ref()),
            ("period", self.period.as_ref()),
            ("clock", self.clock.as_ref()),
            ("status", self.status.as_ref()),
        ];
        for (name, text) in drawn {
            if text.is_some_and(|t| t.chars().count() > MAX_TEXT_CHARS) {
                return Err(field(
                    name,
                    format!("longer than {MAX_TEXT_CHARS} characters"),
                ));
            }
        }
        Ok(())
    }
}

fn clip(text: String) -> String {
    if text.chars().count() <= MAX_TEXT_CHARS {
        text
    } else {
        text.chars().take(MAX_TEXT_CHARS).collect()
    }
}

/// Where the scoreboard on screen came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Manual,
}

/// Decides what is on screen, from the API's values and the operator's.
///
/// The rule: a manual value (PUT) holds until the scores API reports a scoreboard *different
/// from the last one it reported before the PUT*. An operator correcting a lagging or wrong
/// score is not overwritten by the same stale value on the next poll; as soon as the API has
/// news, it takes over again.
#[derive(Debug, Clone, Default)]
pub struct ScoreKeeper {
    current: Option<(Scoreboard, Source)>,
    /// When `current` was last confirmed (set, or re-reported by its source).
    confirmed_at: Option<Instant>,
    updated_at: Option<SystemTime>,
    /// The API's latest scoreboard.
    last_api: Option<Scoreboard>,
    /// While manual: the API's value at the time of the PUT.
    api_at_override: Option<Scoreboard>,
    pub last_error: Option<String>,
}

impl ScoreKeeper {
    /// The API reported `board`. Returns whether the scoreboard on screen changed.
    pub fn on_api(&mut self, board: Scoreboard, now: Instant) -> bool {
        self.last_error = None;
        self.last_api = Some(board.clone());
        if let Some((_, Source::Manual)) = &self.current {
            if self.api_at_override.as_ref() == Some(&board) {
                return false;
            }
        }
        self.api_at_override = None;
        let changed = self.current.as_ref().map(|(b, _)| b) != Some(&board);
        if changed || self.current.as_ref().map(|(_, s)| *s) != Some(Source::Api) {
            self.updated_at = Some(SystemTime::now());
        }
        self.current = Some((board, Source::Api));
        self.confirmed_at = Some(now);
        changed
    }

    /// The API answered 304: what it reported last still holds.
    pub fn on_not_modified(&mut self, now: Instant) {
        self.last_error = None;
        if let Some((_, Source::Api)) = &self.current {
            self.confirmed_at = Some(now);
        }
    }

    /// The API failed; the scoreboard on screen stays.
    pub fn on_api_error(&mut self, reason: String) {
        self.last_error = Some(reason);
    }

    /// The operator set `board`. Returns whether the scoreboard on screen changed.
    pub fn on_manual(&mut self, board: Scoreboard, now: Instant) -> bool {
        let changed = self.current.as_ref().map(|(b, _)| b) != Some(&board);
        self.api_at_override = self.last_api.clone();
        self.current = Some((board, Source::Manual));
        self.confirmed_at = Some(now);
        self.updated_at = Some(SystemTime::now());
        changed
    }

    pub fn current(&self) -> Option<(&Scoreboard, Source)> {
        self.current.as_ref().map(|(b, s)| (b, *s))
    }

    pub fn updated_at(&self) -> Option<SystemTime> {
        self.updated_at
    }

    /// Seconds since the scoreboard was last confirmed by its source.
    pub fn age(&self, now: Instant) -> Option<f64> {
        self.confirmed_at
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// Stale: the API's value has not been confirmed for `max_age`. Manual values, vouched for
    /// by the operator, never go stale.
    pub fn is_stale(&self, now: Instant, max_age: std::time::Duration) -> bool {
        match (&self.current, self.confirmed_at) {
            (Some((_, Source::Api)), Some(at)) => now.saturating_duration_since(at) > max_age,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn board(home: u32, away: u32) -> Scoreboard {
        parse(
            format!(r#"{{"home":{{"name":"Home","score":{home}}},"away":{{"name":"Away","score":"{away}"}}}}"#)
                .as_bytes(),
            &Mapping::new(),
        )
        .expect("valid")
    }

    #[test]
    fn built_in_shape_takes_numbers_and_strings() {
        let b = board(3, 12);
        assert_eq!((b.home.score.as_str(), b.away.score.as_str()), ("3", "12"));
        assert_eq!(b.period, None);
    }

    #[test]
    fn hand_set_scoreboards_need_names_and_scores() {
        assert_eq!(board(1, 0).check(), Ok(()));
        let mut b = board(1, 0);
        b.away.score = " ".to_owned();
        assert_eq!(
            b.check().unwrap_err().to_string(),
            "away.score: must not be empty"
        );
        let mut b = board(1, 0);
        b.period = Some("x".repeat(49));
        assert_eq!(
            b.check().unwrap_err().to_string(),
            "period: longer than 48 characters"
        );
    }

    #[test]
    fn api_text_is_clipped_but_logo_urls_are_kept_whole() {
        let long = "N".repeat(60);
        let logo = format!("https://cdn.example/{}.png", "l".repeat(80));
        let body = format!(
            r#"{{"home":{{"name":"{long}","score":1,"logo":"{logo}"}},"away":{{"name":"B","score":0}}}}"#
        );
        let b = parse(body.as_bytes(), &Mapping::new()).expect("valid");
        assert_eq!(b.home.name.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(b.home.logo.as_deref(), Some(logo.as_str()));
    }

    #[test]
    fn json_pointers_map_another_shape() {
        let body =
            br#"{"match":{"teams":[{"shortName":"NAVI","goals":2},{"shortName":"G2","goals":1}],
                        "minute":"67'","phase":"2H"}}"#;
        let mapping: Mapping = [
            ("home.name", "/match/teams/0/shortName"),
            ("home.score", "/match/teams/0/goals"),
            ("away.name", "/match/teams/1/shortName"),
            ("away.score", "/match/teams/1/goals"),
            ("clock", "/match/minute"),
            ("period", "/match/phase"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        validate_mapping(&mapping).expect("valid mapping");
        let b = parse(body, &mapping).expect("maps");
        assert_eq!(b.home.name, "NAVI");
        assert_eq!(b.away.score, "1");
        assert_eq!(b.clock.as_deref(), Some("67'"));
    }

    #[test]
    fn garbage_and_missing_fields_are_named() {
        assert!(matches!(
            parse(b"<html>", &Mapping::new()),
            Err(ScoresError::NotJson(_))
        ));
        let err = parse(
            br#"{"home":{"name":"A","score":1},"away":{"name":"B"}}"#,
            &Mapping::new(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "away.score: missing");
        let bad = [("home.goals".to_owned(), "/x".to_owned())]
            .into_iter()
            .collect();
        assert!(validate_mapping(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("home.goals"));
    }

    #[test]
    fn manual_value_holds_until_the_api_has_news() {
        let t0 = Instant::now();
        let mut k = ScoreKeeper::default();
        assert!(k.on_api(board(1, 0), t0));
        // The operator corrects the lagging API.
        assert!(k.on_manual(board(2, 0), t0));
        // The same stale value a second later does not overwrite the correction.
        assert!(!k.on_api(board(1, 0), t0 + Duration::from_secs(1)));
        assert_eq!(
            k.current().map(|(b, s)| (b.home.score.clone(), s)),
            Some(("2".into(), Source::Manual))
        );
        // The API catches up (or moves on): it takes over again.
        assert!(!k.on_api(board(2, 0), t0 + Duration::from_secs(2)));
        assert_eq!(k.current().map(|(_, s)| s), Some(Source::Api));
        assert!(k.on_api(board(2, 1), t0 + Duration::from_secs(3)));
    }

    #[test]
    fn api_values_go_stale_manual_ones_do_not() {
        let t0 = Instant::now();
        let max = Duration::from_secs(10);
        let mut k = ScoreKeeper::default();
        k.on_api(board(1, 0), t0);
        k.on_api_error("HTTP 500".into());
        assert!(!k.is_stale(t0 + Duration::from_secs(5), max));
        assert!(k.is_stale(t0 + Duration::from_secs(11), max));
        k.on_manual(board(1, 1), t0 + Duration::from_secs(11));
        assert!(!k.is_stale(t0 + Duration::from_secs(100), max));
    }
}
