//! The registry: every relay by id, and the push relays by stream key.
//!
//! Owns the map of relay handles and the uniqueness of ids and stream keys. It must not touch
//! pipelines; it only spawns actors and hands out their handles.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::spec::{RelaySpec, SpecError};
use super::{spawn, RelayContext, RelayHandle};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(SpecError),
    #[error("a relay with id {0:?} already exists")]
    DuplicateId(String),
    #[error("relay {owner:?} already uses this stream key")]
    DuplicateKey { owner: String },
    #[error("no relay with id {0:?}")]
    NotFound(String),
}

struct Entry {
    handle: RelayHandle,
    stream_key: Option<String>,
}

pub struct Registry {
    ctx: Arc<RelayContext>,
    relays: RwLock<BTreeMap<String, Entry>>,
}

impl Registry {
    pub fn new(ctx: RelayContext) -> Self {
        Self {
            ctx: Arc::new(ctx),
            relays: RwLock::new(BTreeMap::new()),
        }
    }

    /// Validates `spec` and spawns its actor (stopped).
    pub fn create(&self, spec: RelaySpec) -> Result<RelayHandle, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        let mut relays = self.relays.write().expect("registry lock poisoned");
        if relays.contains_key(&spec.id) {
            return Err(RegistryError::DuplicateId(spec.id));
        }
        let stream_key = spec.ingest.stream_key.clone();
        if let Some(key) = &stream_key {
            if let Some((owner, _)) = relays
                .iter()
                .find(|(_, e)| e.stream_key.as_deref() == Some(key))
            {
                return Err(RegistryError::DuplicateKey {
                    owner: owner.clone(),
                });
            }
        }
        let id = spec.id.clone();
        let handle = spawn(spec, self.ctx.clone());
        relays.insert(
            id,
            Entry {
                handle: handle.clone(),
                stream_key,
            },
        );
        Ok(handle)
    }

    pub fn get(&self, id: &str) -> Option<RelayHandle> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays.get(id).map(|e| e.handle.clone())
    }

    /// The push relay that owns `stream_key`.
    pub fn by_stream_key(&self, stream_key: &str) -> Option<RelayHandle> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays
            .values()
            .find(|e| e.stream_key.as_deref() == Some(stream_key))
            .map(|e| e.handle.clone())
    }

    /// Every relay, ordered by id.
    pub fn list(&self) -> Vec<RelayHandle> {
        let relays = self.relays.read().expect("registry lock poisoned");
        relays.values().map(|e| e.handle.clone()).collect()
    }

    /// Removes a relay, waits for its actor to stop its pipelines, and deletes its HLS files.
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let entry = {
            let mut relays = self.relays.write().expect("registry lock poisoned");
            relays.remove(id)
        };
        let entry = entry.ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        entry.handle.shutdown().await;
        let dir = self.ctx.hls_root.join(id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(relay = id, dir = %dir.display(), error = %e, "cannot delete HLS files");
            }
        }
        Ok(())
    }

    /// Shuts every relay down, concurrently.
    pub async fn shutdown_all(&self) {
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
