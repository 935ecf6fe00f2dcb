//! Sessions never cross frontends.
//!
//! Frontends share the workers' session cache and the ticket keys, but a
//! session made on one frontend must not resume on another: that one may
//! require a client certificate the first did not ask for, or serve other
//! names. With several frontends, each frontend's cache keys carry its name
//! ([`FrontendStore`]) and each ticket's plaintext starts with it
//! ([`FrontendTicketer`]): a key or ticket of another frontend is a miss,
//! and the client gets a full handshake.

use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};

/// `len(name) || name`: the frontend's tag, prefixed to keys and tickets.
fn tag(name: &str) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut t = Vec::with_capacity(1 + name.len());
    t.push(name.len() as u8);
    t.extend_from_slice(name);
    t
}

/// A session store seen by one frontend: its keys are prefixed with the
/// frontend's tag.
#[derive(Debug)]
pub struct FrontendStore {
    inner: Arc<dyn StoresServerSessions>,
    tag: Vec<u8>,
}

impl FrontendStore {
    /// `inner`, for frontend `name`.
    pub fn new(inner: Arc<dyn StoresServerSessions>, name: &str) -> Self {
        Self {
            inner,
            tag: tag(name),
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.tag.len() + key.len());
        k.extend_from_slice(&self.tag);
        k.extend_from_slice(key);
        k
    }
}

impl StoresServerSessions for FrontendStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A ticketer seen by one frontend: the plaintext it encrypts starts with
/// the frontend's tag, and a ticket whose plaintext does not is refused.
#[derive(Debug)]
pub struct FrontendTicketer {
    inner: Arc<dyn ProducesTickets>,
    tag: Vec<u8>,
}

impl FrontendTicketer {
    /// `inner`, for frontend `name`.
    pub fn new(inner: Arc<dyn ProducesTickets>, name: &str) -> Self {
        Self {
            inner,
            tag: tag(name),
        }
    }
}

impl ProducesTickets for FrontendTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut tagged = Vec::with_capacity(self.tag.len() + plain.len());
        tagged.extend_from_slice(&self.tag);
        tagged.extend_from_slice(plain);
        self.inner.encrypt(&tagged)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        plain.strip_prefix(self.tag.as_slice()).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Map(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

    impl StoresServerSessions for Map {
        fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
            self.0.lock().unwrap().insert(key, value);
            true
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.lock().unwrap().get(key).cloned()
        }
        fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.lock().unwrap().remove(key)
        }
        fn can_cache(&self) -> bool {
            true
        }
    }

    /// "Encrypts" by reversing.
    #[derive(Debug)]
    struct Rev;

    impl ProducesTickets for Rev {
        fn enabled(&self) -> bool {
            true
        }
        fn lifetime(&self) -> u32 {
            60
        }
        fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
            Some(plain.iter().rev().copied().collect())
        }
        fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
            Some(cipher.iter().rev().copied().collect())
        }
    }

    #[test]
    fn a_session_of_one_frontend_is_a_miss_on_another() {
        let shared: Arc<dyn StoresServerSessions> = Arc::new(Map::default());
        let (web, api) = (
            FrontendStore::new(shared.clone(), "web"),
            FrontendStore::new(shared.clone(), "api"),
        );
        assert!(web.put(b"id".to_vec(), b"state".to_vec()));
        assert_eq!(api.get(b"id"), None);
        assert_eq!(api.take(b"id"), None);
        assert_eq!(web.get(b"id").as_deref(), Some(&b"state"[..]));
        assert_eq!(web.take(b"id").as_deref(), Some(&b"state"[..]));

        let keys: Arc<dyn ProducesTickets> = Arc::new(Rev);
        let (web, api) = (
            FrontendTicketer::new(keys.clone(), "web"),
            FrontendTicketer::new(keys.clone(), "api"),
        );
        let ticket = web.encrypt(b"state").unwrap();
        assert_eq!(web.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(api.decrypt(&ticket), None);
        // A name that is a prefix of another is still another frontend.
        let (a, ab) = (
            FrontendTicketer::new(keys.clone(), "a"),
            FrontendTicketer::new(keys, "ab"),
        );
        assert_eq!(a.decrypt(&ab.encrypt(b"x").unwrap()), None);
    }
}
