//! Export memory benchmark: one tenant with about 1 GiB of data, exported in each format
//! while the server's resident memory is sampled. Drives the real release binary.
//!
//!     cargo build --release --bin silo
//!     cargo bench -p silo-e2e --bench export -- [MiB]        (default 1024)

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::{rss_kib, serve, stop};

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, base) = serve(&dir.path().join("data"), &["--query-timeout-ms", "600000"]);
    let pid = child.id();
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("client");
    let signup: Value = http
        .post(format!("{base}/v1/signup"))
        .json(&json!({ "org": "Big", "email": "big@example.com", "password": "long enough" }))
        .send()
        .and_then(|r| r.json())
        .expect("signup");
    let token = signup["access_token"].as_str().expect("token").to_owned();
    let query = |sql: &str| {
        let r = http
            .post(format!("{base}/v1/db/query"))
            .bearer_auth(&token)
            .json(&json!({ "sql": sql }))
            .send()
            .expect("query");
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text());
    };

    // Fill: 512 KiB per row (the sandbox's LENGTH limit of 1,000,000 bytes also caps a row).
    let fill = Instant::now();
    query("CREATE TABLE big (id INTEGER PRIMARY KEY, a BLOB)");
    let mut done = 0;
    while done < mib {
        let n = (mib - done).min(64);
        query(&format!(
            "INSERT INTO big (a) SELECT randomblob(524288) FROM \
             (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT x FROM c)",
            n * 2
        ));
        done += n;
    }
    let fill_time = fill.elapsed();
    let baseline = rss_kib(pid);

    println!("| format | export size | time | server RSS before | peak RSS during | peak extra |");
    println!("|---|---|---|---|---|---|");
    for format in ["sqlite", "sql", "csv"] {
        let before = rss_kib(pid);
        let peak = AtomicU64::new(before);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let bytes = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
            let mut resp = http
                .get(format!("{base}/v1/export?format={format}"))
                .bearer_auth(&token)
                .send()
                .expect("export");
            assert_eq!(resp.status().as_u16(), 200);
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = resp.read(&mut buf).expect("read body");
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stop.store(true, Ordering::Relaxed);
            total
        });
        let peak = peak.load(Ordering::Relaxed);
        println!(
            "| {format} | {:.0} MiB | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64(),
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0
        );
    }
    println!();
    println!(
        "Filled {mib} MiB in {:.1} s; server RSS after filling: {:.0} MiB.",
        fill_time.as_secs_f64(),
        baseline as f64 / 1024.0
    );
    stop(child);
}
