//! What a web browser may ask of the API: the defence against cross-site requests (CSRF) and
//! DNS rebinding, checked before any route runs, so a refused request changes nothing.
//!
//! Three rules, in this order:
//! 1. **Host.** The `Host` header must be `localhost`, an IP literal (which covers the listen
//!    address, always `IP:PORT`) or a name in `server.allowed_hosts`; any port. A page on
//!    `evil.example` whose name is rebound to 127.0.0.1 sends `Host: evil.example` and is
//!    refused. A request with a valid bearer token is exempt: a browser attaches no
//!    `Authorization` header by itself, so a page can only send one if it holds the token, and
//!    then it needs no rebinding.
//! 2. **Origin.** An `Origin` header, when present, must be the API's own (`http` or `https`
//!    with the request's `Host`, so a TLS proxy in front keeps the console working) or one in
//!    `server.allowed_origins`. Browsers send it on every cross-site POST (and on cross-origin
//!    fetches of any method); `curl` and scripts send none.
//! 3. **Content-Type.** A POST, PUT, PATCH or DELETE that carries a body must say
//!    `application/json` (a `; charset=…` suffix is fine). An HTML form can send only
//!    `text/plain`, `application/x-www-form-urlencoded` or `multipart/form-data` without a
//!    CORS preflight, so a cross-site form never gets a body through. A body-less request
//!    (`curl -X POST …/start`) needs no Content-Type: there is nothing to misread, and a
//!    browser's cross-site body-less POST carries an `Origin` and is caught by rule 2.
//!
//! `/hls/` is exempt from rules 1 and 2: its playlists and segments are public by design
//! (players on other sites fetch them cross-origin, through domain names and CDNs this daemon
//! cannot know), it only serves GETs, and its paths never hold a stream key.
//!
//! Owns these checks and their error messages only; tokens are [`super::auth`]'s.

use std::net::{Ipv4Addr, Ipv6Addr};

use warp::http::{header, HeaderMap, Method, StatusCode};

use super::error::ApiError;
use crate::config::ServerSettings;

/// The routes of the older relay service, which answer errors as `{"error": "..."}`.
pub const COMPAT_PATHS: [&str; 3] = ["/start_stream", "/stop_stream", "/list_streams"];

/// The hosts and origins the config allows, besides the API's own.
#[derive(Debug, Clone, Default)]
pub struct Browsers {
    /// Lowercase, as `scheme://host[:port]`.
    allowed_origins: Vec<String>,
    /// Lowercase host names, without a port.
    allowed_hosts: Vec<String>,
}

/// A request refused by these rules; [`super::error::recover`] answers it, in the old
/// service's body shape on the compatible routes.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub compat: bool,
}
impl warp::reject::Reject for Refused {}

impl Browsers {
    pub fn new(server: &ServerSettings) -> Self {
        let lower = |list: &[String]| list.iter().map(|s| s.to_ascii_lowercase()).collect();
        Self {
            allowed_origins: lower(&server.allowed_origins),
            allowed_hosts: lower(&server.allowed_hosts),
        }
    }

    /// Lets the request through, or says why not. `authenticated`: it carries a valid bearer
    /// token (which exempts it from the Host rule).
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        authenticated: bool,
    ) -> Result<(), Refused> {
        self.checked(method, path, headers, authenticated)
            .map_err(|error| Refused {
                error,
                compat: COMPAT_PATHS.contains(&path),
            })
    }

    fn checked(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        authenticated: bool,
    ) -> Result<(), ApiError> {
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .map(|v| v.to_str().map_err(|_| v.as_bytes()))
        };
        let public_hls = path == "/hls" || path.starts_with("/hls/");
        let host = match text(header::HOST) {
            None => None,
            Some(Ok(host)) => Some(host),
            Some(Err(_)) => return Err(forbidden_host("(not text)")),
        };

        if !public_hls && !authenticated {
            // Browsers always send Host; a request without one is not a browser's.
            if let Some(host) = host.filter(|h| !self.host_allowed(h)) {
                return Err(forbidden_host(host));
            }
        }

        if !public_hls {
            match text(header::ORIGIN) {
                None => {}
                Some(Ok(origin)) if self.origin_allowed(origin, host) => {}
                Some(Ok(origin)) => return Err(forbidden_origin(origin)),
                Some(Err(_)) => return Err(forbidden_origin("(not text)")),
            }
        }

        let changes = matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if changes && has_body(headers) {
            let json = text(header::CONTENT_TYPE)
                .and_then(Result::ok)
                .is_some_and(is_json);
            if !json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "a request body must be JSON, sent with `Content-Type: application/json` \
                     (curl: --json, or -H 'Content-Type: application/json')",
                ));
            }
        }
        Ok(())
    }

    /// `localhost`, an IP literal, or a name in `server.allowed_hosts`; any port.
    fn host_allowed(&self, authority: &str) -> bool {
        let Some(name) = host_name(authority) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        name == "localhost"
            || name.parse::<Ipv4Addr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok())
            || self.allowed_hosts.iter().any(|h| h == name)
    }

    /// The API's own origin (`http://` or `https://` and the request's Host), or one in
    /// `server.allowed_origins`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let own = host.is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            ["http://", "https://"]
                .iter()
                .any(|scheme| origin.strip_prefix(scheme) == Some(host.as_str()))
        });
        own || self.allowed_origins.contains(&origin)
    }
}

/// The host of a `Host` header (`name`, `1.2.3.4`, `[::1]`), without its port; `None` when it
/// is not of that form.
fn host_name(authority: &str) -> Option<&str> {
    let authority = authority.trim();
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let rest = &authority[end..];
        (&authority[..end], rest.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (!name.is_empty() && port_ok).then_some(name)
}

/// Whether the request carries a body: a Content-Length above 0, or a chunked one.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
}

/// `application/json`, with any parameters (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn forbidden_host(host: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_host",
        format!(
            "the Host {host:?} is not this server's address, localhost or an IP address: add \
             the name to server.allowed_hosts to serve the API under it (a request with a \
             valid token needs no entry)"
        ),
    )
}

fn forbidden_origin(origin: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        format!(
            "a page from {origin:?} may not use this API: its Origin is not this server's \
             and not in server.allowed_origins"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browsers() -> Browsers {
        Browsers::new(&ServerSettings {
            allowed_origins: vec!["https://Ops.example.com".to_owned()],
            allowed_hosts: vec!["scorecast.example.com".to_owned()],
            ..ServerSettings::default()
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    v.parse().expect("a header value"),
                )
            })
            .collect()
    }

    fn status(
        method: Method,
        path: &str,
        pairs: &[(&'static str, &str)],
        authenticated: bool,
    ) -> Option<u16> {
        browsers()
            .check(&method, path, &headers(pairs), authenticated)
            .err()
            .map(|r| r.error.status.as_u16())
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");
    const BODY: (&str, &str) = ("content-length", "2");
    const LOCAL: (&str, &str) = ("host", "127.0.0.1:8080");

    #[test]
    fn hosts() {
        let b = browsers();
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:80",
            "localhost.:1",
            "[::1]:8080",
            "10.1.2.3",
            "scorecast.example.com:443",
            "Scorecast.Example.com",
        ] {
            assert!(b.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "::1",
            "localhost:",
            "localhost:x",
            "",
        ] {
            assert!(!b.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let b = browsers();
        let host = Some("127.0.0.1:8080");
        assert!(b.origin_allowed("http://127.0.0.1:8080", host));
        assert!(b.origin_allowed("https://127.0.0.1:8080", host));
        assert!(b.origin_allowed("https://ops.example.com", host));
        assert!(!b.origin_allowed("http://ops.example.com", host));
        assert!(!b.origin_allowed("http://127.0.0.1:8081", host));
        assert!(!b.origin_allowed("http://localhost:8080", host));
        assert!(!b.origin_allowed("null", host));
        assert!(!b.origin_allowed("http://127.0.0.1:8080", None));
    }

    #[test]
    fn rules_in_order() {
        let post =
            |pairs: &[(&'static str, &str)]| status(Method::POST, "/api/v1/relays", pairs, false);
        // curl: no Origin, JSON; and a body-less POST with no Content-Type.
        assert_eq!(post(&[LOCAL, JSON, BODY]), None);
        assert_eq!(post(&[LOCAL]), None);
        assert_eq!(post(&[LOCAL, ("content-length", "0")]), None);
        // A form or a text/plain fetch, chunked or not.
        let plain = ("content-type", "text/plain");
        assert_eq!(post(&[LOCAL, plain, BODY]), Some(415));
        assert_eq!(post(&[LOCAL, BODY]), Some(415));
        assert_eq!(
            post(&[LOCAL, plain, ("transfer-encoding", "chunked")]),
            Some(415)
        );
        // Cross-site, even with JSON; same-origin and allowed origins pass.
        let evil = ("origin", "http://evil.example");
        assert_eq!(post(&[LOCAL, evil, JSON, BODY]), Some(403));
        assert_eq!(post(&[LOCAL, evil]), Some(403));
        assert_eq!(
            post(&[LOCAL, ("origin", "http://127.0.0.1:8080"), JSON, BODY]),
            None
        );
        assert_eq!(
            post(&[LOCAL, ("origin", "https://ops.example.com"), JSON, BODY]),
            None
        );
        // DNS rebinding: Origin and Host agree, the Host is foreign.
        let rebound = [
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
        ];
        assert_eq!(post(&rebound), Some(403));
        assert_eq!(
            status(Method::GET, "/api/v1/relays", &rebound, false),
            Some(403)
        );
        // ... unless a valid token came with it, or it is HLS.
        assert_eq!(status(Method::GET, "/api/v1/relays", &rebound, true), None);
        assert_eq!(
            status(Method::GET, "/hls/a/master.m3u8", &rebound, false),
            None
        );
        // A token does not exempt from the Origin or Content-Type rules.
        assert_eq!(
            status(Method::POST, "/api/v1/relays", &[LOCAL, evil], true),
            Some(403)
        );
        assert_eq!(
            status(Method::PUT, "/api/v1/relays/a/score", &[LOCAL, BODY], true),
            Some(415)
        );
        // GETs with a body are not checked for JSON.
        assert_eq!(
            status(Method::GET, "/api/v1/relays", &[LOCAL, BODY], false),
            None
        );
    }

    #[test]
    fn compatible_routes_are_marked() {
        let refused = browsers()
            .check(
                &Method::POST,
                "/start_stream",
                &headers(&[LOCAL, BODY]),
                false,
            )
            .expect_err("no Content-Type");
        assert!(refused.compat);
        let refused = browsers()
            .check(
                &Method::POST,
                "/api/v1/relays",
                &headers(&[LOCAL, BODY]),
                false,
            )
            .expect_err("no Content-Type");
        assert!(!refused.compat);
    }
}
