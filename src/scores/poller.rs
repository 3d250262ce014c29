//! The scores API poller: one task per relay with a `scores_url`.
//!
//! Every `interval` it GETs the URL, with `If-None-Match` / `If-Modified-Since` when the server
//! gave an ETag or Last-Modified, timeouts shorter than the interval, and the body capped at
//! 1 MiB. It fetches team logos when their URLs change, within [`super::logos`]' limits, and
//! keeps them scaled to the size the scorebug draws them at. Every fetch goes through
//! [`super::guard`]'s client: public addresses only unless the relay allows private ones. It
//! reports each outcome on a channel and backs off on errors. It never decides what is on
//! screen: the relay's [`super::ScoreKeeper`] does.

use std::sync::Arc;
use std::time::Duration;

use image::RgbaImage;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::guard::{self, redact};
use super::logos::{self, LogoCache, MAX_LOGO_BYTES, MAX_URL_BYTES};
use super::{parse, Mapping, Scoreboard};

/// The largest scores body read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Errors back off up to this delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The timeout's floor, for very short intervals.
const MIN_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub url: String,
    pub interval: Duration,
    pub mapping: Mapping,
    /// Fetch from private, loopback and link-local addresses too (`overlay.allow_private`).
    pub allow_private: bool,
    /// The side of the square the scorebug draws logos in ([`crate::render::logo_size`]).
    pub logo_size: u32,
    /// What a relative logo URL is taken against (`overlay.logo_base`).
    pub logo_base: Option<String>,
    /// JSON Pointers into the answer whose values graphics layers are bound to.
    pub bindings: Vec<String>,
}

/// The URL of a logo the scores name: as given when absolute; against `base` (as a directory,
/// so `http://h:3000/img` and `http://h:3000/img/` both give `http://h:3000/img/a.png` for
/// `a.png`) when relative.
pub fn logo_url(logo: &str, base: Option<&str>) -> Result<String, String> {
    use reqwest::Url;
    if let Ok(url) = Url::parse(logo) {
        return Ok(url.into());
    }
    let base = base.ok_or("not an absolute URL, and the relay has no overlay.logo_base")?;
    let mut base = Url::parse(base).map_err(|e| format!("overlay.logo_base: {e}"))?;
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(logo.trim_start_matches('/'))
        .map(String::from)
        .map_err(|e| format!("not a URL: {e}"))
}

/// Decoded logos for the two teams, scaled to the size the scorebug draws them at.
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
    /// The value at each of [`PollerSettings::bindings`] that the answer has.
    pub bound: Vec<(String, serde_json::Value)>,
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

/// What one poll of a graphics data URL found: the answer's JSON, or why there is none.
pub type DataUpdate = Result<serde_json::Value, String>;

/// Polls `url` for JSON every `interval` (backing off on failures as the scores poller does)
/// and sends each answer that changed, until the receiver is dropped. A graphics layer's
/// second data source (`graphics.data_url`).
pub fn spawn_data(
    url: String,
    interval: Duration,
    allow_private: bool,
    updates: mpsc::UnboundedSender<DataUpdate>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match guard::client(timeout_for(interval), allow_private) {
            Ok(c) => c,
            Err(e) => {
                let _ = updates.send(Err(format!("cannot build the HTTP client: {e}")));
                return;
            }
        };
        let (mut failures, mut etag): (u32, Option<String>) = (0, None);
        loop {
            let update = fetch_json(&client, &url, allow_private, &mut etag, interval).await;
            failures = match &update {
                Some(Err(_)) => failures + 1,
                _ => 0,
            };
            if let Some(update) = update {
                if updates.send(update).is_err() {
                    return;
                }
            }
            tokio::time::sleep(next_poll_in(interval, failures)).await;
        }
    })
}

/// A picture of at most `max` bytes (PNG or JPEG) fetched from `url` (a graphics image
/// layer's), decoded off the runtime's threads.
pub async fn fetch_image(url: &str, allow_private: bool, max: usize) -> Result<RgbaImage, String> {
    let client = guard::client(IMAGE_TIMEOUT, allow_private).map_err(|e| e.to_string())?;
    check_address(url, allow_private)?;
    let response = client.get(url).send().await.map_err(request_error)?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = read_capped(response, max).await?;
    tokio::task::spawn_blocking(move || {
        image::load_from_memory(&bytes)
            .map(|i| i.to_rgba8())
            .map_err(|e| format!("not a picture: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// How long fetching a graphics picture may take.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One GET of `url` for JSON, revalidated with its `ETag`: `None` when unchanged.
async fn fetch_json(
    client: &reqwest::Client,
    url: &str,
    allow_private: bool,
    etag: &mut Option<String>,
    interval: Duration,
) -> Option<DataUpdate> {
    if let Err(e) = check_address(url, allow_private) {
        return Some(Err(e));
    }
    let mut request = client.get(url);
    if let Some(tag) = etag.as_deref() {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Some(Err(format!("no answer within {:?}", timeout_for(interval))))
        }
        Err(e) => return Some(Err(request_error(e))),
    };
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        return None;
    }
    if !status.is_success() {
        return Some(Err(format!("HTTP {status}")));
    }
    let new_tag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match read_capped(response, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    match serde_json::from_slice(&body) {
        Ok(json) => {
            *etag = new_tag;
            Some(Ok(json))
        }
        Err(e) => Some(Err(format!("not JSON: {e}"))),
    }
}

/// Refuses a URL the guard does not let through (a literal private address) unless
/// `allow_private`; names are checked when the client resolves them.
fn check_address(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    guard::check_url(&parsed).map_err(|e| e.to_string())
}

/// How long to wait before the next poll: `interval`, doubled for each failure in a row
/// (`failures`), up to [`MAX_BACKOFF`] (or `interval`, if longer).
fn next_poll_in(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    (interval * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF.max(interval))
}

/// The request timeout for an interval: shorter than it, with a floor.
pub fn timeout_for(interval: Duration) -> Duration {
    (interval * 4 / 5).max(MIN_TIMEOUT)
}

async fn run(settings: PollerSettings, updates: mpsc::UnboundedSender<PollUpdate>) {
    let timeout = timeout_for(settings.interval);
    let client = match guard::client(timeout, settings.allow_private) {
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
        logos: LogoCache::default(),
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
        tokio::time::sleep(next_poll_in(poller.settings.interval, failures)).await;
    }
}

struct Poller {
    client: reqwest::Client,
    settings: PollerSettings,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Scaled logos (or why there is none) by URL, for the last few URLs.
    logos: LogoCache,
}

/// Why a logo URL gave no logo; only refusals are remembered for the URL.
enum LogoFailure {
    /// The network or the server failed: worth trying again at the next poll.
    Transient(String),
    /// The logo itself is refused (over a limit, not an image, a refused address, an HTTP
    /// error): kept in the cache, so it is not fetched again.
    Refused(String),
}

impl Poller {
    async fn poll_once(&mut self) -> PollUpdate {
        if let Err(e) = self.check(&self.settings.url) {
            return PollUpdate::Failed(e);
        }
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
            Err(e) => return PollUpdate::Failed(request_error(e)),
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
        let body = match read_capped(response, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(e) => return PollUpdate::Failed(e),
        };
        let board = match parse(&body, &self.settings.mapping) {
            Ok(b) => b,
            Err(e) => return PollUpdate::Failed(format!("unusable scores: {e}")),
        };
        let bound = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(raw) => self
                .settings
                .bindings
                .iter()
                .filter_map(|p| Some((p.clone(), raw.pointer(p)?.clone())))
                .collect(),
            Err(_) => Vec::new(),
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
            let resolved = logo_url(&url, self.settings.logo_base.as_deref());
            match async { self.logo(&resolved?).await }.await {
                Ok(logo) => *slot = Some(logo),
                Err(e) => logo_error = Some(format!("{side}.logo {}: {e}", redact(&url))),
            }
        }
        PollUpdate::Board(Box::new(BoardUpdate {
            board,
            logos,
            logo_error,
            bound,
        }))
    }

    fn check(&self, url: &str) -> Result<(), String> {
        check_address(url, self.settings.allow_private)
    }

    /// The scaled logo at `url`, from the cache or fetched.
    async fn logo(&mut self, url: &str) -> Result<Arc<RgbaImage>, String> {
        if let Some(outcome) = self.logos.get(url) {
            return outcome;
        }
        match self.fetch_logo(url).await {
            Ok(logo) => {
                self.logos.insert(url.to_owned(), Ok(logo.clone()));
                Ok(logo)
            }
            Err(LogoFailure::Refused(e)) => {
                self.logos.insert(url.to_owned(), Err(e.clone()));
                Err(e)
            }
            Err(LogoFailure::Transient(e)) => Err(e),
        }
    }

    async fn fetch_logo(&self, url: &str) -> Result<Arc<RgbaImage>, LogoFailure> {
        use LogoFailure::{Refused, Transient};
        if url.len() > MAX_URL_BYTES {
            return Err(Refused(format!("URL over {MAX_URL_BYTES} bytes")));
        }
        self.check(url).map_err(Refused)?;
        let response = self.client.get(url).send().await.map_err(|e| {
            if guard::refusal(&e).is_some() || e.is_builder() {
                Refused(request_error(e))
            } else {
                Transient(request_error(e))
            }
        })?;
        if !response.status().is_success() {
            return Err(Refused(format!("HTTP {}", response.status())));
        }
        let body = read_capped(response, MAX_LOGO_BYTES).await.map_err(|e| {
            if e.starts_with("body over") {
                Refused(e)
            } else {
                Transient(e)
            }
        })?;
        let side = self.settings.logo_size;
        let logo = tokio::task::spawn_blocking(move || logos::decode_scaled(&body, side))
            .await
            .map_err(|e| Transient(format!("decoding: {e}")))?
            .map_err(|e| Refused(e.to_string()))?;
        Ok(Arc::new(logo))
    }
}

/// A failed request, said without its URL (which may carry credentials): the guard's refusal
/// as it is, or the error's chain.
fn request_error(e: reqwest::Error) -> String {
    if let Some(refused) = guard::refusal(&e) {
        return refused.to_string();
    }
    if e.is_timeout() {
        return "no answer in time".to_owned();
    }
    format!("request failed: {}", error_chain(&e.without_url()))
}

/// Reads a body, refusing it once it is over `max` bytes: at once when Content-Length says
/// so, else as soon as more has arrived (whatever Content-Length said, or without one).
async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let over = || format!("body over {} ({max} bytes)", size_text(max));
    if response.content_length().is_some_and(|l| l > max as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(over());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(format!(
                    "reading the body: {}",
                    error_chain(&e.without_url())
                ))
            }
        }
    }
}

/// `2 MiB`, `512 KiB`: a byte limit as people say it.
fn size_text(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
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
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
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
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn relative_logos_are_taken_against_the_base() {
        let base = Some("http://images.example:3000");
        let url = |logo: &str, base: Option<&str>| logo_url(logo, base);
        assert_eq!(
            url("navi.png", base).as_deref(),
            Ok("http://images.example:3000/navi.png")
        );
        assert_eq!(
            url("teams/g2 logo.png", Some("http://h:3000/img")).as_deref(),
            Ok("http://h:3000/img/teams/g2%20logo.png")
        );
        assert_eq!(
            url("/navi.png", Some("http://h:3000/img/")).as_deref(),
            Ok("http://h:3000/img/navi.png")
        );
        assert_eq!(
            url("https://cdn.example/x.png", base).as_deref(),
            Ok("https://cdn.example/x.png")
        );
        assert!(url("navi.png", None)
            .unwrap_err()
            .contains("overlay.logo_base"));
    }

    #[test]
    fn limits_are_said_as_people_say_them() {
        assert_eq!(size_text(MAX_LOGO_BYTES), "2 MiB");
        assert_eq!(size_text(MAX_BODY_BYTES), "1 MiB");
        assert_eq!(size_text(1536), "1536 bytes");
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
