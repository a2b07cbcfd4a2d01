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

/// Starts `silo serve` on port 0, returns the child and the first stdout line.
fn serve(data_dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = silo()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("SILO_MASTER_KEY")
        .env_remove("SILO_MASTER_KEY_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run silo");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    (child, line)
}

fn stop(child: std::process::Child) -> String {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_a_configured_key_a_private_key_file_is_generated_with_a_warning_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, line) = serve(dir.path());
    assert!(
        line.starts_with("silo listening on http://127.0.0.1:"),
        "{line}"
    );
    let stderr = stop(child);
    assert!(stderr.contains("development only"), "{stderr}");

    let key_path = dir.path().join("master.key");
    let mode = std::fs::metadata(&key_path)
        .expect("master.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let key = std::fs::read_to_string(&key_path).expect("read key");
    assert!(silo_crypto::MasterKey::from_base64(&key).is_ok());
    assert!(!stderr.contains(key.trim()), "the generated key was logged");

    // A second start reuses the same key instead of replacing it.
    let (child, _) = serve(dir.path());
    stop(child);
    assert_eq!(std::fs::read_to_string(&key_path).expect("read key"), key);
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (first, line) = serve(dir.path());
    assert!(line.starts_with("silo listening"), "{line}");
    let second = silo()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("SILO_MASTER_KEY")
        .output()
        .expect("run silo");
    stop(first);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already using the data directory"),
        "{stderr}"
    );
}

/// Issue 20, finding 1: started once with `--master-key-file`, then restarted without it (a
/// forgotten env file), silo generated a new `master.key` and served with it. Now a data
/// directory that has a catalog never gets a generated key: start-up stops, says why, and
/// leaves no key file behind.
#[test]
fn a_data_directory_set_up_under_a_key_never_gets_a_generated_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("k1");
    std::fs::write(&key_file, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let data = dir.path().join("data");
    let init = silo()
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--master-key-file")
        .arg(&key_file)
        .output()
        .expect("silo init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut child = silo()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("SILO_MASTER_KEY")
        .env_remove("SILO_MASTER_KEY_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run silo");
    // A server that started anyway would never exit: give it 20 s, then fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("started without its key");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "started without its key");
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set up under a master key"), "{stderr}");
    assert!(!data.join("master.key").exists(), "a key was generated");
}
