//! Sessions never cross frontends, nor client-certificate policies.
//!
//! Frontends share the workers' session cache and the ticket keys, but a
//! session made on one frontend must not resume on another: that one may
//! require a client certificate the first did not ask for, or serve other
//! names. Likewise a session made before a reload turned mutual TLS on (or
//! changed the client CA) must not skip the new check: rustls does not
//! compare client-certificate policies on resumption. So each frontend's
//! sessions carry a tag, like OpenSSL's session ID context: its name (with
//! several frontends) and its client-certificate policy (the CA's digest
//! and whether a certificate is required). Its cache keys start with the
//! tag ([`FrontendStore`]), and so does each ticket's plaintext
//! ([`FrontendTicketer`]): a key or ticket of another tag is a miss, and
//! the client gets a full handshake.

use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};

/// The first 16 bytes of the tag's SHA-256: a fixed length, so no tag is
/// a prefix of another; prefixed to keys and tickets.
fn tag(tag: &str) -> Vec<u8> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, tag.as_bytes());
    d.as_ref()[..16].to_vec()
}

/// The session tag of a frontend: `name` when there are several frontends,
/// and its client-certificate policy (`client_ca`: the CA file's bytes,
/// and whether a certificate is required) when mutual TLS is on. `None`
/// when neither: sessions are then stored as they come (and an L2 session
/// store sees the plain keys).
pub fn session_tag(name: Option<&str>, client_ca: Option<(&[u8], bool)>) -> Option<String> {
    use std::fmt::Write as _;
    let mut t = String::new();
    if let Some(name) = name {
        let _ = write!(t, "frontend={name};");
    }
    if let Some((ca, required)) = client_ca {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ca);
        let _ = write!(t, "client-ca=");
        for b in d.as_ref() {
            let _ = write!(t, "{b:02x}");
        }
        let _ = write!(t, ";required={required};");
    }
    (!t.is_empty()).then_some(t)
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
    fn tags_name_the_frontend_and_the_client_certificate_policy() {
        assert_eq!(session_tag(None, None), None);
        let a = session_tag(Some("web"), None).unwrap();
        let b = session_tag(None, Some((b"ca", true))).unwrap();
        let c = session_tag(None, Some((b"ca", false))).unwrap();
        let d = session_tag(None, Some((b"other ca", true))).unwrap();
        let all = [&a, &b, &c, &d];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(tag(x), tag(y));
            }
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
