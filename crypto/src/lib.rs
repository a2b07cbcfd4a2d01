//! The few cryptographic pieces every part of silo shares, in one place so there is one way
//! to do each:
//!
//! - [`MasterKey`] and [`Keyring`]: the operator's 256-bit master key(s). The newest one
//!   seals; every configured one opens, found by its [`KeyId`], so the master key can rotate.
//! - Envelopes ([`Keyring::seal`] / [`Keyring::open`]): AES-256-GCM under a key derived with
//!   HKDF-SHA256 from the master key *per tenant and purpose*, with associated data that binds
//!   the ciphertext to its tenant and to the object it protects (e.g. the database id). An
//!   envelope copied to another tenant's row does not open.
//! - [`DbToken`]: the raw 256-bit SQLCipher key of a local tenant database.
//! - Opaque tokens ([`random_token`], [`hash_token`], [`constant_time_eq`]) for refresh tokens,
//!   API keys and admin tokens: generated here, stored only as SHA-256 hashes.
//!
//! Every secret is held in a `secrecy` type, zeroised on drop, and has a `Debug` that prints
//! nothing of it.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};

/// Length of every symmetric key silo handles (AES-256, SQLCipher raw key, HMAC keys).
pub const KEY_LEN: usize = 32;

/// Version byte at the start of every envelope, so the format can change without guessing.
const ENVELOPE_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// HKDF salt: a fixed, public domain separator (RFC 5869 §3.1 allows a non-secret salt).
const HKDF_SALT: &[u8] = b"silo/v1/hkdf-salt";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Configuration problems. The message never contains the key material.
    #[error("master key is not valid base64 (expected 32 random bytes, base64-encoded)")]
    MasterKeyNotBase64,
    #[error("master key must decode to exactly 32 bytes, got {0}")]
    MasterKeyWrongLength(usize),
    #[error("envelope is malformed (too short or unknown version)")]
    MalformedEnvelope,
    #[error("envelope was sealed with master key {0}, which is not configured")]
    UnknownKeyId(KeyId),
    /// Wrong key, wrong tenant/purpose/binding, or tampered bytes: AES-GCM cannot tell which,
    /// and neither do we.
    #[error("envelope does not open: it belongs to another tenant or object, or it was altered")]
    EnvelopeRejected,
    #[error("the operating system's random number generator failed")]
    Rng,
}

pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// Fills `buf` from the OS CSPRNG.
///
/// # Panics
/// If the OS has no working random source: nothing secure can continue then.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random number generator must work for silo to run");
}

/// `N` random bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// Identifies a master key without revealing it: the first 4 bytes of
/// SHA-256("silo/v1/key-id" ‖ key). Stored in every envelope so the keyring can pick the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"silo/v1/key-id")
            .chain_update(key)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The operator's root secret. Everything else silo encrypts or signs derives from it.
pub struct MasterKey {
    id: KeyId,
    key: SecretBox<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// A new random master key (what `silo serve` writes to `<data-dir>/master.key` when
    /// none is configured).
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let id = KeyId::of(&bytes);
        MasterKey {
            id,
            key: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Parses the configured form: base64 (standard alphabet, padding optional) of 32 bytes,
    /// surrounding whitespace ignored. Errors never echo the input.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut decoded = STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| CryptoError::MasterKeyNotBase64)?;
        let result = <[u8; KEY_LEN]>::try_from(decoded.as_slice())
            .map(Self::from_bytes)
            .map_err(|_| CryptoError::MasterKeyWrongLength(decoded.len()));
        zeroize::Zeroize::zeroize(&mut decoded);
        result
    }

    /// The base64 text form, for writing a generated key to its file. The caller owns the
    /// returned secret; it must go nowhere but that file.
    pub fn to_base64(&self) -> secrecy::SecretString {
        STANDARD.encode(self.key.expose_secret()).into()
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// HKDF-SHA256(master, salt, info) → 32 bytes.
    fn derive(&self, info: &[&[u8]]) -> SecretBox<[u8; KEY_LEN]> {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), self.key.expose_secret());
        let mut out = Box::new([0u8; KEY_LEN]);
        // Each component is length-prefixed so ("ab","c") and ("a","bc") never collide.
        let mut info_bytes = Vec::new();
        for part in info {
            info_bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            info_bytes.extend_from_slice(part);
        }
        hk.expand(&info_bytes, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SecretBox::new(out)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What an envelope protects, and what it is bound to. All three go into the key derivation
/// or the associated data, so an envelope opens only with the same three values.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeContext<'a> {
    /// The tenant that owns the secret (the per-tenant key is derived from it).
    pub tenant: &'a str,
    /// What kind of secret this is, e.g. `"db-token"` or `"totp-secret"`.
    pub purpose: &'a str,
    /// The object the secret belongs to, e.g. the database id. Goes into the associated data.
    pub binding: &'a str,
}

/// The master keys silo knows. The primary seals; all open. Cheap to share behind an `Arc`.
pub struct Keyring {
    /// `keys[0]` is the primary (newest). Later entries are previous keys kept so old
    /// envelopes and tokens still open until they are re-sealed.
    keys: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(primary: MasterKey, previous: Vec<MasterKey>) -> Self {
        let mut keys = vec![primary];
        for key in previous {
            if keys.iter().all(|k| k.id != key.id) {
                keys.push(key);
            }
        }
        Keyring { keys }
    }

    pub fn primary_id(&self) -> KeyId {
        self.keys[0].id
    }

    fn key(&self, id: KeyId) -> Result<&MasterKey> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(CryptoError::UnknownKeyId(id))
    }

    /// Every key id, primary first (e.g. JWT verification tries the `kid` among these).
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// A 256-bit key for `label` (e.g. `"jwt-signing"`) derived from master key `id`.
    /// Used for HMAC keys: JWT signing, baton MACs, audit chain signatures.
    pub fn derive_key(&self, id: KeyId, label: &str) -> Result<SecretBox<[u8; KEY_LEN]>> {
        Ok(self
            .key(id)?
            .derive(&[b"silo/v1/derived", label.as_bytes()]))
    }

    /// Encrypts `plaintext` for `ctx` under the primary master key.
    ///
    /// Layout: `version (1) ‖ key id (4) ‖ nonce (12) ‖ ciphertext+tag`. The nonce is random;
    /// with a fresh derived key per tenant and purpose, the number of messages per key stays
    /// far below the 2^32 random-nonce bound.
    pub fn seal(&self, ctx: EnvelopeContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        let master = &self.keys[0];
        let cipher = Self::cipher(master, ctx);
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let nonce = Nonce::from(nonce_bytes);
        let aad = Self::aad(master.id, ctx);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&master.id.0);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts an envelope made by [`Keyring::seal`] with the same `ctx`.
    pub fn open(&self, ctx: EnvelopeContext<'_>, envelope: &[u8]) -> Result<SecretBox<Vec<u8>>> {
        if envelope.len() < HEADER_LEN + 16 || envelope[0] != ENVELOPE_VERSION {
            return Err(CryptoError::MalformedEnvelope);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&envelope[1..1 + KEY_ID_LEN]);
        let master = self.key(KeyId(id))?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(&envelope[1 + KEY_ID_LEN..HEADER_LEN]);
        let cipher = Self::cipher(master, ctx);
        let aad = Self::aad(master.id, ctx);
        let plaintext = cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: &envelope[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::EnvelopeRejected)?;
        Ok(SecretBox::new(Box::new(plaintext)))
    }

    /// The key id an envelope was sealed under (to find envelopes that need re-sealing after
    /// a master key rotation).
    pub fn envelope_key_id(envelope: &[u8]) -> Result<KeyId> {
        if envelope.len() < HEADER_LEN || envelope[0] != ENVELOPE_VERSION {
            return Err(CryptoError::MalformedEnvelope);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&envelope[1..1 + KEY_ID_LEN]);
        Ok(KeyId(id))
    }

    fn cipher(master: &MasterKey, ctx: EnvelopeContext<'_>) -> Aes256Gcm {
        let key = master.derive(&[
            b"silo/v1/tenant-key",
            ctx.tenant.as_bytes(),
            ctx.purpose.as_bytes(),
        ]);
        Aes256Gcm::new_from_slice(key.expose_secret()).expect("derived key is 32 bytes")
    }

    fn aad(id: KeyId, ctx: EnvelopeContext<'_>) -> Vec<u8> {
        let mut aad = b"silo/v1/envelope".to_vec();
        for part in [
            ctx.tenant.as_bytes(),
            ctx.purpose.as_bytes(),
            ctx.binding.as_bytes(),
            &id.0,
        ] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

/// The credential that opens one local tenant database: a random 256-bit SQLCipher raw key.
/// It exists in clear only in memory, between decrypting its envelope and keying the
/// connection.
pub struct DbToken(SecretBox<[u8; KEY_LEN]>);

impl DbToken {
    pub fn generate() -> Self {
        DbToken(SecretBox::new(Box::new(random_bytes())))
    }

    /// Rebuilds a token from an opened envelope.
    pub fn from_secret_bytes(bytes: &SecretBox<Vec<u8>>) -> Result<Self> {
        let raw: [u8; KEY_LEN] = bytes
            .expose_secret()
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::MalformedEnvelope)?;
        Ok(DbToken(SecretBox::new(Box::new(raw))))
    }

    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    /// The SQLCipher statement that keys a connection with this raw key (no PBKDF2).
    /// The returned string is itself secret: run it, drop it, never log it.
    pub fn sqlcipher_key_pragma(&self) -> secrecy::SecretString {
        format!(
            "PRAGMA key = \"x'{}'\";",
            hex::encode(self.0.expose_secret())
        )
        .into()
    }
}

impl Clone for DbToken {
    /// A second copy in memory, for a handle that opens more connections to the same file
    /// later (lazily opened readers). Still a `SecretBox`: zeroed on drop, never printed.
    fn clone(&self) -> Self {
        DbToken(SecretBox::new(Box::new(*self.expose_bytes())))
    }
}

impl fmt::Debug for DbToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbToken(..)")
    }
}

/// A new opaque bearer token: `prefix` followed by 256 random bits, base64url.
/// The caller shows it once and stores only [`hash_token`] of it.
pub fn random_token(prefix: &str) -> secrecy::SecretString {
    let bytes: [u8; 32] = random_bytes();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)).into()
}

/// SHA-256 of a high-entropy token. Enough for tokens of 256 random bits (no dictionary to
/// attack); passwords use argon2id instead.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn ctx<'a>(tenant: &'a str, binding: &'a str) -> EnvelopeContext<'a> {
        EnvelopeContext {
            tenant,
            purpose: "db-token",
            binding,
        }
    }

    #[test]
    fn envelope_round_trips() {
        let ring = Keyring::new(MasterKey::generate(), vec![]);
        let sealed = ring.seal(ctx("t1", "db1"), b"secret");
        assert_eq!(
            ring.open(ctx("t1", "db1"), &sealed)
                .unwrap()
                .expose_secret()
                .as_slice(),
            b"secret"
        );
    }

    #[test]
    fn envelope_of_one_tenant_does_not_open_for_another() {
        let ring = Keyring::new(MasterKey::generate(), vec![]);
        let sealed = ring.seal(ctx("tenant-a", "db"), b"secret");
        assert!(matches!(
            ring.open(ctx("tenant-b", "db"), &sealed),
            Err(CryptoError::EnvelopeRejected)
        ));
    }

    #[test]
    fn envelope_is_bound_to_purpose_and_binding() {
        let ring = Keyring::new(MasterKey::generate(), vec![]);
        let sealed = ring.seal(ctx("t", "db1"), b"secret");
        assert!(ring.open(ctx("t", "db2"), &sealed).is_err());
        let other_purpose = EnvelopeContext {
            tenant: "t",
            purpose: "totp-secret",
            binding: "db1",
        };
        assert!(ring.open(other_purpose, &sealed).is_err());
    }

    #[test]
    fn envelope_from_another_master_key_is_rejected_with_its_key_id() {
        let a = Keyring::new(MasterKey::generate(), vec![]);
        let b = Keyring::new(MasterKey::generate(), vec![]);
        let sealed = a.seal(ctx("t", "d"), b"x");
        assert!(matches!(
            b.open(ctx("t", "d"), &sealed),
            Err(CryptoError::UnknownKeyId(_))
        ));
    }

    #[test]
    fn rotated_keyring_opens_old_envelopes_and_seals_with_the_new_key() {
        let old_bytes = random_bytes();
        let old = Keyring::new(MasterKey::from_bytes(old_bytes), vec![]);
        let sealed_old = old.seal(ctx("t", "d"), b"x");
        let rotated = Keyring::new(
            MasterKey::generate(),
            vec![MasterKey::from_bytes(old_bytes)],
        );
        assert!(rotated.open(ctx("t", "d"), &sealed_old).is_ok());
        let sealed_new = rotated.seal(ctx("t", "d"), b"x");
        assert_eq!(
            Keyring::envelope_key_id(&sealed_new).unwrap(),
            rotated.primary_id()
        );
        assert_ne!(rotated.primary_id(), old.primary_id());
    }

    #[test]
    fn master_key_parsing_fails_closed_without_echoing_the_input() {
        let err = MasterKey::from_base64("not base64 at all!!").unwrap_err();
        assert!(!err.to_string().contains("not base64 at all"));
        let short = STANDARD.encode([7u8; 16]);
        assert!(matches!(
            MasterKey::from_base64(&short),
            Err(CryptoError::MasterKeyWrongLength(16))
        ));
        let good = STANDARD.encode([7u8; 32]);
        assert!(MasterKey::from_base64(&format!(" {good}\n")).is_ok());
    }

    #[test]
    fn debug_output_never_contains_key_material() {
        let bytes = [0xABu8; 32];
        let key = MasterKey::from_bytes(bytes);
        let ring = Keyring::new(MasterKey::from_bytes(bytes), vec![]);
        let token = DbToken::generate();
        for text in [
            format!("{key:?}"),
            format!("{ring:?}"),
            format!("{token:?}"),
        ] {
            assert!(!text.contains("abab"), "{text}");
            assert!(!text.contains("171"), "{text}");
        }
    }

    #[test]
    fn random_tokens_are_distinct_and_prefixed() {
        let a = random_token("silo_rt_");
        let b = random_token("silo_rt_");
        assert!(a.expose_secret().starts_with("silo_rt_"));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), "silo_rt_".len() + 43);
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(plain in proptest::collection::vec(any::<u8>(), 0..64), pos in any::<usize>(), bit in 0u8..8) {
            let ring = Keyring::new(MasterKey::from_bytes([1u8; 32]), vec![]);
            let mut sealed = ring.seal(ctx("t", "d"), &plain);
            let i = pos % sealed.len();
            sealed[i] ^= 1 << bit;
            prop_assert!(ring.open(ctx("t", "d"), &sealed).is_err());
        }
    }
}
