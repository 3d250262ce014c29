//! Publish hooks (`ingest.auth_url` on a relay): a publish with a stream key that no relay and
//! no caster has is POSTed to each relay's hook as `{"relay", "stream_key", "peer"}`, in id
//! order; the first 2xx answer admits it to that relay, named by the answer's optional
//! `{"name"}`. Any other answer, an unreachable hook or one slower than
//! [`DEFAULT_HOOK_TIMEOUT`] refuses.
//!
//! Owns the HTTP client and the reading of the answer. It must not decide anything else
//! about the publish: the relay takes or refuses it as any other.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::relay::spec::check_name;
use crate::relay::RelayHandle;
use crate::secrets;

/// A hook must answer within this time; a slower one refuses the publish.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(3);
/// The most of a hook's answer read.
const MAX_ANSWER: usize = 16 << 10;

#[derive(Default)]
pub(super) struct Hooks {
    client: OnceLock<reqwest::Client>,
}

impl Hooks {
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(DEFAULT_HOOK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("the HTTP client's settings are valid")
        })
    }

    /// The first of `hooked` whose hook admits `stream_key` from `peer`, and the caster's
    /// name (the answer's, or `guest-<peer port>`).
    pub(super) async fn ask(
        &self,
        hooked: &[(RelayHandle, String)],
        stream_key: &str,
        peer: SocketAddr,
    ) -> Option<(RelayHandle, Option<String>)> {
        for (relay, url) in hooked {
            match self.ask_one(relay.id(), url, stream_key, peer).await {
                Ok(name) => {
                    let name = name.unwrap_or_else(|| format!("guest-{}", peer.port()));
                    debug!(relay = %relay.id(), caster = %name, %peer, "publish hook admitted a publisher");
                    return Some((relay.clone(), Some(name)));
                }
                Err(why) => {
                    debug!(relay = %relay.id(), hook = %secrets::url_for_log(url), %peer, reason = %why, "publish hook refused")
                }
            }
        }
        None
    }

    /// One hook's verdict: `Ok` with the answer's name, or why not.
    async fn ask_one(
        &self,
        relay: &str,
        url: &str,
        stream_key: &str,
        peer: SocketAddr,
    ) -> Result<Option<String>, String> {
        let body = json!({ "relay": relay, "stream_key": stream_key, "peer": peer.to_string() });
        let answer = self.client().post(url).json(&body).send().await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let why = if e.is_timeout() {
                    format!("no answer within {DEFAULT_HOOK_TIMEOUT:?}")
                } else {
                    "unreachable".to_owned()
                };
                warn!(relay = %relay, hook = %secrets::url_for_log(url), reason = %why, "publish hook failed; the publish is refused");
                return Err(why);
            }
        };
        let status = answer.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let bytes = answer.bytes().await.map_err(|_| "answer cut short")?;
        if bytes.len() > MAX_ANSWER || bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let name = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
        match name {
            Some(name) => match check_name("name", &name) {
                Ok(()) => Ok(Some(name)),
                Err(e) => {
                    warn!(relay = %relay, hook = %secrets::url_for_log(url), error = %e, "publish hook named the caster with a name that cannot be used; the publish is refused");
                    Err(e.to_string())
                }
            },
            None => Ok(None),
        }
    }
}
