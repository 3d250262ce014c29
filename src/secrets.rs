//! What must not leak: stream keys, destination keys (an RTMP URL's path beyond its app) and
//! credentials in a scores URL (user info, query). One function per kind of secret, for the
//! API's views of read-only callers and for log lines, and the relay's public id, which is
//! never its stream key.
//!
//! Owns the masked forms. It must not decide who sees what: the API picks [`Sight`] per
//! request, and each module logs the redacted form of what it names.

use std::io::Read;

use reqwest::Url;

use crate::relay::spec::RelaySpec;

/// What stands in for a secret.
pub const MASK: &str = "****";

/// Who is looking: an admin token (or the open API, which is admin by design) sees
/// everything; a read-only token or an anonymous viewer sees secrets masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    Full,
    Masked,
}

/// A stream key as a read-only caller sees it: never any of it.
pub fn stream_key(_key: &str) -> String {
    MASK.to_owned()
}

/// An RTMP URL as a read-only caller sees it: scheme, host, port and app, with the key (what
/// follows the app) and any user info or query masked: `rtmp://a.rtmp.youtube.com/live2/****`.
/// An SRT URL keeps its host and port: `srt://ingest.example:9000?****`.
pub fn rtmp_url(url: &str) -> String {
    let Ok(u) = Url::parse(url) else {
        return MASK.to_owned();
    };
    let mut out = origin(&u, true);
    if u.scheme() == "srt" {
        // Its options may hold the passphrase and a stream id naming a key.
        if u.query().is_some() {
            out.push('?');
            out.push_str(MASK);
        }
        return out;
    }
    let mut segments = u.path().trim_start_matches('/').splitn(2, '/');
    if let Some(app) = segments.next().filter(|a| !a.is_empty()) {
        out.push('/');
        out.push_str(app);
    }
    if segments.next().is_some_and(|rest| !rest.is_empty()) || u.query().is_some() {
        out.push('/');
        out.push_str(MASK);
    }
    out
}

/// A URL for a log line: scheme, host and port only (`rtmp://a.rtmp.youtube.com`,
/// `http://scores.example:8000`), for RTMP destinations and HTTP APIs alike.
pub fn url_for_log(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => origin(&u, false),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// An HTTP URL (a scores API, a logo) as a read-only caller and the logs see it: scheme,
/// host, port and path, with user info and query masked and the fragment dropped
/// (`https://****@api.example/m/42?****`).
pub fn http_url(url: &str) -> String {
    masked_http_url(url, &[])
}

/// [`http_url`], with every path segment that is one of `hidden` masked too.
fn masked_http_url(url: &str, hidden: &[&str]) -> String {
    let Ok(u) = Url::parse(url) else {
        return "(not a URL)".to_owned();
    };
    let mut out = origin(&u, true);
    let path: Vec<&str> = u
        .path()
        .split('/')
        .map(|segment| {
            if hidden.contains(&segment) {
                MASK
            } else {
                segment
            }
        })
        .collect();
    out.push_str(&path.join("/"));
    if u.query().is_some() {
        out.push('?');
        out.push_str(MASK);
    }
    out
}

/// `scheme://[****@]host[:port]`; the user info marked as masked when `mark_userinfo` and the
/// URL has one.
fn origin(u: &Url, mark_userinfo: bool) -> String {
    let userinfo = if mark_userinfo && (!u.username().is_empty() || u.password().is_some()) {
        format!("{MASK}@")
    } else {
        String::new()
    };
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(port) => format!("{}://{userinfo}{host}:{port}", u.scheme()),
        None => format!("{}://{userinfo}{host}", u.scheme()),
    }
}

/// A relay's spec as a read-only caller and the logs see it: its stream key, pull URL,
/// destination URLs and scores URL masked.
pub fn spec(spec: &RelaySpec) -> RelaySpec {
    let mut spec = spec.clone();
    spec.ingest.stream_key = spec.ingest.stream_key.as_deref().map(stream_key);
    spec.ingest.url = spec.ingest.url.as_deref().map(rtmp_url);
    spec.ingest.auth_url = spec.ingest.auth_url.as_deref().map(http_url);
    spec.ingest.srt_passphrase = spec.ingest.srt_passphrase.as_deref().map(stream_key);
    for output in &mut spec.outputs {
        output.url = rtmp_url(&output.url);
    }
    let pulled = spec.ingest.url.clone();
    if let Some(overlay) = &mut spec.overlay {
        overlay.scores_url = overlay
            .scores_url
            .as_deref()
            .map(|url| scores_url(url, pulled.as_deref()));
    }
    if let Some(graphics) = &mut spec.graphics {
        graphics.data_url = graphics.data_url.as_deref().map(http_url);
    }
    spec
}

/// A scores URL as a read-only caller and the logs see it: [`http_url`], and, for a relay
/// that pulls `pulled`, every path segment naming the pulled stream masked (a `[compat]`
/// relay's scores URL holds its nginx stream name, which is that stream's publish key).
pub fn scores_url(url: &str, pulled: Option<&str>) -> String {
    let name = pulled
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty());
    match name {
        Some(name) => masked_http_url(url, &[name, &crate::compat::encode(name)]),
        None => http_url(url),
    }
}

/// `text` (an error message, a retry reason) with every secret of `spec` in it masked: the
/// stream key, each RTMP URL and its key, the scores URL and its credentials. For text that
/// comes from elsewhere (GStreamer, a peer) and may quote what it was given.
pub fn scrub(text: &str, spec: &RelaySpec) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    secrets.extend(spec.ingest.stream_key.as_deref());
    secrets.extend(spec.ingest.srt_passphrase.as_deref());
    let urls = spec.outputs.iter().map(|o| o.url.as_str());
    for url in urls.chain(spec.ingest.url.as_deref()) {
        secrets.extend(rtmp_secrets(url));
    }
    if let Some(url) = spec.overlay.as_ref().and_then(|o| o.scores_url.as_deref()) {
        secrets.extend(http_secrets(url));
    }
    if let Some(url) = spec.graphics.as_ref().and_then(|g| g.data_url.as_deref()) {
        secrets.extend(http_secrets(url));
    }
    mask_all(text, secrets)
}

/// `text` with the RTMP URL `url`, and its key, masked.
pub fn scrub_rtmp_url(text: &str, url: &str) -> String {
    mask_all(text, rtmp_secrets(url))
}

/// An RTMP URL and its key (what follows `scheme://host/app/`), or an SRT URL and its
/// options (a passphrase, a stream id that names a key).
fn rtmp_secrets(url: &str) -> Vec<&str> {
    let key = url
        .split_once("://")
        .and_then(|(_, rest)| rest.splitn(3, '/').nth(2));
    let query = url.split_once('?').map(|(_, query)| query);
    let values = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| matches!(*name, "passphrase" | "streamid"))
        .map(|(_, value)| value);
    [Some(url), key, query]
        .into_iter()
        .flatten()
        .chain(values)
        .collect()
}

/// An HTTP URL, its query and its password.
fn http_secrets(url: &str) -> Vec<&str> {
    let mut secrets = vec![url];
    secrets.extend(url.split_once('?').map(|(_, query)| query));
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(userinfo, _)| userinfo);
    if let Some(userinfo) = userinfo {
        secrets.push(userinfo);
        secrets.extend(userinfo.split_once(':').map(|(_, password)| password));
    }
    secrets
}

/// `text` with each of `secrets` (three characters or more) replaced by [`MASK`], the
/// longest first, so a URL is masked whole before its key is.
fn mask_all(text: &str, mut secrets: Vec<&str>) -> String {
    secrets.retain(|s| s.len() >= 3);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret) {
            text = text.replace(secret, MASK);
        }
    }
    text
}

/// A new public id for a relay the compatible `/start_stream` makes: `s-` and 12 random hex
/// digits. Random rather than derived from the stream key, so nothing about the key can be
/// guessed from it, however short the key.
pub fn public_id() -> String {
    let mut bytes = [0u8; 6];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // std seeds its hash keys from the OS's randomness: a fallback that is still
        // unpredictable from outside.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        bytes.copy_from_slice(&hasher.finish().to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("s-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_urls_keep_host_and_port_only() {
        let url = "srt://ingest.example:9000?streamid=publish:k3y-abc&passphrase=very-secret-1";
        assert_eq!(rtmp_url(url), "srt://ingest.example:9000?****");
        let said = format!("could not connect to {url}; passphrase very-secret-1 was refused");
        let scrubbed = scrub_rtmp_url(&said, url);
        assert!(
            !scrubbed.contains("very-secret-1") && !scrubbed.contains("k3y-abc"),
            "{scrubbed}"
        );
    }

    #[test]
    fn rtmp_urls_keep_host_and_app_only() {
        for (url, masked) in [
            (
                "rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl",
                "rtmp://a.rtmp.youtube.com/live2/****",
            ),
            (
                "rtmps://u:p@live.example:443/app/KEY/more?x=1",
                "rtmps://****@live.example:443/app/****",
            ),
            ("rtmp://127.0.0.1:1935/live", "rtmp://127.0.0.1:1935/live"),
            ("rtmp://h/app?key=KEY", "rtmp://h/app/****"),
            ("rtmp://h/app/", "rtmp://h/app"),
            ("not a url KEY", "****"),
        ] {
            assert_eq!(rtmp_url(url), masked, "{url}");
            assert!(!masked.contains("KEY"));
        }
        assert_eq!(
            url_for_log("rtmp://u:p@a.rtmp.youtube.com:1935/live2/KEY"),
            "rtmp://a.rtmp.youtube.com:1935"
        );
        assert_eq!(url_for_log("KEY"), "(not a URL)");
    }

    #[test]
    fn http_urls_lose_their_credentials() {
        assert_eq!(
            http_url("https://user:secret@api.example:8443/m/42?token=abc#x"),
            "https://****@api.example:8443/m/42?****"
        );
        assert_eq!(
            http_url("http://scores.example/match"),
            "http://scores.example/match"
        );
        assert_eq!(http_url("not a url"), "(not a URL)");
    }

    fn relay() -> RelaySpec {
        serde_json::from_value(serde_json::json!({
            "id": "final",
            "ingest": { "stream_key": "SKEY-123" },
            "overlay": { "scores_url": "https://u:PASS@api.example/m?token=TOK" },
            "outputs": [ { "id": "yt", "url": "rtmp://a.rtmp.youtube.com/live2/DKEY-9" } ],
            "graphics": { "data_url": "https://site.example/g?key=GKEY" }
        }))
        .expect("a valid spec")
    }

    #[test]
    fn a_masked_spec_holds_no_secret() {
        let masked = serde_json::to_string(&spec(&relay())).expect("serializes");
        for secret in ["SKEY-123", "DKEY-9", "PASS", "TOK", "GKEY"] {
            assert!(!masked.contains(secret), "{secret} in {masked}");
        }
        assert!(
            masked.contains("rtmp://a.rtmp.youtube.com/live2/****"),
            "{masked}"
        );
        assert!(masked.contains(r#""stream_key":"****""#), "{masked}");
    }

    #[test]
    fn scrub_masks_every_secret_quoted_in_a_message() {
        let text = "could not connect to rtmp://a.rtmp.youtube.com/live2/DKEY-9 (key DKEY-9); \
                    publisher SKEY-123; GET https://u:PASS@api.example/m?token=TOK";
        let scrubbed = scrub(text, &relay());
        for secret in ["SKEY-123", "DKEY-9", "PASS", "TOK"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(
            scrubbed.starts_with("could not connect to ****"),
            "{scrubbed}"
        );
        assert_eq!(scrub("nothing secret", &relay()), "nothing secret");
    }

    #[test]
    fn public_ids_are_fresh_and_plain() {
        let (a, b) = (public_id(), public_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 14, "{a}");
        assert!(crate::relay::spec::check_name("id", &a).is_ok());
    }

    #[test]
    fn a_pulled_stream_name_is_masked_in_the_scores_url() {
        let pulled = Some("rtmp://localhost:1935/live/final:2");
        assert_eq!(
            scores_url("http://h:8000/match/final%3A2/live?t=1", pulled),
            "http://h:8000/match/****/live?****"
        );
        assert_eq!(
            scores_url("http://h:8000/match/42", pulled),
            "http://h:8000/match/42"
        );
        assert_eq!(
            scores_url("http://h:8000/match/final%3A2", None),
            "http://h:8000/match/final%3A2"
        );
    }
}
