//! The saved desired state of the relays made over the API: `<data_dir>/relays.json`.
//!
//! Owns the file: its versioned format, reading and checking it at start, and writing it
//! atomically (a temp file beside it, fsync, rename, fsync of the directory), readable by the
//! daemon's user alone because it holds stream keys and destination URLs. It must not decide
//! what is saved or when: the registry does, one write at a time.
//!
//! ```json
//! { "version": 1,
//!   "relays": [ { "running": true, "spec": { "id": "final", "ingest": { "stream_key": "k" } } } ] }
//! ```

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{RelaySpec, SpecError};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "relays.json";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a relay state file this scorecast can read: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} has format version {found}; this scorecast reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u64 },
    #[error("{path}: relays[{index}] (relay {id:?}): {source}")]
    InvalidRelay {
        path: PathBuf,
        index: usize,
        id: String,
        source: SpecError,
    },
    #[error("{path}: relays[{index}]: relay id {id:?} appears more than once")]
    DuplicateId {
        path: PathBuf,
        index: usize,
        id: String,
    },
    /// The key itself is not named: errors are logged.
    #[error("{path}: relays[{index}] (relay {id:?}) has the stream key of relay {owner:?}")]
    DuplicateKey {
        path: PathBuf,
        index: usize,
        id: String,
        owner: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One relay as the operator last left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRelay {
    /// Whether the operator wants it running (started and not stopped since).
    pub running: bool,
    pub spec: RelaySpec,
    /// The id it was saved under, when that was its stream key (as `/start_stream` made
    /// them before 0.2): it was given a public id at load, and the old id's HLS files are
    /// to go, since their path holds the key.
    #[serde(skip)]
    pub renamed_from: Option<String>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    relays: &'a [SavedRelay],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[allow(dead_code, reason = "checked before the whole file is parsed")]
    version: u64,
    relays: Vec<SavedRelay>,
}

/// Where the state file lives.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The state file in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and checks the file. A missing file is no relays; anything else that is wrong
    /// (unreadable, not JSON, another version, a relay that breaks the rules, an id or stream
    /// key twice) is an error naming the file, so nothing in it is dropped silently.
    pub fn load(&self) -> Result<Vec<SavedRelay>, StoreError> {
        let path = &self.path;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let corrupt = |message: String| StoreError::Corrupt {
            path: path.clone(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let found = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no \"version\" number".to_owned()))?;
        if found != u64::from(FORMAT_VERSION) {
            return Err(StoreError::Version {
                path: path.clone(),
                found,
            });
        }
        let mut file: FileIn = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        for relay in &mut file.relays {
            if relay.spec.ingest.stream_key.as_deref() == Some(relay.spec.id.as_str()) {
                let public = crate::secrets::public_id();
                relay.renamed_from = Some(std::mem::replace(&mut relay.spec.id, public));
            }
        }
        let mut ids = HashSet::new();
        let mut keys = HashMap::new();
        for (index, relay) in file.relays.iter().enumerate() {
            let spec = &relay.spec;
            spec.validate().map_err(|source| StoreError::InvalidRelay {
                path: path.clone(),
                index,
                id: spec.id.clone(),
                source,
            })?;
            if !ids.insert(spec.id.as_str()) {
                return Err(StoreError::DuplicateId {
                    path: path.clone(),
                    index,
                    id: spec.id.clone(),
                });
            }
            if let Some(key) = spec.ingest.stream_key() {
                if let Some(owner) = keys.insert(key, spec.id.as_str()) {
                    return Err(StoreError::DuplicateKey {
                        path: path.clone(),
                        index,
                        id: spec.id.clone(),
                        owner: owner.to_owned(),
                    });
                }
            }
        }
        Ok(file.relays)
    }

    /// Replaces the file with `relays`, atomically: a reader (or a crash) sees the old file or
    /// the new one, never a mix. Blocking; callers serialize writes.
    pub fn save(&self, relays: &[SavedRelay]) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(&FileOut {
            version: FORMAT_VERSION,
            relays,
        })
        .expect("relay specs always serialize");
        text.push(b'\n');
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_error)?;
        file.write_all(&text).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(write_error)?;
        // The rename itself is durable only once the directory is.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(id: &str, key: &str, running: bool) -> SavedRelay {
        let spec = serde_json::from_value(serde_json::json!({
            "id": id, "ingest": { "stream_key": key },
            "outputs": [ { "id": "yt", "url": "rtmp://127.0.0.1/live2/KEY" } ]
        }))
        .expect("valid spec");
        SavedRelay {
            running,
            spec,
            renamed_from: None,
        }
    }

    #[test]
    fn saves_and_loads_the_same_relays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        assert_eq!(store.load().expect("no file is no relays"), vec![]);
        let relays = vec![relay("a", "ka", true), relay("b", "kb", false)];
        store.save(&relays).expect("save");
        assert_eq!(store.load().expect("load"), relays);
        assert!(!dir.path().join("relays.json.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path()).expect("file").permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let bad_relay = r#"{"version":1,"relays":[{"running":true,"spec":{"id":"a/b","ingest":{"stream_key":"k"}}}]}"#;
        let twice = r#"{"version":1,"relays":[
            {"running":true,"spec":{"id":"a","ingest":{"stream_key":"k"}}},
            {"running":true,"spec":{"id":"b","ingest":{"stream_key":"k"}}}]}"#;
        for (text, needle) in [
            ("{\"version\":1,\"relays\":[", "EOF"),
            ("[]", "version"),
            (r#"{"version":2,"relays":[]}"#, "version 2"),
            (r#"{"version":1,"relays":[],"extra":1}"#, "extra"),
            (bad_relay, "relays[0] (relay \"a/b\"): id:"),
            (
                twice,
                "relays[1] (relay \"b\") has the stream key of relay \"a\"",
            ),
        ] {
            std::fs::write(store.path(), text).expect("write");
            let err = store.load().expect_err(text).to_string();
            assert!(err.contains("relays.json"), "{err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_relay_saved_under_its_stream_key_gets_a_public_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let old = r#"{"version":1,"relays":[{"running":true,"spec":{"id":"match1","ingest":{"stream_key":"match1"}}}]}"#;
        std::fs::write(store.path(), old).expect("write");
        let relays = store.load().expect("loads");
        assert_eq!(relays[0].renamed_from.as_deref(), Some("match1"));
        assert!(relays[0].spec.id.starts_with("s-"), "{:?}", relays[0].spec);
        assert_eq!(relays[0].spec.ingest.stream_key(), Some("match1"));
    }
}
