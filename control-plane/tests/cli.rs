//! The `silo` binary's start-up behaviour, run as a user would run it.

use std::process::Command;

fn silo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_silo"))
}

#[test]
fn a_malformed_master_key_stops_start_up_without_echoing_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in ["not-base64!!", "c2hvcnQ="] {
        let out = silo()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("SILO_MASTER_KEY", bad)
            .output()
            .expect("run silo");
        assert!(!out.status.success(), "started with master key {bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("SILO_MASTER_KEY"), "{stderr}");
        assert!(!stderr.contains(bad), "the key was echoed: {stderr}");
        assert!(!dir.path().join("catalog.db").exists(), "started anyway");
    }
}

#[test]
fn a_missing_master_key_file_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = silo()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--master-key-file")
        .arg(dir.path().join("nope.key"))
        .output()
        .expect("run silo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.key"));
}

#[test]
fn the_help_never_shows_the_master_key_from_the_environment() {
    let out = silo()
        .args(["serve", "--help"])
        .env(
            "SILO_MASTER_KEY",
            "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=",
        )
        .output()
        .expect("run silo");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("SILO_MASTER_KEY"));
    assert!(!help.contains("c2VjcmV0"), "{help}");
}
