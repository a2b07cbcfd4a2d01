//! Loading the master key: configured (env or file), or generated for development.
//! Fails closed: a configured key that does not parse stops start-up.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use silo_crypto::{Keyring, MasterKey};

/// Where the primary master key came from (logged at start-up; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    /// Generated into (or read back from) `<data-dir>/master.key`: development only.
    Generated(PathBuf),
}

pub const GENERATED_KEY_FILE: &str = "master.key";
/// The catalog's file in the data directory.
pub const CATALOG_FILE: &str = "catalog.db";

/// The keyring from the configured key, the key file, or `<data-dir>/master.key`
/// (generated there only if `generate`).
pub fn load_keys(
    data_dir: &Path,
    master_key: Option<&secrecy::SecretString>,
    master_key_file: Option<&Path>,
    previous_master_keys: Option<&secrecy::SecretString>,
    generate: bool,
) -> anyhow::Result<(Keyring, KeySource)> {
    let (primary, source) = if let Some(key) = master_key {
        let key = MasterKey::from_base64(key.expose_secret())
            .context("SILO_MASTER_KEY / --master-key is invalid")?;
        (key, KeySource::Env)
    } else if let Some(path) = master_key_file {
        (read_key_file(path)?, KeySource::File(path.to_path_buf()))
    } else {
        let path = data_dir.join(GENERATED_KEY_FILE);
        // Only a new data directory gets a generated key: one with a catalog was set up
        // under a key, and a new one would split the fleet across two keys (or, the catalog
        // being encrypted, merely fail to open it, leaving a stray key file behind).
        let catalog = data_dir.join(CATALOG_FILE);
        if !path.exists() && generate && catalog.exists() {
            bail!(
                "no master key is configured and {} holds no generated one, but {} exists: this \
                 data directory was set up under a master key. Give that key \
                 (SILO_MASTER_KEY or --master-key-file); silo generates a key only for a new \
                 data directory",
                path.display(),
                catalog.display()
            );
        }
        let key = if path.exists() || !generate {
            read_key_file(&path)?
        } else {
            generate_key_file(&path)?
        };
        (key, KeySource::Generated(path))
    };
    let mut previous = Vec::new();
    if let Some(list) = previous_master_keys {
        for (i, text) in list
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            previous.push(MasterKey::from_base64(text).with_context(|| {
                format!("SILO_PREVIOUS_MASTER_KEYS entry {} is invalid", i + 1)
            })?);
        }
    }
    Ok((Keyring::new(primary, previous), source))
}

fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let text = secrecy::SecretString::from(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read master key file {}", path.display()))?,
    );
    MasterKey::from_base64(text.expose_secret())
        .with_context(|| format!("master key file {} is invalid", path.display()))
}

/// Writes a new random key with mode 0600, refusing to overwrite anything.
fn generate_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let key = MasterKey::generate();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create master key file {}", path.display()))?;
    let text = key.to_base64();
    file.write_all(text.expose_secret().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let meta = std::fs::metadata(path)?;
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        bail!("master key file {} is readable by others", path.display());
    }
    Ok(key)
}
