//! Record keys over aws-lc-rs: one sealing and one opening key per
//! direction and epoch. No cipher is implemented here: AES-GCM goes through
//! aws-lc-rs's TLS record keys (`TlsRecordSealingKey`/`TlsRecordOpeningKey`,
//! which check the nonce sequence), ChaCha20-Poly1305 through its generic
//! AEAD. This file only builds nonces from sequence numbers.
//!
//! An aws-lc AEAD context is about 600 bytes of C heap (`EVP_AEAD_CTX`:
//! the expanded key and the GHASH table), more than the rest of an idle
//! connection's record layer. [`Sealer::hibernate`] and
//! [`Opener::hibernate`] drop it and keep the raw key (wiped on drop); the
//! next seal or open builds it again.

use aws_lc_rs::aead::{
    self, Aad, LessSafeKey, Nonce, Tag, TlsProtocolId, TlsRecordOpeningKey, TlsRecordSealingKey,
    UnboundKey, NONCE_LEN,
};
use rustls::ConnectionTrafficSecrets;

use super::{RecordError, Version};

/// The AEAD tag length of every suite ringterm offers.
pub const TAG_LEN: usize = 16;

/// TLS 1.2 AES-GCM's explicit nonce (RFC 5288 §3).
pub const EXPLICIT_NONCE_LEN: usize = 8;

/// Raw key bytes, wiped on drop, kept to build the key again (after a
/// hibernation, or a GCM sealing key's nonce run).
pub struct RawKey {
    bytes: [u8; 32],
    len: u8,
}

impl RawKey {
    fn new(key: &[u8]) -> Self {
        let mut bytes = [0; 32];
        let len = key.len().min(32);
        bytes[..len].copy_from_slice(&key[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for RawKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

/// `iv XOR seq`, the per-record nonce of TLS 1.3 (RFC 8446 §5.3), of
/// ChaCha20-Poly1305 in TLS 1.2 (RFC 7905 §2) and the AES-GCM construction
/// rustls uses for TLS 1.2 too.
pub fn xor_nonce(iv: &[u8; NONCE_LEN], seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// The algorithm, key bytes and IV of traffic secrets from rustls.
fn parts(
    secrets: &ConnectionTrafficSecrets,
) -> Result<(Aead, &[u8], [u8; NONCE_LEN]), RecordError> {
    let (aead, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Aead::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Aead::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Aead::Chacha20Poly1305, key, iv),
        _ => return Err(RecordError::UnsupportedSuite),
    };
    let iv: [u8; NONCE_LEN] = iv
        .as_ref()
        .try_into()
        .map_err(|_| RecordError::UnsupportedSuite)?;
    Ok((aead, key.as_ref(), iv))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &aead::AES_128_GCM,
            Aead::Aes256Gcm => &aead::AES_256_GCM,
            Aead::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// The sealing half of one epoch.
pub enum Sealer {
    /// AES-GCM, both versions: aws-lc-rs's TLS record key and the nonce
    /// `iv XOR seq`, exactly rustls's construction (for TLS 1.2 rustls also
    /// uses this, with the key's TLS 1.3 mode, and sends `nonce[4..]` as the
    /// explicit nonce: the sequence continues where rustls's left off, so
    /// no nonce of the epoch can repeat).
    ///
    /// aws-lc-rs's key learns its nonce mask from the first nonce it sees,
    /// assuming sequence number 0, and then refuses any nonce whose
    /// `nonce XOR mask` does not increase. We take over from rustls at a
    /// sequence number above 0 (the session tickets or the TLS 1.2
    /// Finished went first), so the key is built at `from` and rebuilt from
    /// `raw` whenever `seq XOR from` would stop increasing: at
    /// `from + 2^trailing_zeros(from)`. That is O(log n) rebuilds over n
    /// records, and the check stays on for every record between them.
    Gcm {
        /// `None` while hibernating.
        key: Option<TlsRecordSealingKey>,
        raw: RawKey,
        aead: Aead,
        iv: [u8; NONCE_LEN],
        /// The key accepts sequence numbers below this.
        until: u64,
        /// TLS 1.2: the explicit nonce goes on the wire (RFC 5288 §3).
        explicit: bool,
    },
    /// ChaCha20-Poly1305, both versions: nonce `iv XOR seq`.
    Chacha {
        /// `None` while hibernating.
        key: Option<LessSafeKey>,
        raw: RawKey,
        iv: [u8; NONCE_LEN],
    },
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sealer::Gcm { .. } => "Sealer::Gcm",
            Sealer::Chacha { .. } => "Sealer::Chacha",
        })
    }
}

/// Where a GCM key whose first nonce is for `seq` stops accepting
/// increasing nonces (see [`Sealer::Gcm`]).
fn gcm_until(seq: u64) -> u64 {
    if seq == 0 {
        return u64::MAX;
    }
    seq.saturating_add(1u64 << seq.trailing_zeros())
}

fn gcm_sealing_key(aead: Aead, key: &[u8]) -> Result<TlsRecordSealingKey, RecordError> {
    TlsRecordSealingKey::new(aead.algorithm(), TlsProtocolId::TLS13, key)
        .map_err(|_| RecordError::Key)
}

fn gcm_opening_key(
    aead: Aead,
    protocol: TlsProtocolId,
    key: &[u8],
) -> Result<TlsRecordOpeningKey, RecordError> {
    TlsRecordOpeningKey::new(aead.algorithm(), protocol, key).map_err(|_| RecordError::Key)
}

fn chacha_key(key: &[u8]) -> Result<LessSafeKey, RecordError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&aead::CHACHA20_POLY1305, key).map_err(|_| RecordError::Key)?,
    ))
}

/// The key in `slot`, built with `build` when the slot is empty.
fn built<K>(
    slot: &mut Option<K>,
    build: impl FnOnce() -> Result<K, RecordError>,
) -> Result<&mut K, RecordError> {
    if slot.is_none() {
        *slot = Some(build()?);
    }
    slot.as_mut().ok_or(RecordError::Key)
}

impl Sealer {
    /// A sealer for `secrets` whose first record has sequence number
    /// `seq`.
    pub fn new(
        version: Version,
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<Self, RecordError> {
        let (aead, key, iv) = parts(secrets)?;
        Ok(match aead {
            Aead::Chacha20Poly1305 => Sealer::Chacha {
                key: Some(chacha_key(key)?),
                raw: RawKey::new(key),
                iv,
            },
            _ => Sealer::Gcm {
                key: Some(gcm_sealing_key(aead, key)?),
                raw: RawKey::new(key),
                aead,
                iv,
                until: gcm_until(seq),
                explicit: version == Version::Tls12,
            },
        })
    }

    /// Bytes between the record header and the payload.
    pub fn explicit_len(&self) -> usize {
        match self {
            Sealer::Gcm { explicit: true, .. } => EXPLICIT_NONCE_LEN,
            _ => 0,
        }
    }

    /// The explicit nonce of the record with sequence number `seq` (TLS 1.2
    /// AES-GCM only): the nonce's last 8 bytes.
    pub fn explicit_nonce(&self, seq: u64) -> [u8; EXPLICIT_NONCE_LEN] {
        let iv = match self {
            Sealer::Gcm { iv, .. } | Sealer::Chacha { iv, .. } => iv,
        };
        let nonce = xor_nonce(iv, seq);
        let mut out = [0; EXPLICIT_NONCE_LEN];
        out.copy_from_slice(&nonce[NONCE_LEN - EXPLICIT_NONCE_LEN..]);
        out
    }

    /// Seals `in_out` in place for sequence number `seq`; returns the tag.
    pub fn seal(&mut self, seq: u64, aad: &[u8], in_out: &mut [u8]) -> Result<Tag, RecordError> {
        match self {
            Sealer::Gcm {
                key,
                raw,
                aead,
                iv,
                until,
                ..
            } => {
                if seq >= *until || key.is_none() {
                    // A fresh key learns its nonce mask from this record's
                    // nonce (see above).
                    *key = Some(gcm_sealing_key(*aead, raw.get())?);
                    *until = gcm_until(seq);
                }
                key.as_mut()
                    .ok_or(RecordError::Key)?
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(xor_nonce(iv, seq)),
                        Aad::from(aad),
                        in_out,
                    )
                    .map_err(|_| RecordError::Key)
            }
            Sealer::Chacha { key, raw, iv } => built(key, || chacha_key(raw.get()))?
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(xor_nonce(iv, seq)),
                    Aad::from(aad),
                    in_out,
                )
                .map_err(|_| RecordError::Key),
        }
    }

    /// Drops the AEAD context (the next seal builds it again).
    pub fn hibernate(&mut self) {
        match self {
            Sealer::Gcm { key, .. } => *key = None,
            Sealer::Chacha { key, .. } => *key = None,
        }
    }

    /// Whether the AEAD context is built.
    pub fn is_awake(&self) -> bool {
        match self {
            Sealer::Gcm { key, .. } => key.is_some(),
            Sealer::Chacha { key, .. } => key.is_some(),
        }
    }
}

/// The opening half of one epoch.
pub enum Opener {
    /// TLS 1.2 AES-GCM: the nonce is the salt and the record's explicit
    /// nonce (any value: the peer chooses it). aws-lc-rs's opening keys keep
    /// no nonce state.
    Gcm12 {
        /// `None` while hibernating.
        key: Option<TlsRecordOpeningKey>,
        raw: RawKey,
        aead: Aead,
        salt: [u8; 4],
    },
    /// TLS 1.3 AES-GCM: nonce `iv XOR seq`.
    Gcm13 {
        /// `None` while hibernating.
        key: Option<TlsRecordOpeningKey>,
        raw: RawKey,
        aead: Aead,
        iv: [u8; NONCE_LEN],
    },
    /// ChaCha20-Poly1305, both versions: nonce `iv XOR seq`.
    Chacha {
        /// `None` while hibernating.
        key: Option<LessSafeKey>,
        raw: RawKey,
        iv: [u8; NONCE_LEN],
    },
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Opener::Gcm12 { .. } => "Opener::Gcm12",
            Opener::Gcm13 { .. } => "Opener::Gcm13",
            Opener::Chacha { .. } => "Opener::Chacha",
        })
    }
}

impl Opener {
    /// An opener for `secrets`.
    pub fn new(version: Version, secrets: &ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (aead, key, iv) = parts(secrets)?;
        Ok(match (aead, version) {
            (Aead::Chacha20Poly1305, _) => Opener::Chacha {
                key: Some(chacha_key(key)?),
                raw: RawKey::new(key),
                iv,
            },
            (_, Version::Tls12) => Opener::Gcm12 {
                key: Some(gcm_opening_key(aead, TlsProtocolId::TLS12, key)?),
                raw: RawKey::new(key),
                aead,
                salt: [iv[0], iv[1], iv[2], iv[3]],
            },
            (_, Version::Tls13) => Opener::Gcm13 {
                key: Some(gcm_opening_key(aead, TlsProtocolId::TLS13, key)?),
                raw: RawKey::new(key),
                aead,
                iv,
            },
        })
    }

    /// Bytes between the record header and the ciphertext.
    pub fn explicit_len(&self) -> usize {
        match self {
            Opener::Gcm12 { .. } => EXPLICIT_NONCE_LEN,
            _ => 0,
        }
    }

    /// Opens `payload` (explicit nonce, ciphertext and tag) in place for
    /// sequence number `seq`; returns the plaintext's length, which starts
    /// at [`Opener::explicit_len`].
    pub fn open(&mut self, seq: u64, aad: &[u8], payload: &mut [u8]) -> Result<usize, RecordError> {
        let explicit = self.explicit_len();
        if payload.len() < explicit + TAG_LEN {
            return Err(RecordError::BadRecordMac);
        }
        let opened = match self {
            Opener::Gcm12 {
                key,
                raw,
                aead,
                salt,
            } => {
                let mut nonce = [0; NONCE_LEN];
                nonce[..4].copy_from_slice(salt);
                nonce[4..].copy_from_slice(&payload[..EXPLICIT_NONCE_LEN]);
                built(key, || {
                    gcm_opening_key(*aead, TlsProtocolId::TLS12, raw.get())
                })?
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut payload[EXPLICIT_NONCE_LEN..],
                )
            }
            Opener::Gcm13 { key, raw, aead, iv } => built(key, || {
                gcm_opening_key(*aead, TlsProtocolId::TLS13, raw.get())
            })?
            .open_in_place(
                Nonce::assume_unique_for_key(xor_nonce(iv, seq)),
                Aad::from(aad),
                payload,
            ),
            Opener::Chacha { key, raw, iv } => built(key, || chacha_key(raw.get()))?.open_in_place(
                Nonce::assume_unique_for_key(xor_nonce(iv, seq)),
                Aad::from(aad),
                payload,
            ),
        };
        opened
            .map(|p| p.len())
            .map_err(|_| RecordError::BadRecordMac)
    }

    /// Drops the AEAD context (the next open builds it again).
    pub fn hibernate(&mut self) {
        match self {
            Opener::Gcm12 { key, .. } | Opener::Gcm13 { key, .. } => *key = None,
            Opener::Chacha { key, .. } => *key = None,
        }
    }

    /// Whether the AEAD context is built.
    pub fn is_awake(&self) -> bool {
        match self {
            Opener::Gcm12 { key, .. } | Opener::Gcm13 { key, .. } => key.is_some(),
            Opener::Chacha { key, .. } => key.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm13_rebuild_points_keep_nonces_increasing() {
        // From every start, the key accepts `seq XOR start` increasing up
        // to `until`, then a rebuild starts a new run.
        for start in 0..300u64 {
            let mut from = start;
            let mut until = gcm_until(from);
            let mut last = None;
            for seq in start..start + 600 {
                if seq >= until {
                    from = seq;
                    until = gcm_until(seq);
                    last = None;
                }
                let given = seq ^ from;
                assert!(last.is_none_or(|l| given > l), "start {start} seq {seq}");
                last = Some(given);
            }
        }
        assert_eq!(gcm_until(0), u64::MAX);
        assert_eq!(gcm_until(1 << 63), u64::MAX);
        assert_eq!(gcm_until(4), 8);
        assert_eq!(gcm_until(6), 8);
    }

    #[test]
    fn xor_nonce_touches_the_low_eight_bytes() {
        let iv = [1; NONCE_LEN];
        let n = xor_nonce(&iv, 0x0102);
        assert_eq!(n[..4], [1; 4]);
        assert_eq!(n[10..], [1 ^ 1, 1 ^ 2]);
    }

    /// Hibernating drops the AEAD contexts; sealing and opening go on with
    /// the same nonces, for every AEAD and version.
    #[test]
    fn hibernated_keys_wake_on_use() {
        use rustls::crypto::cipher::{AeadKey, Iv};
        for (version, chacha) in [
            (Version::Tls13, false),
            (Version::Tls12, false),
            (Version::Tls13, true),
            (Version::Tls12, true),
        ] {
            let secrets = || match chacha {
                false => ConnectionTrafficSecrets::Aes256Gcm {
                    key: AeadKey::from([7u8; 32]),
                    iv: Iv::new([9; 12]),
                },
                true => ConnectionTrafficSecrets::Chacha20Poly1305 {
                    key: AeadKey::from([7u8; 32]),
                    iv: Iv::new([9; 12]),
                },
            };
            let mut sealer = Sealer::new(version, &secrets(), 3).unwrap();
            let mut opener = Opener::new(version, &secrets()).unwrap();
            for seq in 3..40u64 {
                if seq % 3 == 0 {
                    sealer.hibernate();
                    assert!(!sealer.is_awake());
                }
                if seq % 4 == 0 {
                    opener.hibernate();
                    assert!(!opener.is_awake());
                }
                let mut data = sealer.explicit_nonce(seq)[..sealer.explicit_len()].to_vec();
                let explicit = data.len();
                data.extend_from_slice(&seq.to_be_bytes());
                let tag = sealer.seal(seq, b"aad", &mut data[explicit..]).unwrap();
                data.extend_from_slice(tag.as_ref());
                let n = opener.open(seq, b"aad", &mut data).unwrap();
                assert!(sealer.is_awake() && opener.is_awake());
                let start = opener.explicit_len();
                assert_eq!(
                    data[start..start + n],
                    seq.to_be_bytes(),
                    "{version:?} {seq}"
                );
            }
        }
    }

    /// A TLS 1.3 GCM sealer taken over at sequence 2 keeps sealing (the
    /// key rebuilds) and its records open with the same nonces.
    #[test]
    fn gcm13_sealer_from_a_nonzero_sequence() {
        use rustls::crypto::cipher::{AeadKey, Iv};
        let secrets = || ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new([9; 12]),
        };
        let mut sealer = Sealer::new(Version::Tls13, &secrets(), 2).unwrap();
        let mut opener = Opener::new(Version::Tls13, &secrets()).unwrap();
        for seq in 2..200u64 {
            let mut data = seq.to_be_bytes().to_vec();
            let tag = sealer.seal(seq, b"aad", &mut data).unwrap();
            data.extend_from_slice(tag.as_ref());
            let n = opener.open(seq, b"aad", &mut data).unwrap();
            assert_eq!(data[..n], seq.to_be_bytes());
        }
    }
}
