//! Bearer tokens: which requests need one, and whether the one given may do what is asked.
//! Checked before any route runs, so a refused request changes nothing.

use warp::http::{Method, StatusCode};

use super::error::ApiError;
use crate::config::{AuthSettings, Role};
use crate::relay::registry::constant_time_eq;
use crate::secrets::Sight;

/// The tokens and the public paths, from the config.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    settings: AuthSettings,
}

/// A request the tokens refuse; [`super::error::recover`] answers it.
#[derive(Debug)]
pub struct Refused(pub ApiError);
impl warp::reject::Reject for Refused {}

impl Auth {
    pub fn new(settings: AuthSettings) -> Self {
        Self { settings }
    }

    /// Whether the API asks for tokens at all.
    pub fn required(&self) -> bool {
        !self.settings.tokens.is_empty()
    }

    fn public(&self, path: &str) -> bool {
        let s = &self.settings;
        // The console's page and files hold no data: the page asks for a token itself.
        path == "/"
            || path.starts_with("/console/")
            || (s.public_healthz && path == "/healthz")
            || (s.public_hls && (path == "/hls" || path.starts_with("/hls/")))
            || (s.public_metrics && path == "/metrics")
    }

    /// Lets the request through, or says why not: 401 with no token or a wrong one, 403 when
    /// a read-only token asks to change something.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(), ApiError> {
        if !self.required() || self.public(path) {
            return Ok(());
        }
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let given = bearer(authorization).ok_or_else(|| {
            unauthorized("a token is required: send `Authorization: Bearer <token>`")
        })?;
        match self.role(given) {
            None => Err(unauthorized("the token is not valid")),
            Some(Role::ReadOnly) if !matches!(*method, Method::GET | Method::HEAD) => {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token is read-only: it may only GET",
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// What a request with this `Authorization` header may see of secrets: everything with an
    /// admin token or when no token is configured (the open API is admin by design);
    /// masked with a read-only token, and with none on a public path.
    pub fn sight(&self, authorization: Option<&str>) -> Sight {
        if !self.required() {
            return Sight::Full;
        }
        match bearer(authorization).and_then(|given| self.role(given)) {
            Some(Role::Admin) => Sight::Full,
            _ => Sight::Masked,
        }
    }

    /// Whether the `Authorization` header holds a valid token, of any role.
    pub fn authenticates(&self, authorization: Option<&str>) -> bool {
        bearer(authorization).is_some_and(|given| self.role(given).is_some())
    }

    fn role(&self, given: &str) -> Option<Role> {
        // Every token is compared, so the time taken says nothing about which came close.
        let mut role = None;
        for token in &self.settings.tokens {
            if constant_time_eq(token.token.as_bytes(), given.as_bytes()) {
                role = Some(token.role);
            }
        }
        role
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenSettings;

    fn auth() -> Auth {
        let token = |name: &str, token: &str, role| TokenSettings {
            name: name.to_owned(),
            token: token.to_owned(),
            role,
        };
        Auth::new(AuthSettings {
            tokens: vec![
                token("ops", "admin-token-0123456789", Role::Admin),
                token("site", "read-token-0123456789", Role::ReadOnly),
            ],
            ..AuthSettings::default()
        })
    }

    #[test]
    fn roles_and_public_paths() {
        let a = auth();
        let bearer = |t: &str| format!("Bearer {t}");
        let status = |r: Result<(), ApiError>| r.err().map(|e| e.status.as_u16());
        assert_eq!(status(a.check(&Method::GET, "/healthz", None)), None);
        assert_eq!(
            status(a.check(&Method::GET, "/hls/a/master.m3u8", None)),
            None
        );
        assert_eq!(status(a.check(&Method::GET, "/metrics", None)), Some(401));
        assert_eq!(status(a.check(&Method::GET, "/", None)), None);
        assert_eq!(status(a.check(&Method::GET, "/console/app.js", None)), None);
        assert_eq!(
            status(a.check(&Method::GET, "/consoles/x", None)),
            Some(401)
        );
        assert_eq!(
            status(a.check(&Method::GET, "/api/v1/relays", None)),
            Some(401)
        );
        let wrong = bearer("admin-token-0123456780");
        assert_eq!(
            status(a.check(&Method::GET, "/api/v1/relays", Some(&wrong))),
            Some(401)
        );
        let read = bearer("read-token-0123456789");
        assert_eq!(
            status(a.check(&Method::GET, "/api/v1/relays", Some(&read))),
            None
        );
        assert_eq!(
            status(a.check(&Method::POST, "/api/v1/relays", Some(&read))),
            Some(403)
        );
        let admin = bearer("admin-token-0123456789");
        assert_eq!(
            status(a.check(&Method::POST, "/api/v1/relays", Some(&admin))),
            None
        );
        assert_eq!(
            status(Auth::default().check(&Method::POST, "/x", None)),
            None
        );
    }

    #[test]
    fn only_admins_and_the_open_api_see_secrets() {
        let a = auth();
        assert_eq!(a.sight(Some("Bearer admin-token-0123456789")), Sight::Full);
        assert_eq!(a.sight(Some("Bearer read-token-0123456789")), Sight::Masked);
        assert_eq!(
            a.sight(Some("Bearer wrong-token-0123456789")),
            Sight::Masked
        );
        assert_eq!(a.sight(None), Sight::Masked);
        assert_eq!(Auth::default().sight(None), Sight::Full);
    }
}
