//! The config file: TOML, typed, validated with the offending key named.
//!
//! Owns the daemon's settings and the startup relays. It must not start anything: the daemon
//! reads a [`Config`] and acts on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::server::{self, HttpLimits};
use crate::api::tls::TlsFiles;
use crate::compat::CompatSettings;
use crate::events;
use crate::ingest;
use crate::relay::spec::{RelaySpec, SpecError};

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RTMP_LISTEN: &str = "0.0.0.0:1935";
pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FPS: u32 = 30;
pub const DEFAULT_AUDIO_RATE: u32 = 48_000;
pub const DEFAULT_AUDIO_CHANNELS: u32 = 2;
pub const DEFAULT_VIDEO_KBPS: u32 = 3_000;
pub const DEFAULT_AUDIO_KBPS: u32 = 128;
pub const DEFAULT_GOP_SECONDS: u32 = 2;
pub const DEFAULT_X264_PRESET: &str = "veryfast";
pub const DEFAULT_SEGMENT_SECONDS: u32 = 4;
pub const DEFAULT_PLAYLIST_LENGTH: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Everything the daemon was asked to do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSettings,
    pub ingest: IngestSettings,
    pub program: ProgramSettings,
    pub hls: HlsSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub compat: CompatSettings,
    /// What a relay's `record` leaves out.
    pub record: RecordSettings,
    #[serde(rename = "relay")]
    pub relays: Vec<RelaySpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address of the HTTP API and HLS server.
    pub api_listen: SocketAddr,
    /// Address of the RTMP ingest server.
    pub rtmp_listen: SocketAddr,
    /// Address (UDP) of the SRT ingest listener; absent, no SRT ingest.
    pub srt_listen: Option<SocketAddr>,
    /// The receive latency the SRT listener offers, in milliseconds. The link uses the
    /// larger of this and the publisher's own.
    pub srt_latency_ms: u64,
    /// Where HLS segments and the relays made over the API (`relays.json`) are written.
    pub data_dir: PathBuf,
    /// How log lines are written: plain text, or one JSON object per line.
    pub log_format: LogFormat,
    /// Web origins (`https://ops.example.com`) whose pages may call the API, besides its own.
    pub allowed_origins: Vec<String>,
    /// Host names the API answers under, besides `localhost` and IP addresses (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// HTTP connections open at once, from everyone.
    pub max_connections: usize,
    /// HTTP connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a complete request head, from connecting or from the end
    /// of its last response (so also how long an idle kept-alive connection stays open).
    pub header_timeout_seconds: u64,
    /// Clients of `/api/v1/events` at once.
    pub max_event_streams: usize,
    /// PEM certificate chain for TLS on `api_listen` (with `tls_key`); absent, plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that RTMPS destinations are verified against, besides the
    /// system's (`/etc/ssl/certs`): for a destination behind a private CA.
    pub destinations_ca_file: Option<PathBuf>,
}

impl ServerSettings {
    /// What the API's listener lets clients take.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_seconds),
        }
    }

    /// The certificate and key files when TLS is on (validation has checked both or none).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// How many relays, and how big, the API and the config may make. Checked on every relay
/// made or changed over the API and on the config file; a refusal names the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Relays at once, from the config and the API together.
    pub relays: usize,
    /// Destinations (`outputs`) of one relay.
    pub outputs_per_relay: usize,
    /// HLS renditions of one relay.
    pub renditions_per_relay: usize,
}

pub const DEFAULT_MAX_RELAYS: usize = 64;
pub const DEFAULT_MAX_OUTPUTS_PER_RELAY: usize = 8;
pub const DEFAULT_MAX_RENDITIONS_PER_RELAY: usize = 6;

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            relays: DEFAULT_MAX_RELAYS,
            outputs_per_relay: DEFAULT_MAX_OUTPUTS_PER_RELAY,
            renditions_per_relay: DEFAULT_MAX_RENDITIONS_PER_RELAY,
        }
    }
}

/// A cap of `[limits]` that a relay or a request would go over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} limit reached: {limit}{per} (limits.{key})")]
pub struct LimitError {
    /// `relay`, `output` or `rendition`.
    pub what: &'static str,
    pub limit: usize,
    /// ` per relay`, or empty.
    pub per: &'static str,
    /// The key under `[limits]`.
    pub key: &'static str,
}

impl LimitSettings {
    /// Refuses a relay when there are `existing` relays already.
    pub fn check_relay_count(&self, existing: usize) -> Result<(), LimitError> {
        if existing >= self.relays {
            return Err(LimitError {
                what: "relay",
                limit: self.relays,
                per: "",
                key: "relays",
            });
        }
        Ok(())
    }

    /// Refuses a relay spec with more destinations or renditions than allowed.
    pub fn check_spec(&self, spec: &RelaySpec) -> Result<(), LimitError> {
        if spec.outputs.len() > self.outputs_per_relay {
            return Err(self.outputs());
        }
        if spec.hls.renditions.len() > self.renditions_per_relay {
            return Err(LimitError {
                what: "rendition",
                limit: self.renditions_per_relay,
                per: " per relay",
                key: "renditions_per_relay",
            });
        }
        Ok(())
    }

    /// Refuses one more destination on a relay that has `existing`.
    pub fn check_output_count(&self, existing: usize) -> Result<(), LimitError> {
        if existing >= self.outputs_per_relay {
            return Err(self.outputs());
        }
        Ok(())
    }

    fn outputs(&self) -> LimitError {
        LimitError {
            what: "output",
            limit: self.outputs_per_relay,
            per: " per relay",
            key: "outputs_per_relay",
        }
    }
}

/// What the RTMP server lets peers take: connections, failed publishes, and bytes before a
/// publish is accepted. Read at start-up only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// Failed publishes (unknown key, refused publish) from one address within a minute
    /// before the address is shut out for a minute.
    pub max_failed_publishes: u32,
    /// Bytes one connection may send before its publish is accepted.
    pub max_bytes_before_publish: usize,
    /// Bytes all connections without an accepted publish may have sent, together.
    pub max_bytes_before_publish_total: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_connections: ingest::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: ingest::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_failed_publishes: ingest::DEFAULT_MAX_FAILED_PUBLISHES,
            max_bytes_before_publish: ingest::DEFAULT_MAX_BYTES_BEFORE_PUBLISH,
            max_bytes_before_publish_total: ingest::DEFAULT_MAX_BYTES_BEFORE_PUBLISH_TOTAL,
        }
    }
}

/// The least `ingest.max_bytes_before_publish` may be: a real publisher sends about 4 KiB
/// (handshake, connect, createStream, publish) before its publish is accepted.
pub const MIN_BYTES_BEFORE_PUBLISH: usize = 8 << 10;

/// Who may use the API. With no tokens, everyone who reaches it may (loopback only, unless
/// `allow_open`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub tokens: Vec<TokenSettings>,
    /// `/hls/` without a token (players).
    pub public_hls: bool,
    /// `/healthz` without a token (load balancers, monitors).
    pub public_healthz: bool,
    /// `/metrics` without a token (a Prometheus with no credentials).
    pub public_metrics: bool,
    /// Serve the API on an address other than loopback with no token configured.
    pub allow_open: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            public_hls: true,
            public_healthz: true,
            public_metrics: false,
            allow_open: false,
        }
    }
}

/// One API bearer token: who holds it, what it may do, and where its secret is. Exactly one
/// of `token`, `token_sha256`, `token_file` and `credential` is given; the files are read by
/// [`crate::api::auth`] at start-up and on SIGHUP, not here.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Who holds it, for the log.
    pub name: String,
    /// The token itself.
    pub token: Option<String>,
    /// The SHA-256 of the token, in hex (`scorecast hash-token`, or
    /// `printf %s "$TOKEN" | sha256sum`).
    pub token_sha256: Option<String>,
    /// An absolute path to a file holding the token.
    pub token_file: Option<PathBuf>,
    /// A systemd credential (`LoadCredential=NAME:PATH`) holding the token, read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub credential: Option<String>,
    pub role: Role,
}

/// Where a token's secret is, from the one key of [`TokenSettings`] that gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource<'a> {
    Token(&'a str),
    Sha256(&'a str),
    File(&'a Path),
    Credential(&'a str),
}

impl TokenSource<'_> {
    /// The config key that gives it.
    pub fn key(&self) -> &'static str {
        match self {
            TokenSource::Token(_) => "token",
            TokenSource::Sha256(_) => "token_sha256",
            TokenSource::File(_) => "token_file",
            TokenSource::Credential(_) => "credential",
        }
    }
}

/// The keys that may give a token's secret, in the order they are named in errors.
pub const TOKEN_KEYS: [&str; 4] = ["token", "token_sha256", "token_file", "credential"];

impl TokenSettings {
    /// Where its secret is; `Err` names the key at fault when none or more than one is given.
    pub fn source(&self) -> Result<TokenSource<'_>, (&'static str, String)> {
        let given: Vec<TokenSource<'_>> = [
            self.token.as_deref().map(TokenSource::Token),
            self.token_sha256.as_deref().map(TokenSource::Sha256),
            self.token_file.as_deref().map(TokenSource::File),
            self.credential.as_deref().map(TokenSource::Credential),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given[..] {
            [one] => Ok(one),
            [] => Err((
                "token",
                format!("missing: give one of {}", TOKEN_KEYS.join(", ")),
            )),
            [first, second, ..] => Err((
                second.key(),
                format!(
                    "give only one of {}; {} is given too",
                    TOKEN_KEYS.join(", "),
                    first.key()
                ),
            )),
        }
    }
}

/// Leaves the secret out: a token's settings may be printed or logged.
impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source() {
            Ok(TokenSource::Token(_)) => "token (hidden)".to_owned(),
            Ok(TokenSource::Sha256(_)) => "token_sha256 (hidden)".to_owned(),
            Ok(TokenSource::File(path)) => format!("token_file {}", path.display()),
            Ok(TokenSource::Credential(name)) => format!("credential {name}"),
            Err(_) => "none".to_owned(),
        };
        f.debug_struct("TokenSettings")
            .field("name", &self.name)
            .field("source", &source)
            .field("role", &self.role)
            .finish()
    }
}

/// Checks a token's text: at least [`MIN_TOKEN_LENGTH`] characters, with no white space. The
/// message never holds the token.
pub fn check_token_text(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LENGTH || token.chars().any(char::is_whitespace) {
        return Err(format!(
            "must be at least {MIN_TOKEN_LENGTH} characters, with no spaces"
        ));
    }
    Ok(())
}

/// Checks the key that gives a token's secret; the message never holds a secret.
fn check_token_source(source: TokenSource<'_>) -> Result<(), String> {
    match source {
        TokenSource::Token(token) => check_token_text(token),
        TokenSource::Sha256(hex) => {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(
                    "must be a SHA-256 in hex: 64 characters 0-9 and a-f (`scorecast hash-token` \
                     makes one)"
                        .to_owned(),
                )
            }
        }
        TokenSource::File(path) => {
            if path.is_absolute() {
                Ok(())
            } else {
                Err(format!("{} must be an absolute path", path.display()))
            }
        }
        TokenSource::Credential(name) => {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                Err(format!(
                    "{name:?} is not a credential name: give the NAME of the unit's \
                     LoadCredential=NAME:PATH, with no slash"
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// `GET` (and `HEAD`) only.
    ReadOnly,
}

/// The shortest token accepted.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// The log's line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            api_listen: DEFAULT_API_LISTEN.parse().expect("valid default address"),
            rtmp_listen: DEFAULT_RTMP_LISTEN.parse().expect("valid default address"),
            srt_listen: None,
            destinations_ca_file: None,
            srt_latency_ms: crate::ingest::srt::DEFAULT_SRT_LATENCY_MS,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::default(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: server::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout_seconds: server::DEFAULT_HEADER_TIMEOUT.as_secs(),
            max_event_streams: events::DEFAULT_MAX_SUBSCRIBERS,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The program format: what every relay normalises its input to before the overlay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub audio_rate: u32,
    pub audio_channels: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    pub gop_seconds: u32,
    /// x264 speed preset (`ultrafast` … `slow`).
    pub x264_preset: String,
}

impl Default for ProgramSettings {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            fps: DEFAULT_FPS,
            audio_rate: DEFAULT_AUDIO_RATE,
            audio_channels: DEFAULT_AUDIO_CHANNELS,
            video_kbps: DEFAULT_VIDEO_KBPS,
            audio_kbps: DEFAULT_AUDIO_KBPS,
            gop_seconds: DEFAULT_GOP_SECONDS,
            x264_preset: DEFAULT_X264_PRESET.to_owned(),
        }
    }
}

/// `[record]`: the defaults of every relay's `record` (recording is on per relay).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSettings {
    /// Files older than this (by their end) are deleted (`24h`).
    pub retention: String,
    /// A new file after this long (`1h`).
    pub split: String,
    /// A relay's recordings may take this many bytes; the oldest go first. None: no budget.
    pub max_bytes: Option<u64>,
}

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            retention: "24h".to_owned(),
            split: "1h".to_owned(),
            max_bytes: None,
        }
    }
}

impl RecordSettings {
    pub fn retention(&self) -> std::time::Duration {
        crate::scores::poller::parse_duration(&self.retention)
            .unwrap_or(std::time::Duration::from_secs(24 * 3600))
    }

    pub fn split(&self) -> std::time::Duration {
        crate::scores::poller::parse_duration(&self.split)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let spec = crate::relay::spec::RecordSpec {
            retention: Some(self.retention.clone()),
            split: Some(self.split.clone()),
            max_bytes: self.max_bytes,
        };
        spec.check().map_err(|e| (e.field, e.message))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsSettings {
    /// Segment duration in seconds; a multiple of the GOP so every segment starts on a keyframe.
    pub segment_seconds: u32,
    /// Segments listed in each media playlist (the live window).
    pub playlist_length: u32,
}

impl Default for HlsSettings {
    fn default() -> Self {
        Self {
            segment_seconds: DEFAULT_SEGMENT_SECONDS,
            playlist_length: DEFAULT_PLAYLIST_LENGTH,
        }
    }
}

const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
];

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Checks what the types cannot: ranges, relations between keys, and every relay.
    fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.program;
        let positive = [
            ("program.width", p.width),
            ("program.height", p.height),
            ("program.fps", p.fps),
            ("program.audio_rate", p.audio_rate),
            ("program.audio_channels", p.audio_channels),
            ("program.video_kbps", p.video_kbps),
            ("program.audio_kbps", p.audio_kbps),
            ("program.gop_seconds", p.gop_seconds),
            ("hls.segment_seconds", self.hls.segment_seconds),
            ("hls.playlist_length", self.hls.playlist_length),
            (
                "ingest.max_failed_publishes",
                self.ingest.max_failed_publishes,
            ),
        ];
        for (n, origin) in self.server.allowed_origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|message| (format!("server.allowed_origins[{n}]"), message))?;
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => {
                return Err((
                    "server.tls_key".to_owned(),
                    "must be given with server.tls_cert (the certificate's private key)".to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "server.tls_cert".to_owned(),
                    "must be given with server.tls_key (the key's certificate chain)".to_owned(),
                ))
            }
            _ => {}
        }
        self.compat.validate()?;
        self.record.validate()?;
        for (n, host) in self.server.allowed_hosts.iter().enumerate() {
            check_host_name(host)
                .map_err(|message| (format!("server.allowed_hosts[{n}]"), message))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (n, token) in self.auth.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.tokens[{n}].{field}");
            let source = token
                .source()
                .map_err(|(field, message)| (key(field), message))?;
            check_token_source(source).map_err(|message| (key(source.key()), message))?;
            if token.name.is_empty() || !names.insert(token.name.as_str()) {
                return Err((key("name"), "must be given, and unique".to_owned()));
            }
        }
        for (key, value) in positive {
            if value == 0 {
                return Err((key.to_owned(), "must be greater than 0".to_owned()));
            }
        }
        let i = &self.ingest;
        let srv = &self.server;
        let l = &self.limits;
        for (key, value) in [
            ("server.max_connections", srv.max_connections),
            (
                "server.max_connections_per_address",
                srv.max_connections_per_address,
            ),
            (
                "server.header_timeout_seconds",
                usize::try_from(srv.header_timeout_seconds).unwrap_or(usize::MAX),
            ),
            ("server.max_event_streams", srv.max_event_streams),
            ("limits.relays", l.relays),
            ("limits.outputs_per_relay", l.outputs_per_relay),
            ("limits.renditions_per_relay", l.renditions_per_relay),
            ("ingest.max_connections", i.max_connections),
            (
                "ingest.max_connections_per_address",
                i.max_connections_per_address,
            ),
        ] {
            if value == 0 {
                return Err((key.to_owned(), "must be greater than 0".to_owned()));
            }
        }
        if i.max_bytes_before_publish < MIN_BYTES_BEFORE_PUBLISH {
            return Err((
                "ingest.max_bytes_before_publish".to_owned(),
                format!(
                    "must be at least {MIN_BYTES_BEFORE_PUBLISH} (a publisher sends about 4 KiB \
                     before its publish is accepted)"
                ),
            ));
        }
        if !(20..=8000).contains(&srv.srt_latency_ms) {
            return Err((
                "server.srt_latency_ms".to_owned(),
                format!(
                    "{} is out of range: 20 to 8000 ms (SRT's default is 120)",
                    srv.srt_latency_ms
                ),
            ));
        }
        if i.max_bytes_before_publish_total < i.max_bytes_before_publish {
            return Err((
                "ingest.max_bytes_before_publish_total".to_owned(),
                "must be at least ingest.max_bytes_before_publish".to_owned(),
            ));
        }
        for (key, value) in [("program.width", p.width), ("program.height", p.height)] {
            if !value.is_multiple_of(2) {
                return Err((key.to_owned(), format!("{value} must be even")));
            }
        }
        if p.fps > 120 {
            return Err(("program.fps".to_owned(), "must be at most 120".to_owned()));
        }
        if p.audio_channels > 2 {
            return Err((
                "program.audio_channels".to_owned(),
                "must be 1 or 2".to_owned(),
            ));
        }
        if !X264_PRESETS.contains(&p.x264_preset.as_str()) {
            return Err((
                "program.x264_preset".to_owned(),
                format!("must be one of {}", X264_PRESETS.join(", ")),
            ));
        }
        if !self.hls.segment_seconds.is_multiple_of(p.gop_seconds) {
            return Err((
                "hls.segment_seconds".to_owned(),
                format!(
                    "must be a multiple of program.gop_seconds ({})",
                    p.gop_seconds
                ),
            ));
        }
        if self.hls.playlist_length < 6 {
            return Err((
                "hls.playlist_length".to_owned(),
                "must be at least 6".to_owned(),
            ));
        }
        if srv.max_event_streams >= srv.max_connections {
            return Err((
                "server.max_event_streams".to_owned(),
                format!(
                    "must be less than server.max_connections ({}): every event stream holds a connection",
                    srv.max_connections
                ),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, relay) in self.relays.iter().enumerate() {
            relay
                .validate()
                .and_then(|_| relay.check_fits(p.width, p.height))
                .map_err(|SpecError { field, message }| (format!("relay[{i}].{field}"), message))?;
            if i == l.relays {
                return Err((
                    format!("relay[{i}]"),
                    l.check_relay_count(i).expect_err("at the cap").to_string(),
                ));
            }
            l.check_spec(relay).map_err(|e| {
                let field = if e.key == "outputs_per_relay" {
                    "outputs"
                } else {
                    "hls.renditions"
                };
                (format!("relay[{i}].{field}"), e.to_string())
            })?;
            if !ids.insert(relay.id.as_str()) {
                return Err((
                    format!("relay[{i}].id"),
                    format!("duplicate relay id {:?}", relay.id),
                ));
            }
            if let Some(key) = relay.ingest.stream_key() {
                if !keys.insert(key) {
                    return Err((
                        format!("relay[{i}].ingest.stream_key"),
                        "another relay already uses this stream key".to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The parser's message with its line and column, without the quoted line of the file the
/// parser adds: that line may hold a token or a stream key, and the message goes to the log
/// (a refused reload) as well as to the terminal.
fn parse_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A web origin as browsers send it: `http://` or `https://`, a host, an optional port other
/// than the scheme's default, and nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    let form = || {
        format!("{origin:?} is not an origin: give scheme://host[:port], e.g. \"https://ops.example.com\", with no path or trailing slash")
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(form)?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(form()),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !rest.ends_with(']') => (host, Some(port)),
        _ => (rest, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(form());
    }
    match port {
        None => Ok(()),
        Some(p) if p == default_port => Err(format!(
            "{origin:?}: leave out the default port {p}, as browsers do"
        )),
        Some(p) if !p.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
        Some(_) => Err(form()),
    }
}

/// A host name for `server.allowed_hosts`: letters, digits, `-` and `.`, with no port (any port
/// is accepted).
fn check_host_name(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name: give the name alone (e.g. \"scorecast.example.com\"), with no scheme or port; IP addresses and localhost are always accepted"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.server.api_listen.port(), 8080);
        assert_eq!(config.server.rtmp_listen.port(), 1935);
        assert_eq!(config.program, ProgramSettings::default());
        assert_eq!(config.ingest, IngestSettings::default());
        assert!(config.relays.is_empty());
    }

    #[test]
    fn ingest_limits_are_checked() {
        let config = parse("[ingest]\nmax_connections = 16\nmax_connections_per_address = 2\n")
            .expect("valid");
        assert_eq!(config.ingest.max_connections, 16);
        assert_eq!(config.ingest.max_connections_per_address, 2);
        let err = parse("[ingest]\nmax_connections_per_address = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.max_connections_per_address"), "{err}");
        let err = parse("[ingest]\nmax_bytes_before_publish = 100\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.max_bytes_before_publish:"), "{err}");
        let err = parse("[ingest]\nmax_bytes_before_publish_total = 10000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ingest.max_bytes_before_publish_total"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_checked_on_the_config_relays() {
        let relay = |i: usize, extra: &str| {
            format!("[[relay]]\nid = \"r{i}\"\ningest = {{ stream_key = \"k{i}\" }}\n{extra}\n")
        };
        let two: String = (0..2).map(|i| relay(i, "")).collect();
        parse(&format!("[limits]\nrelays = 2\n{two}")).expect("at the cap");
        let three: String = (0..3).map(|i| relay(i, "")).collect();
        let err = parse(&format!("[limits]\nrelays = 2\n{three}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("relay[2]: relay limit reached: 2 (limits.relays)"),
            "{err}"
        );
        let outputs = relay(
            0,
            r#"outputs = [ { id = "a", url = "rtmp://h/a/k" }, { id = "b", url = "rtmp://h/a/k" } ]"#,
        );
        let err = parse(&format!("[limits]\noutputs_per_relay = 1\n{outputs}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "relay[0].outputs: output limit reached: 1 per relay (limits.outputs_per_relay)"
            ),
            "{err}"
        );
        let renditions = relay(0, r#"hls = { renditions = ["720p", "360p"] }"#);
        let err = parse(&format!("[limits]\nrenditions_per_relay = 1\n{renditions}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(limits.renditions_per_relay)"), "{err}");
        let err = parse("[server]\nmax_event_streams = 2000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.max_event_streams"), "{err}");
        let err = parse("[server]\nsrt_latency_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.srt_latency_ms"), "{err}");
        let err = parse("[server]\nheader_timeout_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.header_timeout_seconds"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[program]\nwidht = 640\n").unwrap_err().to_string();
        assert!(err.contains("widht"), "{err}");
    }

    #[test]
    fn unknown_relay_key_is_named() {
        let text = r#"
            [[relay]]
            id = "final"
            ingest = { stream_key = "k" }
            outptus = []
        "#;
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("outptus"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = parse("[hls]\nsegment_seconds = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hls.segment_seconds"), "{err}");
        let err = parse("[[relay]]\nid = \"a b\"\ningest = { stream_key = \"k\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay[0].id"), "{err}");
    }

    #[test]
    fn browser_settings_are_checked() {
        let config = parse(
            "[server]\nallowed_origins = [\"https://ops.example.com\", \"http://[::1]:8080\"]\n\
             allowed_hosts = [\"scorecast.example.com\"]\n",
        )
        .expect("valid");
        assert_eq!(config.server.allowed_hosts, ["scorecast.example.com"]);
        for (text, key) in [
            (
                "allowed_origins = [\"ops.example.com\"]",
                "server.allowed_origins[0]",
            ),
            (
                "allowed_origins = [\"https://ops.example.com/\"]",
                "server.allowed_origins[0]",
            ),
            (
                "allowed_origins = [\"https://a.example\", \"ftp://b.example\"]",
                "server.allowed_origins[1]",
            ),
            (
                "allowed_origins = [\"https://ops.example.com:443\"]",
                "server.allowed_origins[0]",
            ),
            (
                "allowed_origins = [\"http://ops.example.com:x\"]",
                "server.allowed_origins[0]",
            ),
            (
                "allowed_hosts = [\"scorecast.example.com:8080\"]",
                "server.allowed_hosts[0]",
            ),
            (
                "allowed_hosts = [\"https://scorecast.example.com\"]",
                "server.allowed_hosts[0]",
            ),
            ("allowed_hosts = [\"\"]", "server.allowed_hosts[0]"),
        ] {
            let err = parse(&format!("[server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn token_sources_are_checked_and_the_key_named() {
        let hash = "ab".repeat(32);
        let config = parse(&format!(
            "[[auth.tokens]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nrole = \"admin\"\n\
             [[auth.tokens]]\nname = \"b\"\ntoken_file = \"/etc/scorecast/b.token\"\nrole = \"read-only\"\n\
             [[auth.tokens]]\nname = \"c\"\ncredential = \"scorecast-c\"\nrole = \"admin\"\n"
        ))
        .expect("valid");
        assert_eq!(
            config.auth.tokens[0].source(),
            Ok(TokenSource::Sha256(&hash))
        );
        for (body, key) in [
            ("", "auth.tokens[0].token:"),
            ("token = \"short\"", "auth.tokens[0].token:"),
            ("token_sha256 = \"abc\"", "auth.tokens[0].token_sha256:"),
            (
                &format!("token_sha256 = \"{}\"", "g".repeat(64)),
                "auth.tokens[0].token_sha256:",
            ),
            ("token_file = \"b.token\"", "auth.tokens[0].token_file:"),
            ("credential = \"\"", "auth.tokens[0].credential:"),
            ("credential = \"a/b\"", "auth.tokens[0].credential:"),
            (
                &format!("token = \"long-enough-token-0123\"\ntoken_sha256 = \"{hash}\""),
                "auth.tokens[0].token_sha256: give only one",
            ),
        ] {
            let text = format!("[[auth.tokens]]\nname = \"a\"\nrole = \"admin\"\n{body}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{body}: {err}");
        }
        let settings = &config.auth.tokens[0];
        assert!(!format!("{settings:?}").contains(&hash));
    }

    #[test]
    fn a_parse_error_does_not_quote_the_file() {
        let text = "[[auth.tokens]]\nname = \"a\"\ntokn = \"secret-token-0123456789\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("line 3, column 1: unknown field `tokn`"),
            "{err}"
        );
        assert!(!err.contains("secret-token"), "{err}");
        let err = parse("[[auth.tokens]]\ntoken = \"secret-token-0123\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secret-token"), "{err}");
    }

    #[test]
    fn duplicate_stream_keys_are_refused() {
        let text = r#"
            [[relay]]
            id = "a"
            ingest = { stream_key = "same" }
            [[relay]]
            id = "b"
            ingest = { stream_key = "same" }
        "#;
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("relay[1].ingest.stream_key"), "{err}");
    }

    #[test]
    fn relay_tables_take_the_api_shape() {
        let text = r#"
            [[relay]]
            id = "final"
            ingest = { stream_key = "final-key" }
            hls = { renditions = ["720p"] }
            outputs = [ { id = "youtube", url = "rtmp://127.0.0.1/live2/KEY" } ]
        "#;
        let config = parse(text).expect("valid");
        assert_eq!(config.relays[0].outputs[0].id, "youtube");
    }
}
