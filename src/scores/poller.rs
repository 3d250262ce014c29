//! The scores API poller: one task per relay with a `scores_url`.
//!
//! Every `interval` it GETs the URL, with `If-None-Match` / `If-Modified-Since` when the server
//! gave an ETag or Last-Modified, timeouts shorter than the interval, and the body capped at
//! 1 MiB. It decodes team logos when their URLs change. It reports each outcome on a channel
//! and backs off on errors. It never decides what is on screen: the relay's
//! [`super::ScoreKeeper`] does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use image::RgbaImage;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{parse, Mapping, Scoreboard};

/// The largest body (scores JSON or logo) read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Errors back off up to this delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The timeout's floor, for very short intervals.
const MIN_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub url: String,
    pub interval: Duration,
    pub mapping: Mapping,
}

/// Decoded logos for the two teams.
#[derive(Debug, Clone, Default)]
pub struct LogoSet {
    pub home: Option<Arc<RgbaImage>>,
    pub away: Option<Arc<RgbaImage>>,
}

/// A usable scoreboard; `logo_error` says why a named logo could not be used.
#[derive(Debug, Clone)]
pub struct BoardUpdate {
    pub board: Scoreboard,
    pub logos: LogoSet,
    pub logo_error: Option<String>,
}

/// What one poll found.
#[derive(Debug, Clone)]
pub enum PollUpdate {
    /// A scoreboard, with its logos.
    Board(Box<BoardUpdate>),
    /// 304: the last scoreboard still holds.
    NotModified,
    Failed(String),
}

/// Starts polling; the task ends when the receiver is dropped or the handle aborted.
pub fn spawn(
    settings: PollerSettings,
    updates: mpsc::UnboundedSender<PollUpdate>,
) -> JoinHandle<()> {
    tokio::spawn(run(settings, updates))
}

/// The request timeout for an interval: shorter than it, with a floor.
pub fn timeout_for(interval: Duration) -> Duration {
    (interval * 4 / 5).max(MIN_TIMEOUT)
}

async fn run(settings: PollerSettings, updates: mpsc::UnboundedSender<PollUpdate>) {
    let timeout = timeout_for(settings.interval);
    let client = match reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("scorecast/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = updates.send(PollUpdate::Failed(format!(
                "cannot build the HTTP client: {e}"
            )));
            return;
        }
    };
    let mut poller = Poller {
        client,
        settings,
        etag: None,
        last_modified: None,
        logos: HashMap::new(),
    };
    let mut failures: u32 = 0;
    loop {
        let update = poller.poll_once().await;
        failures = match update {
            PollUpdate::Failed(_) => failures + 1,
            _ => 0,
        };
        if updates.send(update).is_err() {
            return;
        }
        let delay = if failures == 0 {
            poller.settings.interval
        } else {
            (poller.settings.interval * 2u32.saturating_pow(failures.min(16)))
                .min(MAX_BACKOFF.max(poller.settings.interval))
        };
        tokio::time::sleep(delay).await;
    }
}

struct Poller {
    client: reqwest::Client,
    settings: PollerSettings,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Decoded logos by URL; `None` for a URL that is not an image.
    logos: HashMap<String, Option<Arc<RgbaImage>>>,
}

impl Poller {
    async fn poll_once(&mut self) -> PollUpdate {
        let mut request = self.client.get(&self.settings.url);
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &self.last_modified {
            request = request.header(IF_MODIFIED_SINCE, modified);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return PollUpdate::Failed(format!(
                    "no answer within {:?}",
                    timeout_for(self.settings.interval)
                ))
            }
            Err(e) => return PollUpdate::Failed(format!("request failed: {}", error_chain(&e))),
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return PollUpdate::NotModified;
        }
        if !status.is_success() {
            return PollUpdate::Failed(format!("HTTP {status}"));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let body = match read_capped(response).await {
            Ok(b) => b,
            Err(e) => return PollUpdate::Failed(e),
        };
        let board = match parse(&body, &self.settings.mapping) {
            Ok(b) => b,
            Err(e) => return PollUpdate::Failed(format!("unusable scores: {e}")),
        };
        // Only a body we could use is worth revalidating against.
        self.etag = etag;
        self.last_modified = last_modified;
        let mut logo_error = None;
        let mut logos = LogoSet::default();
        for (side, url, slot) in [
            ("home", board.home.logo.clone(), &mut logos.home),
            ("away", board.away.logo.clone(), &mut logos.away),
        ] {
            let Some(url) = url else { continue };
            if !self.logos.contains_key(&url) {
                let loaded = self.fetch_logo(&url).await;
                if let Err(e) = &loaded {
                    logo_error = Some(format!("{side}.logo: {e}"));
                }
                self.logos.insert(url.clone(), loaded.ok());
            } else if self.logos.get(&url).is_some_and(Option::is_none) {
                logo_error = Some(format!("{side}.logo: {url} is not a usable image"));
            }
            *slot = self.logos.get(&url).cloned().flatten();
        }
        PollUpdate::Board(Box::new(BoardUpdate {
            board,
            logos,
            logo_error,
        }))
    }

    async fn fetch_logo(&self, url: &str) -> Result<Arc<RgbaImage>, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let body = read_capped(response).await?;
        let image = tokio::task::spawn_blocking(move || {
            image::load_from_memory(&body).map(|i| i.to_rgba8())
        })
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .map_err(|e| format!("{url} is not an image: {e}"))?;
        Ok(Arc::new(image))
    }
}

/// Reads a body, refusing anything over [`MAX_BODY_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|l| l > MAX_BODY_BYTES as u64)
    {
        return Err(format!("body over {MAX_BODY_BYTES} bytes"));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(format!("body over {MAX_BODY_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the body: {}", error_chain(&e))),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Parses a duration such as `1s`, `500ms` or `2.5s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| Duration::from_secs_f64(value * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn timeouts_are_shorter_than_the_interval() {
        assert_eq!(
            timeout_for(Duration::from_secs(1)),
            Duration::from_millis(800)
        );
        assert_eq!(timeout_for(Duration::from_millis(100)), MIN_TIMEOUT);
    }
}
