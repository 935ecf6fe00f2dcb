//! Stateless session-ticket protection, shareable across a fleet.
//!
//! This is ringterm's [`rustls::server::ProducesTickets`] implementation,
//! modelled on nginx's `ssl_session_ticket_key`: every server that loads the
//! same key file can decrypt the tickets of every other, so a resumption can
//! land on any machine behind the load balancer.
//!
//! # Key files
//!
//! A key file is raw bytes (not PEM, not hex), the same format nginx uses:
//!
//! * **80 bytes**: a 16-byte key name followed by a 64-byte secret, or
//! * **48 bytes**: a 16-byte key name followed by a 32-byte secret.
//!
//! Generate one with `head -c 80 /dev/urandom > FILE` (and keep it
//! `chmod 600`). The name is sent in clear at the front of every ticket so
//! that the right key can be found; the AES-256-GCM key is derived from the
//! secret with HKDF-SHA256 (salt = name, info = `"ringterm ticket key v1"`),
//! so the whole secret contributes and nothing secret is ever on the wire.
//!
//! # Ticket format
//!
//! ```text
//! name (16) || nonce (12, random) || AES-256-GCM(plaintext) || tag (16)
//! ```
//!
//! The AAD is the name. Nonces are random because several processes (and
//! machines) encrypt under the same key without coordinating; rotate keys
//! well before 2^32 tickets per key.
//!
//! # Rotation
//!
//! The first key in the set encrypts, every key decrypts. With key files the
//! runtime re-reads them (e.g. on SIGHUP) and calls [`Ticketer::set_keys`];
//! without key files it calls [`Ticketer::rotate`] with [`TicketKey::random`]
//! on its own timer. This module never reads files or the clock.
//!
//! The handshake path only does an [`ArcSwap::load`]: no locks.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;

/// Length of a ticket key name, sent in clear at the front of each ticket.
pub const NAME_LEN: usize = 16;
/// Length of the AES-256-GCM tag appended to each ticket.
const TAG_LEN: usize = 16;
/// Length of the AEAD key derived from a key file's secret.
const AEAD_KEY_LEN: usize = 32;
/// Smallest well-formed ticket: name, nonce and tag around an empty plaintext.
const MIN_TICKET_LEN: usize = NAME_LEN + NONCE_LEN + TAG_LEN;
/// HKDF `info` for deriving the AEAD key; bump the version to change the KDF.
const HKDF_INFO: &[u8] = b"ringterm ticket key v1";
/// Accepted key-file sizes: name + 64-byte secret, or name + 32-byte secret.
const FILE_LEN_LONG: usize = NAME_LEN + 64;
const FILE_LEN_SHORT: usize = NAME_LEN + 32;

/// What can go wrong building ticket keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketError {
    /// A key file was neither 48 nor 80 bytes long.
    #[error("{file}: ticket key must be 48 or 80 bytes, got {len} (generate one with: head -c 80 /dev/urandom > FILE)")]
    BadLength {
        /// The file (or other source) the bytes came from.
        file: String,
        /// How many bytes it held.
        len: usize,
    },
    /// An empty set of keys was given to [`Ticketer::new`],
    /// [`Ticketer::set_keys`] or [`TicketKeys::new`]; `file` names the
    /// source ([`NO_KEYS_SOURCE`] when called with an empty `Vec`).
    #[error("{file}: no ticket key given")]
    NoKeys {
        /// The source that yielded no keys.
        file: String,
    },
    /// The system random number generator failed.
    #[error("random number generation failed")]
    Rng,
    /// Deriving the AEAD key from the secret failed (should not happen).
    #[error("{file}: ticket key derivation failed")]
    Derive {
        /// The file the secret came from.
        file: String,
    },
}

/// The `file` reported in [`TicketError::NoKeys`] when a key list is empty.
pub const NO_KEYS_SOURCE: &str = "ticket key list";

/// One ticket key: a 16-byte name (sent in clear at the front of each ticket,
/// to find the key) and an AES-256-GCM key.
pub struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl TicketKey {
    /// From an nginx-style key file's bytes: exactly 80 bytes (16 name + 64
    /// secret) or 48 bytes (16 name + 32 secret). The AEAD key is derived from
    /// the secret with HKDF-SHA256 (salt = name, info =
    /// `b"ringterm ticket key v1"`). `file` names the file in errors.
    pub fn from_file_bytes(file: &str, bytes: &[u8]) -> Result<Self, TicketError> {
        if bytes.len() != FILE_LEN_LONG && bytes.len() != FILE_LEN_SHORT {
            return Err(TicketError::BadLength {
                file: file.to_owned(),
                len: bytes.len(),
            });
        }
        let (name_bytes, secret) = bytes.split_at(NAME_LEN);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(name_bytes);
        Self::derive(file, name, secret)
    }

    /// A random key (for processes without key files).
    pub fn random() -> Result<Self, TicketError> {
        let mut bytes = [0u8; FILE_LEN_SHORT];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TicketError::Rng)?;
        let (name_bytes, secret) = bytes.split_at(NAME_LEN);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(name_bytes);
        let key = Self::derive("random ticket key", name, secret);
        wipe(&mut bytes);
        key
    }

    /// The key's name, as sent in clear at the front of its tickets.
    pub fn name(&self) -> [u8; NAME_LEN] {
        self.name
    }

    fn derive(file: &str, name: [u8; NAME_LEN], secret: &[u8]) -> Result<Self, TicketError> {
        let derive_err = || TicketError::Derive {
            file: file.to_owned(),
        };
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &name).extract(secret);
        let info = [HKDF_INFO];
        let okm = prk
            .expand(&info, OkmLen(AEAD_KEY_LEN))
            .map_err(|_| derive_err())?;
        let mut key_bytes = [0u8; AEAD_KEY_LEN];
        let filled = okm.fill(&mut key_bytes);
        let unbound = filled.and_then(|()| UnboundKey::new(&AES_256_GCM, &key_bytes));
        wipe(&mut key_bytes);
        let key = LessSafeKey::new(unbound.map_err(|_| derive_err())?);
        Ok(Self { name, key })
    }

    /// Seals `plain` into a ticket under this key.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(MIN_TICKET_LEN + plain.len());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(plain.len() + TAG_LEN);
        body.extend_from_slice(plain);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens a ticket whose name already matched this key. `rest` is
    /// everything after the name: nonce || ciphertext || tag.
    fn open(&self, rest: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &Hex(&self.name))
            .finish_non_exhaustive()
    }
}

/// HKDF output length for a raw AEAD key.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Best-effort erasure of a stack copy of key material.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// Lower-case hex for names in `Debug` output (never used on secrets).
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The set in use: the first key encrypts, all keys decrypt. Never empty.
pub struct TicketKeys {
    keys: Vec<Arc<TicketKey>>,
}

impl TicketKeys {
    /// The set `keys`, first one encrypting. Errors if `keys` is empty.
    pub fn new(keys: Vec<TicketKey>) -> Result<Self, TicketError> {
        if keys.is_empty() {
            return Err(TicketError::NoKeys {
                file: NO_KEYS_SOURCE.to_owned(),
            });
        }
        Ok(Self {
            keys: keys.into_iter().map(Arc::new).collect(),
        })
    }

    /// The key that encrypts new tickets.
    pub fn encrypting(&self) -> &TicketKey {
        &self.keys[0]
    }

    /// Names of all keys, encrypting key first.
    pub fn names(&self) -> Vec<[u8; NAME_LEN]> {
        self.keys.iter().map(|k| k.name).collect()
    }

    /// How many keys decrypt (always at least one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key called `name`, if any. Names are public, so a plain
    /// comparison is fine; the set is tiny, so a linear scan is too.
    fn find(&self, name: &[u8]) -> Option<&TicketKey> {
        self.keys.iter().find(|k| k.name[..] == *name).map(|k| &**k)
    }
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
    }
}

/// rustls's `ProducesTickets`, lock-free: keys sit in an [`ArcSwap`];
/// encrypt/decrypt only `load()` it.
#[derive(Debug)]
pub struct Ticketer {
    keys: ArcSwap<TicketKeys>,
    lifetime_s: u32,
}

impl Ticketer {
    /// A ticketer over `keys` (first encrypts, all decrypt) advertising a
    /// ticket lifetime of `lifetime_s` seconds. Errors if `keys` is empty.
    pub fn new(keys: Vec<TicketKey>, lifetime_s: u32) -> Result<Self, TicketError> {
        Ok(Self {
            keys: ArcSwap::from_pointee(TicketKeys::new(keys)?),
            lifetime_s,
        })
    }

    /// Automatic rotation (no key files): `new` becomes the encryption key;
    /// the previous encryption key is kept for decryption for ONE more
    /// period; anything older is dropped. So after `rotate(k2)`, tickets from
    /// k1 still decrypt; after `rotate(k3)`, tickets from k1 no longer do (k2
    /// still does).
    pub fn rotate(&self, new: TicketKey) {
        let new = Arc::new(new);
        // rcu: a concurrent set_keys/rotate is never lost, readers never block.
        self.keys.rcu(|cur| TicketKeys {
            keys: vec![Arc::clone(&new), Arc::clone(&cur.keys[0])],
        });
    }

    /// Replace all keys (key files reloaded on SIGHUP): first encrypts, all
    /// decrypt. Errors (and keeps the current keys) if `keys` is empty.
    pub fn set_keys(&self, keys: Vec<TicketKey>) -> Result<(), TicketError> {
        self.keys.store(Arc::new(TicketKeys::new(keys)?));
        Ok(())
    }

    /// Names of the keys currently accepted, encrypting key first (for
    /// logs/tests; never key material).
    pub fn key_names(&self) -> Vec<[u8; NAME_LEN]> {
        self.keys.load().names()
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    /// ticket = name(16) || nonce(12, random) || AES-256-GCM(plain) with tag;
    /// AAD = name. None on failure.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().encrypting().seal(plain)
    }

    /// Look up the key by name; open; None if unknown name, too short, or
    /// auth fails. Never panics on any input.
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < MIN_TICKET_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        self.keys.load().find(name)?.open(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_or_error_text() {
        let bytes: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let key = TicketKey::from_file_bytes("k", &bytes).unwrap();
        let mut shown = format!("{key:?}");
        shown += &format!("{:?}", TicketKeys::new(vec![key]).unwrap());
        let secret_hex: String = bytes[16..].iter().map(|b| format!("{b:02x}")).collect();
        for window in secret_hex.as_bytes().chunks(8) {
            let w = std::str::from_utf8(window).unwrap();
            assert!(!shown.contains(w), "secret bytes {w} in {shown}");
        }
        // A bad file's error names the file and the length, not the bytes.
        let err = TicketKey::from_file_bytes("k", &bytes[..79])
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&secret_hex[..8]), "{err}");
    }
    use rustls::server::ProducesTickets;

    const LIFETIME: u32 = 6 * 3600;

    /// Tiny deterministic PRNG so the tests need no extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn file_bytes(seed: u64, len: usize) -> Vec<u8> {
        XorShift(seed).bytes(len)
    }

    fn key(seed: u64) -> TicketKey {
        TicketKey::from_file_bytes("test.key", &file_bytes(seed, 80)).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn ticketer(keys: Vec<TicketKey>) -> Ticketer {
        Ticketer::new(keys, LIFETIME).unwrap()
    }

    const PLAIN: &[u8] = b"serialized rustls session state, opaque to us";

    #[test]
    fn round_trip() {
        let t = ticketer(vec![TicketKey::random().unwrap()]);
        assert!(t.enabled());
        assert_eq!(t.lifetime(), LIFETIME);
        for plain in [&b""[..], b"x", PLAIN, &[0xa5; 5000][..]] {
            let ticket = t.encrypt(plain).unwrap();
            assert_eq!(ticket.len(), MIN_TICKET_LEN + plain.len());
            assert_eq!(t.decrypt(&ticket).as_deref(), Some(plain));
        }
    }

    #[test]
    fn ticket_layout_name_prefix() {
        let k = key(1);
        let name = k.name();
        assert_eq!(name[..], file_bytes(1, 80)[..16]);
        let t = ticketer(vec![k]);
        let ticket = t.encrypt(PLAIN).unwrap();
        assert_eq!(ticket[..NAME_LEN], name);
        // The plaintext does not appear in clear.
        assert!(!ticket.windows(PLAIN.len()).any(|w| w == PLAIN));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Pins the key derivation and ticket layout (fleet members running
    /// different ringterm versions must agree). Expected keys computed
    /// independently: HKDF-SHA256(salt = name, ikm = secret,
    /// info = "ringterm ticket key v1", L = 32), name = 00..0f,
    /// secret = 10..4f (80-byte file) or 10..2f (48-byte file).
    #[test]
    fn known_answer_key_derivation_and_layout() {
        let file: Vec<u8> = (0u8..80).collect();
        let cases = [
            (
                &file[..],
                "8cad69612a2aeeb323cd10ec7f51947d7077c1ff6cb4d231692e4f518c580662",
            ),
            (
                &file[..48],
                "eba26f2cbad775439f7f9fe2a67099e0b4120ca333868b1e746abb25e88fc6cc",
            ),
        ];
        for (bytes, expected_key) in cases {
            let t = ticketer(vec![TicketKey::from_file_bytes("kat", bytes).unwrap()]);
            let name: [u8; NAME_LEN] = bytes[..NAME_LEN].try_into().unwrap();
            let aead =
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &unhex(expected_key)).unwrap());

            // A ticket sealed by hand decrypts.
            let nonce = [0x42u8; NONCE_LEN];
            let mut body = PLAIN.to_vec();
            aead.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&name),
                &mut body,
            )
            .unwrap();
            let ticket = [&name[..], &nonce[..], &body[..]].concat();
            assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));

            // A ticket from the Ticketer opens by hand.
            let mut ticket = t.encrypt(PLAIN).unwrap();
            assert_eq!(ticket[..NAME_LEN], name);
            let nonce =
                Nonce::try_assume_unique_for_key(&ticket[NAME_LEN..NAME_LEN + NONCE_LEN]).unwrap();
            let opened = aead
                .open_in_place(nonce, Aad::from(&name), &mut ticket[NAME_LEN + NONCE_LEN..])
                .unwrap();
            assert_eq!(opened, PLAIN);
        }
    }

    #[test]
    fn tickets_differ_each_time() {
        let t = ticketer(vec![key(2)]);
        let a = t.encrypt(PLAIN).unwrap();
        let b = t.encrypt(PLAIN).unwrap();
        assert_ne!(a, b);
        assert_ne!(
            a[NAME_LEN..NAME_LEN + NONCE_LEN],
            b[NAME_LEN..NAME_LEN + NONCE_LEN]
        );
        assert_eq!(t.decrypt(&a).as_deref(), Some(PLAIN));
        assert_eq!(t.decrypt(&b).as_deref(), Some(PLAIN));
    }

    #[test]
    fn previous_key_survives_one_rotation_only() {
        let (k1, k2, k3) = (key(10), key(11), key(12));
        let (n1, n2, n3) = (k1.name(), k2.name(), k3.name());
        let t = ticketer(vec![k1]);
        let from_k1 = t.encrypt(PLAIN).unwrap();

        t.rotate(k2);
        assert_eq!(t.key_names(), vec![n2, n1]);
        assert_eq!(t.decrypt(&from_k1).as_deref(), Some(PLAIN));
        let from_k2 = t.encrypt(PLAIN).unwrap();
        assert_eq!(from_k2[..NAME_LEN], n2);

        t.rotate(k3);
        assert_eq!(t.key_names(), vec![n3, n2]);
        assert_eq!(t.decrypt(&from_k1), None);
        assert_eq!(t.decrypt(&from_k2).as_deref(), Some(PLAIN));
        assert_eq!(t.encrypt(PLAIN).unwrap()[..NAME_LEN], n3);
    }

    #[test]
    fn rotate_after_set_keys_keeps_only_the_encrypting_key() {
        let t = ticketer(vec![key(20)]);
        t.set_keys(vec![key(21), key(22), key(23)]).unwrap();
        t.rotate(key(24));
        assert_eq!(t.key_names(), vec![key(24).name(), key(21).name()]);
    }

    #[test]
    fn fleet_same_key_file_interoperates() {
        let bytes = file_bytes(30, 80);
        let a = ticketer(vec![
            TicketKey::from_file_bytes("a/ticket.key", &bytes).unwrap()
        ]);
        let b = ticketer(vec![
            TicketKey::from_file_bytes("b/ticket.key", &bytes).unwrap()
        ]);
        let ticket = a.encrypt(PLAIN).unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(PLAIN));
        let ticket = b.encrypt(PLAIN).unwrap();
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(PLAIN));

        // The 48-byte format interoperates the same way.
        let short = file_bytes(31, 48);
        let a = ticketer(vec![TicketKey::from_file_bytes("a", &short).unwrap()]);
        let b = ticketer(vec![TicketKey::from_file_bytes("b", &short).unwrap()]);
        assert_eq!(
            b.decrypt(&a.encrypt(PLAIN).unwrap()).as_deref(),
            Some(PLAIN)
        );
    }

    #[test]
    fn same_name_different_secret_does_not_decrypt() {
        let mut other = file_bytes(40, 80);
        let a = ticketer(vec![TicketKey::from_file_bytes("a", &other).unwrap()]);
        other[NAME_LEN + 63] ^= 1; // last secret byte: the whole secret counts
        let b = ticketer(vec![TicketKey::from_file_bytes("b", &other).unwrap()]);
        assert_eq!(a.key_names(), b.key_names());
        assert_eq!(b.decrypt(&a.encrypt(PLAIN).unwrap()), None);

        // A 48-byte file is not the 80-byte file's prefix in disguise.
        let long = file_bytes(41, 80);
        let a = ticketer(vec![TicketKey::from_file_bytes("a", &long).unwrap()]);
        let b = ticketer(vec![TicketKey::from_file_bytes("b", &long[..48]).unwrap()]);
        assert_eq!(b.decrypt(&a.encrypt(PLAIN).unwrap()), None);
    }

    #[test]
    fn set_keys_new_encrypts_old_still_decrypts() {
        let (k_old, k_new) = (key(50), key(51));
        let (n_old, n_new) = (k_old.name(), k_new.name());
        let t = ticketer(vec![k_old]);
        let old_ticket = t.encrypt(PLAIN).unwrap();

        // As after a SIGHUP reload: same old file re-read, new file first.
        t.set_keys(vec![
            key(51),
            TicketKey::from_file_bytes("old.key", &file_bytes(50, 80)).unwrap(),
        ])
        .unwrap();
        assert_eq!(t.key_names(), vec![n_new, n_old]);
        assert_eq!(t.decrypt(&old_ticket).as_deref(), Some(PLAIN));
        let new_ticket = t.encrypt(PLAIN).unwrap();
        assert_eq!(new_ticket[..NAME_LEN], n_new);
        assert_eq!(t.decrypt(&new_ticket).as_deref(), Some(PLAIN));
        drop(k_new);

        // Dropping the old key from the set stops its tickets.
        t.set_keys(vec![key(51)]).unwrap();
        assert_eq!(t.decrypt(&old_ticket), None);
        assert_eq!(t.decrypt(&new_ticket).as_deref(), Some(PLAIN));
    }

    #[test]
    fn empty_key_sets_are_rejected() {
        let no_keys = TicketError::NoKeys {
            file: NO_KEYS_SOURCE.to_owned(),
        };
        assert_eq!(Ticketer::new(Vec::new(), LIFETIME).unwrap_err(), no_keys);
        assert_eq!(TicketKeys::new(Vec::new()).unwrap_err(), no_keys);
        let t = ticketer(vec![key(60)]);
        assert_eq!(t.set_keys(Vec::new()), Err(no_keys));
        assert_eq!(t.key_names(), vec![key(60).name()], "keys kept on error");
    }

    #[test]
    fn wrong_length_key_files_name_the_file() {
        for len in [0, 1, 16, 32, 47, 49, 64, 79, 81, 96, 160] {
            let err =
                TicketKey::from_file_bytes("/etc/ringterm/ticket.key", &vec![7; len]).unwrap_err();
            assert_eq!(
                err,
                TicketError::BadLength {
                    file: "/etc/ringterm/ticket.key".to_owned(),
                    len,
                }
            );
            let msg = err.to_string();
            assert!(msg.starts_with("/etc/ringterm/ticket.key: "), "{msg}");
            assert!(msg.contains(&format!("got {len}")), "{msg}");
            assert!(msg.contains("head -c 80 /dev/urandom"), "{msg}");
        }
        assert!(TicketKey::from_file_bytes("f", &[0; 48]).is_ok());
        assert!(TicketKey::from_file_bytes("f", &[0; 80]).is_ok());
    }

    #[test]
    fn decrypt_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let k = key(70);
        let name = k.name();
        let t = ticketer(vec![k, key(71)]);
        let ticket = t.encrypt(PLAIN).unwrap();

        // Empty and every proper prefix (including name-only, name+nonce,
        // and one byte short of the tag).
        assert_eq!(t.decrypt(&[]), None);
        for n in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..n]), None, "prefix {n}");
        }
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));

        // A single bit flip anywhere: name, nonce, body or tag.
        for i in 0..ticket.len() {
            for bit in 0..8 {
                let mut bad = ticket.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(t.decrypt(&bad), None, "byte {i} bit {bit}");
            }
        }

        // Trailing garbage after a valid ticket.
        let mut long = ticket.clone();
        long.push(0);
        assert_eq!(t.decrypt(&long), None);

        // Random garbage, with and without a known name in front.
        for _ in 0..2000 {
            let len = (rng.next() % 200) as usize;
            let mut junk = rng.bytes(len);
            assert_eq!(t.decrypt(&junk), None);
            if junk.len() >= NAME_LEN {
                junk[..NAME_LEN].copy_from_slice(&name);
                assert_eq!(t.decrypt(&junk), None);
            }
        }
        // Exactly the minimum length under a known name: an all-zero tag.
        let mut min = vec![0u8; MIN_TICKET_LEN];
        min[..NAME_LEN].copy_from_slice(&name);
        assert_eq!(t.decrypt(&min), None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let bytes = file_bytes(80, 80);
        let (name, secret) = bytes.split_at(NAME_LEN);
        let k = TicketKey::from_file_bytes("k", &bytes).unwrap();
        let key_dbg = format!("{k:?}");
        let key_alt = format!("{k:#?}");
        let t = ticketer(vec![k]);
        let t_dbg = format!("{t:?}");
        let t_alt = format!("{t:#?}");
        let secret_hex = hex(secret);
        for out in [&key_dbg, &key_alt, &t_dbg, &t_alt] {
            assert!(out.contains(&hex(name)), "{out}");
            // No 4-byte window of the secret shows up in hex.
            for w in secret_hex.as_bytes().chunks(8) {
                assert!(!out.contains(std::str::from_utf8(w).unwrap()), "{out}");
            }
        }
        assert!(t_dbg.contains(&LIFETIME.to_string()), "{t_dbg}");
    }

    /// Drives one in-memory handshake (plus post-handshake tickets) and
    /// says how it went.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> rustls::HandshakeKind {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
        for _ in 0..20 {
            let mut moved = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets().unwrap();
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            if !moved && !c.is_handshaking() && !s.is_handshaking() {
                assert_eq!(c.handshake_kind(), s.handshake_kind());
                return s.handshake_kind().unwrap();
            }
        }
        panic!("handshake did not finish");
    }

    /// The real thing: rustls resumes on a second fleet member that loaded
    /// the same key file, and falls back to a full handshake elsewhere.
    #[test]
    fn rustls_resumes_across_fleet_members() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use rustls::HandshakeKind::{Full, Resumed};

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = |key_file: &[u8]| {
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.ticketer = Arc::new(ticketer(vec![TicketKey::from_file_bytes(
                "fleet.key",
                key_file,
            )
            .unwrap()]));
            Arc::new(config)
        };
        let fleet_key = file_bytes(100, 80);
        let (a, b, other) = (
            server(&fleet_key),
            server(&fleet_key),
            server(&file_bytes(101, 80)),
        );
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            let client = Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            );
            assert_eq!(handshake(&client, &a), Full, "{version:?}");
            assert_eq!(handshake(&client, &b), Resumed, "{version:?}");
            assert_eq!(handshake(&client, &other), Full, "{version:?}");
            assert_eq!(handshake(&client, &other), Resumed, "{version:?}");
        }
    }

    #[test]
    fn rotation_races_with_handshakes() {
        let t = ticketer(vec![key(90)]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let ticket = t.encrypt(PLAIN).unwrap();
                        // Two or more rotations may land in between, so this
                        // may fail; it must not panic or block.
                        let _ = t.decrypt(&ticket);
                    }
                });
            }
            s.spawn(|| {
                for seed in 0..200 {
                    t.rotate(key(1000 + seed));
                }
            });
        });
        assert_eq!(t.key_names().len(), 2);
        let ticket = t.encrypt(PLAIN).unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));
    }
}
