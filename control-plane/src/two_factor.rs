//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step) and recovery codes.
//!
//! The TOTP secret is sealed like a DB token (AES-256-GCM under a key derived for the user);
//! recovery codes are stored as SHA-256 hashes (80 random bits each, so a hash is no
//! shortcut) and spent once.

use secrecy::{ExposeSecret, SecretBox};
use silo_crypto::{EnvelopeContext, Keyring};
use totp_rs::{Builder, Totp};

/// A session's second-factor proof counts for step-up this long.
pub const STEP_UP_WINDOW_SECS: i64 = 5 * 60;
pub const RECOVERY_CODE_COUNT: usize = 10;
const TOTP_SECRET_BYTES: usize = 20;
const ISSUER: &str = "silo";
const PURPOSE: &str = "totp-secret";

/// The envelope context of a user's TOTP secret. Users are not tenant-scoped, so the key
/// is derived for the user.
fn context(owner: &str) -> EnvelopeContext<'_> {
    EnvelopeContext {
        tenant: owner,
        purpose: PURPOSE,
        binding: owner,
    }
}

fn owner_of(user_id: &str) -> String {
    format!("user/{user_id}")
}

/// A new secret, sealed for storage.
pub fn new_secret(keyring: &Keyring, user_id: &str) -> (SecretBox<Vec<u8>>, Vec<u8>) {
    let raw: [u8; TOTP_SECRET_BYTES] = silo_crypto::random_bytes();
    let sealed = keyring.seal(context(&owner_of(user_id)), &raw);
    (SecretBox::new(Box::new(raw.to_vec())), sealed)
}

pub fn open_secret(
    keyring: &Keyring,
    user_id: &str,
    sealed: &[u8],
) -> anyhow::Result<SecretBox<Vec<u8>>> {
    Ok(keyring.open(context(&owner_of(user_id)), sealed)?)
}

/// The TOTP generator/checker for a secret; `account` labels it in authenticator apps.
pub fn totp(secret: &SecretBox<Vec<u8>>, account: &str) -> anyhow::Result<Totp> {
    // ':' is not allowed in an otpauth label; emails never contain one, but be safe.
    let account = account.replace(':', "_");
    Builder::new()
        .with_secret(secret.expose_secret().clone())
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| anyhow::anyhow!("build TOTP: {e:?}"))
}

/// The step a 6-digit code matches now (±1 step), if any.
pub fn check_code(totp: &Totp, code: &str) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    totp.check(&code, now)
}

/// Ten new recovery codes, `xxxx-xxxx-xxxx-xxxx` in base32 (80 bits each).
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let bytes: [u8; 16] = silo_crypto::random_bytes();
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % 32]))
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// The hash a recovery code is stored and looked up as: case, dashes and spaces ignored.
pub fn recovery_code_hash(code: &str) -> [u8; 32] {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    silo_crypto::hash_token(&format!("silo-recovery:{normal}"))
}

/// Whether `text` looks like a recovery code rather than a 6-digit TOTP code.
pub fn is_recovery_code(text: &str) -> bool {
    text.chars().filter(char::is_ascii_alphanumeric).count() == 16
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use silo_crypto::MasterKey;

    #[test]
    fn secrets_round_trip_and_codes_check() {
        let ring = Keyring::new(MasterKey::generate(), vec![]);
        let (secret, sealed) = new_secret(&ring, "u1");
        assert!(open_secret(&ring, "u2", &sealed).is_err());
        let opened = open_secret(&ring, "u1", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), secret.expose_secret());
        let t = totp(&opened, "ada@example.com").unwrap();
        let code = t.generate_current().to_string();
        assert!(check_code(&t, &code).is_some());
        assert!(check_code(&t, "12345").is_none());
        assert!(check_code(&t, "abcdef").is_none());
        assert!(
            t.to_url()
                .unwrap()
                .starts_with("otpauth://totp/silo:ada%40example.com?")
        );
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        let c = &codes[0];
        assert!(is_recovery_code(c));
        assert_eq!(
            recovery_code_hash(c),
            recovery_code_hash(&c.to_lowercase().replace('-', " "))
        );
        assert!(!is_recovery_code("123456"));
    }
}
