//! What the benchmarks share: the release binary, starting and stopping it, percentiles.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The master key every benchmark's server runs with.
pub(crate) const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub(crate) fn silo_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SILO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("bench binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("silo");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release --bin silo` first",
        bin.display()
    );
    bin
}

pub(crate) fn serve(data: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(silo_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("SILO_MASTER_KEY", MASTER_KEY)
        // Benchmarks sign up many tenants from one address.
        .env("SILO_SIGNUP_RATE_LIMIT", "0")
        // ... and measure silo, not a plan's request limit.
        .env(
            "SILO_PLANS",
            r#"{"free": {"storage_mb": 0, "requests_per_minute": 0}}"#,
        )
        .env("SILO_AUTH_RATE_LIMIT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start silo");
    let base = read_address(&mut child);
    (child, base)
}

/// The base URL a server printed first on its stdout (`silo listening on http://…`).
pub(crate) fn read_address(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    line.trim()
        .strip_prefix("silo listening on ")
        .expect("address line")
        .to_owned()
}

pub(crate) fn stop(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The resident memory of process `pid`, in KiB (`VmRSS`; 0 if it cannot be read).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
