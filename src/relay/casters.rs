//! A queue relay's casters: each a name and a stream key of their own, generated here.
//!
//! Owns the list and the lookup of a key, which the RTMP server makes at each publish through
//! the [`Registry`](super::registry::Registry) (a shared, synchronous read, comparing every key
//! in constant time). The relay's actor saves the list with its queue (`queue_file`); this
//! module must not write files or touch the queue's order.

use std::io::Read;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::registry::constant_time_eq;

/// Random bytes in a generated caster key: 128 bits.
const KEY_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caster {
    pub name: String,
    pub stream_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CasterError {
    #[error("relay {relay} already has a caster {name:?}")]
    Exists { relay: String, name: String },
    #[error("relay {relay} has no caster {name:?}")]
    NotFound { relay: String, name: String },
    #[error("relay {0} has no queue: casters belong to queue relays")]
    NoQueue(String),
    #[error("cannot generate a stream key: reading /dev/urandom failed: {0}")]
    Random(std::io::Error),
}

/// One relay's casters.
#[derive(Debug, Default)]
pub struct Casters(RwLock<Vec<Caster>>);

impl Casters {
    /// The caster whose key is `stream_key`. Every key is compared, each in constant time.
    pub fn by_key(&self, stream_key: &str) -> Option<String> {
        let list = self.0.read().expect("casters lock poisoned");
        let mut found = None;
        for caster in list.iter() {
            if constant_time_eq(caster.stream_key.as_bytes(), stream_key.as_bytes()) {
                found = Some(caster.name.clone());
            }
        }
        found
    }

    /// A new caster `name` of relay `relay`, with a fresh key.
    pub fn add(&self, relay: &str, name: &str) -> Result<Caster, CasterError> {
        let mut list = self.0.write().expect("casters lock poisoned");
        if list.iter().any(|c| c.name == name) {
            return Err(CasterError::Exists {
                relay: relay.to_owned(),
                name: name.to_owned(),
            });
        }
        let caster = Caster {
            name: name.to_owned(),
            stream_key: new_key().map_err(CasterError::Random)?,
        };
        list.push(caster.clone());
        Ok(caster)
    }

    pub fn remove(&self, relay: &str, name: &str) -> Result<(), CasterError> {
        let mut list = self.0.write().expect("casters lock poisoned");
        let before = list.len();
        list.retain(|c| c.name != name);
        if list.len() == before {
            return Err(CasterError::NotFound {
                relay: relay.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<Caster> {
        self.0.read().expect("casters lock poisoned").clone()
    }

    /// Replaces the list (loaded from the data dir).
    pub fn set(&self, casters: Vec<Caster>) {
        *self.0.write().expect("casters lock poisoned") = casters;
    }
}

/// A new stream key: 128 random bits from the kernel, in hex. There is no weaker fallback: a
/// key anyone could predict would be worse than none.
fn new_key() -> std::io::Result<String> {
    let mut bytes = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casters_get_distinct_long_keys_found_by_key() {
        let casters = Casters::default();
        let alice = casters.add("community", "alice").unwrap();
        let bob = casters.add("community", "bob").unwrap();
        assert_eq!(alice.stream_key.len(), 2 * KEY_BYTES);
        assert_ne!(alice.stream_key, bob.stream_key);
        assert_eq!(casters.by_key(&bob.stream_key).as_deref(), Some("bob"));
        assert_eq!(casters.by_key("guess"), None);
        assert!(matches!(
            casters.add("community", "alice"),
            Err(CasterError::Exists { .. })
        ));
        casters.remove("community", "alice").unwrap();
        assert_eq!(casters.by_key(&alice.stream_key), None);
        assert!(matches!(
            casters.remove("community", "alice"),
            Err(CasterError::NotFound { .. })
        ));
    }
}
