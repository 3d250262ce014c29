//! The registry: every relay by id, the push relays by stream key, and the saved desired state
//! of the relays made over the API.
//!
//! Owns the map of relay handles, the uniqueness of ids and stream keys, and when the state
//! file is written: after every operator change to a relay made over the API, one write at a
//! time, each from a fresh snapshot of the actors. Operator changes to one relay run one at a
//! time. It must not touch pipelines; it only spawns actors and talks to them through their
//! handles.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{error, info, warn};

use super::casters::Casters;
use super::spec::{OutputSpec, RelaySpec, SpecError};
use super::store::{SavedRelay, Store, StoreError};
use super::{spawn, RelayContext, RelayError, RelayHandle, RelayPhase, RelayStatus};
use crate::config::{LimitError, LimitSettings};
use crate::events::EventBus;
use crate::scores::Source as ScoreSource;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(SpecError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("a relay with id {0:?} already exists")]
    DuplicateId(String),
    #[error("relay {owner:?} already uses this stream key")]
    DuplicateKey { owner: String },
    /// A stream key that is another relay's id would be public in that relay's HLS paths,
    /// metrics and events; and an id that is another relay's stream key would publish it.
    #[error("{field}: is relay {other:?}'s {what}; ids are public and stream keys secret, so they never meet")]
    KeyClash {
        field: &'static str,
        other: String,
        what: &'static str,
    },
    #[error("no relay with id {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("invalid patch: {0}")]
    BadPatch(String),
    #[error("relay {0} is running; stop it before changing it (destinations can be added and removed while it runs)")]
    Running(String),
    #[error("the change was made, but {0}; it will be lost when the daemon restarts")]
    NotSaved(StoreError),
}

/// Where a relay came from. Only relays made over the API are saved: the config file is the
/// source of its own relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Api,
}

struct Entry {
    handle: RelayHandle,
    stream_key: Option<String>,
    /// A queue relay's casters (empty for others), shared with its actor.
    casters: Arc<Casters>,
    /// Its publish hook (`ingest.auth_url`).
    auth_url: Option<String>,
    origin: Origin,
    /// Held through each operator change, so changes to one relay never interleave.
    ops: Arc<Mutex<()>>,
}

/// The state file and what was last written to it.
struct Saved {
    store: Option<Store>,
    relays: BTreeMap<String, SavedRelay>,
    /// Set at shutdown: the actors are going away, and that is not the operator's doing.
    closed: bool,
}

pub struct Registry {
    ctx: Arc<RelayContext>,
    relays: RwLock<BTreeMap<String, Entry>>,
    saved: Mutex<Saved>,
    /// How many relays, and how big, the API may make.
    limits: LimitSettings,
}

impl Registry {
    /// A registry that saves the relays made over the API to `store`, if given.
    pub fn new(ctx: RelayContext, store: Option<Store>) -> Self {
        Self {
            ctx: Arc::new(ctx),
            relays: RwLock::new(BTreeMap::new()),
            saved: Mutex::new(Saved {
                store,
                relays: BTreeMap::new(),
                closed: false,
            }),
            limits: LimitSettings::default(),
        }
    }

    /// The same registry, holding the API's changes to `limits` (the config file's relays
    /// are checked when it loads).
    pub fn with_limits(mut self, limits: LimitSettings) -> Self {
        self.limits = limits;
        self
    }

    /// Validates `spec` and spawns its actor (stopped). Nothing is saved: see
    /// [`Registry::create_saved`].
    pub fn create(&self, spec: RelaySpec, origin: Origin) -> Result<RelayHandle, RegistryError> {
        self.create_capped(spec, origin, false)
    }

    /// As [`Registry::create`]; `capped`, it also holds `spec` and the number of relays to
    /// the limits.
    fn create_capped(
        &self,
        spec: RelaySpec,
        origin: Origin,
        capped: bool,
    ) -> Result<RelayHandle, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        if capped {
            self.limits.check_spec(&spec)?;
        }
        let mut relays = self.relays.write().expect("registry lock poisoned");
        if relays.contains_key(&spec.id) {
            return Err(RegistryError::DuplicateId(spec.id));
        }
        if capped {
            self.limits.check_relay_count(relays.len())?;
        }
        let stream_key = spec.ingest.stream_key.clone();
        if let Some(owner) = key_owner(&relays, stream_key.as_deref(), None) {
            return Err(RegistryError::DuplicateKey { owner });
        }
        key_clash(&relays, &spec)?;
        let id = spec.id.clone();
        let casters = Arc::new(Casters::default());
        let auth_url = spec.ingest.auth_url.clone();
        let handle = spawn(spec, self.ctx.clone(), casters.clone());
        relays.insert(
            id,
            Entry {
                handle: handle.clone(),
                stream_key,
                casters,
                auth_url,
                origin,
                ops: Arc::default(),
            },
        );
        Ok(handle)
    }

    /// Creates a relay for the API (stopped), within the limits, and saves it.
    pub async fn create_saved(&self, spec: RelaySpec) -> Result<RelayStatus, RegistryError> {
        let handle = self.create_capped(spec, Origin::Api, true)?;
        let status = handle.status().await?;
        self.save().await?;
        Ok(status)
    }

    /// Brings back the relays saved before the last stop, each started if the operator had it
    /// running. Call it after the config's relays exist: a saved relay whose id or stream key
    /// a config relay has is skipped (the config wins), with a warning that carries its spec
    /// (secrets masked), and it leaves the file at the next write. A relay the store gave a
    /// public id loses the HLS files of its old id, whose path held its stream key.
    pub async fn restore(&self, saved: Vec<SavedRelay>) {
        for relay in saved {
            let id = relay.spec.id.clone();
            let spec_json =
                serde_json::to_string(&crate::secrets::spec(&relay.spec)).unwrap_or_default();
            if let Some(old) = &relay.renamed_from {
                self.remove_hls(old, &id).await;
                info!(relay = %id, "saved relay had its stream key as its id; it has a public id now");
            }
            let handle = match self.create(relay.spec.clone(), Origin::Api) {
                Ok(handle) => handle,
                Err(e @ (RegistryError::DuplicateId(_) | RegistryError::DuplicateKey { .. })) => {
                    warn!(relay = %id, reason = %e, spec = %spec_json, "saved relay skipped: a relay from the config has its id or stream key, and the config wins");
                    continue;
                }
                Err(e) => {
                    warn!(relay = %id, reason = %e, spec = %spec_json, "saved relay skipped");
                    continue;
                }
            };
            self.saved
                .lock()
                .await
                .relays
                .insert(id.clone(), relay.clone());
            if relay.running {
                if let Err(e) = handle.start().await {
                    warn!(relay = %id, reason = %e, "saved relay restored but cannot start; it stays stopped");
                    continue;
                }
            }
            info!(relay = %id, running = relay.running, "relay restored from the saved state");
        }
    }

    /// The live event feed the relays publish to.
    pub fn events(&self) -> Arc<EventBus> {
        self.ctx.events.clone()
    }

    pub fn get(&self, id: &str) -> Option<RelayHandle> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays.get(id).map(|e| e.handle.clone())
    }

    /// The push relay that owns `stream_key` (a relay's own key, not a caster's), compared as
    /// [`Registry::by_publish_key`] does.
    pub fn by_stream_key(&self, stream_key: &str) -> Option<RelayHandle> {
        match self.by_publish_key(stream_key)? {
            (handle, None) => Some(handle),
            (_, Some(_)) => None,
        }
    }

    /// The relay a publish with `stream_key` goes to, and the caster it names on a queue
    /// relay. Every relay's key and every caster's are compared, each in constant time.
    pub fn by_publish_key(&self, stream_key: &str) -> Option<(RelayHandle, Option<String>)> {
        let relays = self.relays.read().expect("registry lock poisoned");
        let mut found = None;
        for entry in relays.values() {
            let matches = entry
                .stream_key
                .as_deref()
                .is_some_and(|key| constant_time_eq(key.as_bytes(), stream_key.as_bytes()));
            if matches {
                found = Some((entry.handle.clone(), None));
            }
            if let Some(name) = entry.casters.by_key(stream_key) {
                found = Some((entry.handle.clone(), Some(name)));
            }
        }
        found
    }

    /// The relays with a publish hook, and its URL, ordered by id.
    pub fn hooks(&self) -> Vec<(RelayHandle, String)> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays
            .values()
            .filter_map(|e| Some((e.handle.clone(), e.auth_url.clone()?)))
            .collect()
    }

    /// A queue relay's casters.
    pub fn casters(&self, id: &str) -> Result<Arc<Casters>, RegistryError> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays
            .get(id)
            .map(|e| e.casters.clone())
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    /// Every relay, ordered by id.
    pub fn list(&self) -> Vec<RelayHandle> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays.values().map(|e| e.handle.clone()).collect()
    }

    /// Takes the relay's operator lock and returns its current handle.
    async fn operate(
        &self,
        id: &str,
    ) -> Result<(OwnedMutexGuard<()>, RelayHandle, Origin), RegistryError> {
        loop {
            let ops = {
                let relays = self.relays.read().expect("registry lock poisoned");
                let entry = relays
                    .get(id)
                    .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
                entry.ops.clone()
            };
            let guard = ops.clone().lock_owned().await;
            let relays = self.relays.read().expect("registry lock poisoned");
            match relays.get(id) {
                Some(e) if Arc::ptr_eq(&e.ops, &ops) => {
                    return Ok((guard, e.handle.clone(), e.origin))
                }
                // Deleted and made again while we waited: take the new one's lock.
                Some(_) => continue,
                None => return Err(RegistryError::NotFound(id.to_owned())),
            }
        }
    }

    /// Saves after a change to a relay of `origin`.
    async fn saved_if(&self, origin: Origin) -> Result<(), RegistryError> {
        match origin {
            Origin::Api => self.save().await,
            Origin::Config => Ok(()),
        }
    }

    pub async fn start(&self, id: &str) -> Result<RelayStatus, RegistryError> {
        let (_ops, handle, origin) = self.operate(id).await?;
        let status = handle.start().await?;
        self.saved_if(origin).await?;
        Ok(status)
    }

    pub async fn stop(&self, id: &str) -> Result<RelayStatus, RegistryError> {
        let (_ops, handle, origin) = self.operate(id).await?;
        let status = handle.stop().await?;
        self.saved_if(origin).await?;
        Ok(status)
    }

    pub async fn add_output(
        &self,
        id: &str,
        spec: OutputSpec,
    ) -> Result<RelayStatus, RegistryError> {
        let (_ops, handle, origin) = self.operate(id).await?;
        let outputs = handle.status().await?.spec.outputs.len();
        self.limits.check_output_count(outputs)?;
        let status = handle.add_output(spec).await?;
        self.saved_if(origin).await?;
        Ok(status)
    }

    pub async fn remove_output(
        &self,
        id: &str,
        output_id: &str,
    ) -> Result<RelayStatus, RegistryError> {
        let (_ops, handle, origin) = self.operate(id).await?;
        let status = handle.remove_output(output_id.to_owned()).await?;
        self.saved_if(origin).await?;
        Ok(status)
    }

    /// Changes a stopped relay: `patch` is a JSON merge patch (RFC 7396) of its spec. The
    /// relay gets a new actor with the new spec; a score set by hand carries over.
    pub async fn patch(&self, id: &str, patch: &Value) -> Result<RelayStatus, RegistryError> {
        if !patch.is_object() {
            return Err(RegistryError::BadPatch(
                "the body must be a JSON object of the fields to change".to_owned(),
            ));
        }
        let (_ops, old, origin) = self.operate(id).await?;
        let current = old.status().await?;
        // A bad patch is refused as such, whatever state the relay is in.
        let mut doc = serde_json::to_value(&current.spec).expect("relay specs always serialize");
        merge_patch(&mut doc, patch);
        let spec: RelaySpec =
            serde_json::from_value(doc).map_err(|e| RegistryError::BadPatch(e.to_string()))?;
        if spec.id != id {
            return Err(RegistryError::Invalid(SpecError {
                field: "id".to_owned(),
                message: "a relay's id cannot change; create a new relay instead".to_owned(),
            }));
        }
        spec.validate().map_err(RegistryError::Invalid)?;
        self.limits.check_spec(&spec)?;
        if current.phase != RelayPhase::Stopped {
            return Err(RegistryError::Running(id.to_owned()));
        }
        if spec == current.spec {
            return Ok(current);
        }
        let new = self.swap(id, &old, spec).await?;
        info!(relay = %id, "relay changed by patch");
        let status = new.status().await?;
        self.saved_if(origin).await?;
        Ok(status)
    }

    /// Gives a relay from the config its new spec from a reloaded config: its actor is
    /// replaced (the program is rebuilt, HLS continues its sequence), and it runs again if it
    /// was running. A score set by hand carries over.
    pub async fn replace(&self, spec: RelaySpec) -> Result<RelayStatus, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        let id = spec.id.clone();
        let (_ops, old, _) = self.operate(&id).await?;
        let running = old.status().await?.phase != RelayPhase::Stopped;
        let new = self.swap(&id, &old, spec).await?;
        if running {
            new.start().await?;
        }
        Ok(new.status().await?)
    }

    /// Where relay `id` came from, if it exists.
    pub fn origin(&self, id: &str) -> Option<Origin> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays.get(id).map(|e| e.origin)
    }

    /// Spawns an actor for `spec` in place of `old` (the caller holds the relay's operator
    /// lock), stops the old one, and carries a hand-set score over.
    async fn swap(
        &self,
        id: &str,
        old: &RelayHandle,
        spec: RelaySpec,
    ) -> Result<RelayHandle, RegistryError> {
        let score = old.score().await?;
        let new = {
            let mut relays = self.relays.write().expect("registry lock poisoned");
            let stream_key = spec.ingest.stream_key.clone();
            if let Some(owner) = key_owner(&relays, stream_key.as_deref(), Some(id)) {
                return Err(RegistryError::DuplicateKey { owner });
            }
            key_clash(&relays, &spec)?;
            let entry = relays
                .get_mut(id)
                .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
            entry.auth_url = spec.ingest.auth_url.clone();
            let new = spawn(spec, self.ctx.clone(), entry.casters.clone());
            entry.handle = new.clone();
            entry.stream_key = stream_key;
            new
        };
        old.shutdown().await;
        if let (Some(board), Some(ScoreSource::Manual)) = (score.scoreboard, score.source) {
            new.set_score(board).await?;
        }
        Ok(new)
    }

    /// Removes a relay, waits for its actor to stop its pipelines, deletes its HLS files, and
    /// saves.
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let (_ops, _, _) = self.operate(id).await?;
        let entry = {
            let mut relays = self.relays.write().expect("registry lock poisoned");
            relays.remove(id)
        };
        let entry = entry.ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        entry.handle.shutdown().await;
        if let Some(dir) = &self.ctx.queues_dir {
            // Its casters' keys go with it.
            let _ = tokio::fs::remove_file(dir.join(format!("{id}.json"))).await;
        }
        self.ctx
            .events
            .publish("relay_removed", id, Value::Object(Default::default()));
        self.remove_hls(id, id).await;
        self.saved_if(entry.origin).await
    }

    /// Deletes the HLS files under `dir_name` of relay `id`.
    async fn remove_hls(&self, dir_name: &str, id: &str) {
        let dir = self.ctx.hls_root.join(dir_name);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                // The path is named only when it is the relay's id, which is public.
                let dir = if dir_name == id {
                    dir.display().to_string()
                } else {
                    crate::secrets::MASK.to_owned()
                };
                warn!(relay = id, dir = %dir, error = %e, "cannot delete HLS files");
            }
        }
    }

    /// Writes the desired state of every relay made over the API: its spec and whether it
    /// should run, as its actor has them now. Writes are serialized and each takes its own
    /// snapshot, so the file always holds every change that completed before the write.
    pub async fn save(&self) -> Result<(), RegistryError> {
        let mut saved = self.saved.lock().await;
        if saved.closed {
            return Ok(());
        }
        let Some(store) = saved.store.clone() else {
            return Ok(());
        };
        let handles: Vec<RelayHandle> = {
            let relays = self.relays.read().expect("registry lock poisoned");
            relays
                .values()
                .filter(|e| e.origin == Origin::Api)
                .map(|e| e.handle.clone())
                .collect()
        };
        let statuses = futures_util::future::join_all(handles.iter().map(|h| h.status())).await;
        let mut next = BTreeMap::new();
        for (handle, status) in handles.iter().zip(statuses) {
            let id = handle.id().to_owned();
            let relay = match status {
                Ok(s) => SavedRelay {
                    running: s.phase != RelayPhase::Stopped,
                    spec: s.spec,
                    renamed_from: None,
                },
                // An actor that is gone while still listed keeps what was last saved.
                Err(e) => match saved.relays.get(&id) {
                    Some(last) => {
                        warn!(relay = %id, reason = %e, "relay not answering; its last saved state is kept");
                        last.clone()
                    }
                    None => continue,
                },
            };
            next.insert(id, relay);
        }
        let list: Vec<SavedRelay> = next.values().cloned().collect();
        let path = store.path().display().to_string();
        let file = store.path().to_owned();
        let written = tokio::task::spawn_blocking(move || store.save(&list))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Write {
                    path: file,
                    source: std::io::Error::other(e),
                })
            });
        match written {
            Ok(()) => {
                tracing::debug!(file = %path, relays = next.len(), "relay state saved");
                saved.relays = next;
                Ok(())
            }
            Err(e) => {
                error!(file = %path, error = %e, "cannot save the relay state");
                Err(RegistryError::NotSaved(e))
            }
        }
    }

    /// Shuts every relay down, concurrently. Saving stops first: relays stopping because the
    /// daemon does stay saved as the operator left them.
    pub async fn shutdown_all(&self) {
        self.saved.lock().await.closed = true;
        let handles = {
            let mut relays = self.relays.write().expect("registry lock poisoned");
            std::mem::take(&mut *relays)
        };
        let waits = handles.into_values().map(|e| async move {
            e.handle.shutdown().await;
        });
        futures_util::future::join_all(waits).await;
    }
}

/// The relay, other than `except`, that has `stream_key`.
fn key_owner(
    relays: &BTreeMap<String, Entry>,
    stream_key: Option<&str>,
    except: Option<&str>,
) -> Option<String> {
    let key = stream_key?;
    relays
        .iter()
        .find(|(id, e)| Some(id.as_str()) != except && e.stream_key.as_deref() == Some(key))
        .map(|(id, _)| id.clone())
}

/// Refuses `spec` when its stream key is another relay's id, or its id another relay's stream
/// key. Keys are compared in constant time.
fn key_clash(relays: &BTreeMap<String, Entry>, spec: &RelaySpec) -> Result<(), RegistryError> {
    let key = spec.ingest.stream_key();
    for (id, entry) in relays.iter().filter(|(id, _)| **id != spec.id) {
        if key.is_some_and(|key| constant_time_eq(key.as_bytes(), id.as_bytes())) {
            return Err(RegistryError::KeyClash {
                field: "ingest.stream_key",
                other: id.clone(),
                what: "id",
            });
        }
        let theirs = entry.stream_key.as_deref().unwrap_or_default();
        if constant_time_eq(theirs.as_bytes(), spec.id.as_bytes()) {
            return Err(RegistryError::KeyClash {
                field: "id",
                other: id.clone(),
                what: "stream key",
            });
        }
    }
    Ok(())
}

/// Applies a JSON merge patch (RFC 7396): objects merge, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, value) in changes {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"m": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"m": 1}})
        );
    }
}
