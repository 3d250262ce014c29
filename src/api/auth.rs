//! Bearer tokens: which requests need one, and whether the one given may do what is asked.
//! Checked before any route runs, so a refused request changes nothing.
//!
//! Owns the tokens in force: each configured token is resolved once (inline, a SHA-256 from
//! the config, a file, or a systemd credential) to the SHA-256 it is checked against, and a
//! presented token is hashed and compared in constant time. [`Auth`] is a handle: its clones
//! share the rules, so the daemon swaps new ones in on SIGHUP ([`Auth::set`]) under the
//! running API. Nothing here logs, and no error holds a token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest as _, Sha256};
use warp::http::{Method, StatusCode};

use super::error::ApiError;
use crate::config::{check_token_text, AuthSettings, Role, TokenSettings, TokenSource};
use crate::relay::registry::constant_time_eq;
use crate::secrets::Sight;

/// The variable systemd sets to the directory of a unit's credentials (`LoadCredential=`).
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A SHA-256 digest.
type Digest = [u8; 32];

/// A configured token that cannot be read. Names the token and the file; never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("auth.tokens[{index}].credential (token {name:?}): ${CREDENTIALS_DIRECTORY} is not set: the credential {credential:?} needs LoadCredential={credential}:PATH in the unit (or the variable, outside systemd)")]
    NoCredentials {
        index: usize,
        name: String,
        credential: String,
    },
    #[error("auth.tokens[{index}].{key} (token {name:?}): cannot read {path}: {source}")]
    Unreadable {
        index: usize,
        name: String,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.tokens[{index}].{key} (token {name:?}): the token in {path} {message}")]
    Invalid {
        index: usize,
        name: String,
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("auth.tokens[{index}].{key} (token {name:?}): {message}")]
    Keys {
        index: usize,
        name: String,
        key: &'static str,
        message: String,
    },
    #[error("auth.tokens[{index}].token_sha256 (token {name:?}): not a SHA-256 in hex")]
    BadHash { index: usize, name: String },
}

/// The SHA-256 of `token` in lower-case hex, as `token_sha256` takes it.
pub fn sha256_hex(token: &str) -> String {
    hex(&digest(token))
}

fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The directory systemd gives the unit's credentials in, when it gives one.
pub fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os(CREDENTIALS_DIRECTORY)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// One token in force: who holds it, the SHA-256 it is checked against, what it may do.
#[derive(Clone)]
struct Token {
    name: String,
    digest: Digest,
    role: Role,
}

/// The tokens and the public paths, resolved from the `[auth]` settings.
#[derive(Clone)]
pub struct Rules {
    tokens: Vec<Token>,
    public_hls: bool,
    public_healthz: bool,
    public_metrics: bool,
}

impl Rules {
    /// Resolves every token of `settings`, reading files and credentials (from
    /// `credentials`, systemd's `$CREDENTIALS_DIRECTORY`). The first that cannot be read
    /// fails the whole set.
    pub fn load(settings: &AuthSettings, credentials: Option<&Path>) -> Result<Self, TokenError> {
        let tokens = settings
            .tokens
            .iter()
            .enumerate()
            .map(|(index, token)| resolve(index, token, credentials))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tokens,
            public_hls: settings.public_hls,
            public_healthz: settings.public_healthz,
            public_metrics: settings.public_metrics,
        })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The SHA-256 a configured token is checked against.
fn resolve(
    index: usize,
    token: &TokenSettings,
    credentials: Option<&Path>,
) -> Result<Token, TokenError> {
    let name = token.name.clone();
    // The config's validation has checked the keys; a settings value made in code may not
    // have been, so a bad one is still an error here.
    let source = token.source().map_err(|(key, message)| TokenError::Keys {
        index,
        name: name.clone(),
        key,
        message,
    })?;
    let digest = match source {
        TokenSource::Token(text) => digest(text),
        TokenSource::Sha256(text) => from_hex(text).ok_or_else(|| TokenError::BadHash {
            index,
            name: name.clone(),
        })?,
        TokenSource::File(path) => read_token(index, &name, "token_file", path)?,
        TokenSource::Credential(credential) => {
            let dir = credentials.ok_or_else(|| TokenError::NoCredentials {
                index,
                name: name.clone(),
                credential: credential.to_owned(),
            })?;
            read_token(index, &name, "credential", &dir.join(credential))?
        }
    };
    Ok(Token {
        name,
        digest,
        role: token.role,
    })
}

/// The SHA-256 of the token in `path`: the file's text, trailing line ends trimmed.
fn read_token(
    index: usize,
    name: &str,
    key: &'static str,
    path: &Path,
) -> Result<Digest, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
        index,
        name: name.to_owned(),
        key,
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim_end_matches(['\n', '\r']);
    check_token_text(token).map_err(|message| TokenError::Invalid {
        index,
        name: name.to_owned(),
        key,
        path: path.to_owned(),
        message,
    })?;
    Ok(digest(token))
}

/// The rules in force, shared by every clone: the API's filters hold one, the daemon another
/// to swap new rules in.
#[derive(Clone)]
pub struct Auth {
    rules: Arc<RwLock<Arc<Rules>>>,
}

/// Names and roles only.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = self.current();
        f.debug_list()
            .entries(rules.tokens.iter().map(|t| (&t.name, t.role)))
            .finish()
    }
}

impl Default for Auth {
    /// No tokens: everyone may, with the default public paths.
    fn default() -> Self {
        Self::new(Rules::load(&AuthSettings::default(), None).expect("no token to read"))
    }
}

/// A request the tokens refuse; [`super::error::recover`] answers it.
#[derive(Debug)]
pub struct Refused(pub ApiError);
impl warp::reject::Reject for Refused {}

impl Auth {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules: Arc::new(RwLock::new(Arc::new(rules))),
        }
    }

    /// Puts `rules` in force for every clone, at once: a request is checked against the old
    /// rules or the new, never a mix.
    pub fn set(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
    }

    /// The rules in force; the lock is held only to copy the pointer.
    fn current(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the API asks for tokens at all.
    pub fn required(&self) -> bool {
        !self.current().is_empty()
    }

    /// Lets the request through, or says why not: 401 with no token or a wrong one, 403 when
    /// a read-only token asks to change something.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(), ApiError> {
        let rules = self.current();
        if rules.is_empty() || rules.public(path) {
            return Ok(());
        }
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let given = bearer(authorization).ok_or_else(|| {
            unauthorized("a token is required: send `Authorization: Bearer <token>`")
        })?;
        match rules.role(given) {
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
        let rules = self.current();
        if rules.is_empty() {
            return Sight::Full;
        }
        match bearer(authorization).and_then(|given| rules.role(given)) {
            Some(Role::Admin) => Sight::Full,
            _ => Sight::Masked,
        }
    }

    /// Whether the `Authorization` header holds a valid token, of any role.
    pub fn authenticates(&self, authorization: Option<&str>) -> bool {
        let rules = self.current();
        bearer(authorization).is_some_and(|given| rules.role(given).is_some())
    }
}

impl Rules {
    fn public(&self, path: &str) -> bool {
        // The console's page and files hold no data: the page asks for a token itself.
        path == "/"
            || path.starts_with("/console/")
            || (self.public_healthz && path == "/healthz")
            || (self.public_hls && (path == "/hls" || path.starts_with("/hls/")))
            || (self.public_metrics && path == "/metrics")
    }

    fn role(&self, given: &str) -> Option<Role> {
        // The given token is hashed and every digest compared, so the time taken says
        // nothing about which token came close, nor about any token's length.
        let given = digest(given);
        let mut role = None;
        for token in &self.tokens {
            if constant_time_eq(&token.digest, &given) {
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

    const ADMIN: &str = "admin-token-0123456789";
    const READER: &str = "read-token-0123456789";

    fn token(name: &str, role: Role) -> TokenSettings {
        TokenSettings {
            name: name.to_owned(),
            token: None,
            token_sha256: None,
            token_file: None,
            credential: None,
            role,
        }
    }

    fn load(tokens: Vec<TokenSettings>, credentials: Option<&Path>) -> Result<Auth, TokenError> {
        let settings = AuthSettings {
            tokens,
            ..AuthSettings::default()
        };
        Rules::load(&settings, credentials).map(Auth::new)
    }

    fn auth() -> Auth {
        load(
            vec![
                TokenSettings {
                    token: Some(ADMIN.to_owned()),
                    ..token("ops", Role::Admin)
                },
                TokenSettings {
                    token_sha256: Some(sha256_hex(READER)),
                    ..token("site", Role::ReadOnly)
                },
            ],
            None,
        )
        .expect("inline tokens load")
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn status(r: Result<(), ApiError>) -> Option<u16> {
        r.err().map(|e| e.status.as_u16())
    }

    #[test]
    fn roles_and_public_paths() {
        let a = auth();
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
        // The reader's token is configured as its hash: the token works, the hash does not.
        let read = bearer(READER);
        assert_eq!(
            status(a.check(&Method::GET, "/api/v1/relays", Some(&read))),
            None
        );
        assert_eq!(
            status(a.check(&Method::POST, "/api/v1/relays", Some(&read))),
            Some(403)
        );
        let hash = bearer(&sha256_hex(READER));
        assert_eq!(
            status(a.check(&Method::GET, "/api/v1/relays", Some(&hash))),
            Some(401)
        );
        let admin = bearer(ADMIN);
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
    fn sha256_hex_is_the_standard_digest() {
        // printf %s abc | sha256sum
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&sha256_hex("abc")), Some(digest("abc")));
        assert_eq!(from_hex(&"G".repeat(64)), None);
    }

    #[test]
    fn files_and_credentials_are_read_and_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("scorecast-ops"), format!("{ADMIN}\n")).expect("write");
        std::fs::write(dir.path().join("site.token"), format!("{READER}\r\n")).expect("write");
        let a = load(
            vec![
                TokenSettings {
                    credential: Some("scorecast-ops".to_owned()),
                    ..token("ops", Role::Admin)
                },
                TokenSettings {
                    token_file: Some(dir.path().join("site.token")),
                    ..token("site", Role::ReadOnly)
                },
            ],
            Some(dir.path()),
        )
        .expect("the files load");
        let (admin, read) = (bearer(ADMIN), bearer(READER));
        assert_eq!(
            status(a.check(&Method::POST, "/api/v1/relays", Some(&admin))),
            None
        );
        assert_eq!(
            status(a.check(&Method::POST, "/api/v1/relays", Some(&read))),
            Some(403)
        );

        let credential = |name: &str| TokenSettings {
            credential: Some(name.to_owned()),
            ..token("ops", Role::Admin)
        };
        let err = load(vec![credential("scorecast-gone")], Some(dir.path()))
            .unwrap_err()
            .to_string();
        let path = dir.path().join("scorecast-gone");
        assert!(
            err.contains("auth.tokens[0].credential")
                && err.contains("\"ops\"")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
        let err = load(vec![credential("scorecast-ops")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");

        std::fs::write(dir.path().join("short"), "secret\n").expect("write");
        let err = load(vec![credential("short")], Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16"), "{err}");
        assert!(
            !err.contains("secret\n") && !err.contains(": secret"),
            "{err}"
        );
    }

    #[test]
    fn set_swaps_the_rules_for_every_clone() {
        let a = auth();
        let served = a.clone();
        let admin = bearer(ADMIN);
        assert!(served.authenticates(Some(&admin)));
        let new = "new-admin-token-0123456789";
        let settings = AuthSettings {
            tokens: vec![TokenSettings {
                token: Some(new.to_owned()),
                ..token("ops", Role::Admin)
            }],
            ..AuthSettings::default()
        };
        a.set(Rules::load(&settings, None).expect("loads"));
        assert!(!served.authenticates(Some(&admin)));
        assert!(served.authenticates(Some(&bearer(new))));
        assert_eq!(format!("{served:?}"), r#"[("ops", Admin)]"#);
    }

    #[test]
    fn only_admins_and_the_open_api_see_secrets() {
        let a = auth();
        assert_eq!(a.sight(Some(&bearer(ADMIN))), Sight::Full);
        assert_eq!(a.sight(Some(&bearer(READER))), Sight::Masked);
        assert_eq!(
            a.sight(Some("Bearer wrong-token-0123456789")),
            Sight::Masked
        );
        assert_eq!(a.sight(None), Sight::Masked);
        assert_eq!(Auth::default().sight(None), Sight::Full);
    }
}
