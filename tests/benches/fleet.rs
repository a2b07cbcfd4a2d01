//! Fleet benchmark: provisioning throughput through the admin API, and one migration
//! applied across every tenant. Drives the real release binary on loopback.
//!
//!     cargo build --release --bin silo
//!     cargo bench -p silo-e2e --bench fleet -- [TENANTS] [CLIENTS]
//!
//! Defaults: 10,000 tenants, 8 concurrent clients. Results go to stdout as a Markdown
//! table, for docs/benchmarks.md.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{percentile, serve, silo_bin, stop};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tenants: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let init = Command::new(silo_bin())
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        // The key `serve` below runs with (common.rs): the catalog is encrypted under it.
        .env("SILO_MASTER_KEY", common::MASTER_KEY)
        .output()
        .expect("silo init");
    let token = String::from_utf8_lossy(&init.stdout)
        .lines()
        .last()
        .expect("token")
        .trim()
        .to_owned();

    // 1. Provisioning through the admin API.
    let (server, base) = serve(&data, &[]);
    let started = Instant::now();
    let per_client = tenants.div_ceil(clients);
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (base, token) = (&base, &token);
                s.spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    let mut out = Vec::new();
                    for i in 0..per_client {
                        let n = c * per_client + i;
                        if n >= tenants {
                            break;
                        }
                        let t0 = Instant::now();
                        let resp = http
                            .post(format!("{base}/admin/v1/tenants"))
                            .bearer_auth(token)
                            .json(&json!({ "name": format!("bench {n}") }))
                            .send()
                            .expect("create tenant");
                        assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
                        out.push(t0.elapsed());
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let provision_time = started.elapsed();
    latencies.sort();
    stop(server);

    // 2. One migration across every tenant, shipped from a directory.
    let migrations = dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).expect("mkdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/tenant");
    for entry in std::fs::read_dir(&shipped)
        .expect("schemas/tenant")
        .flatten()
    {
        std::fs::copy(entry.path(), migrations.join(entry.file_name())).expect("copy");
    }
    std::fs::write(
        migrations.join("0002_bench_notes.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, at TEXT);\nCREATE INDEX notes_at ON notes (at);\n",
    )
    .expect("write migration");
    let migrations_arg = migrations.display().to_string();
    let (server, base) = serve(&data, &["--migrations", &migrations_arg]);
    let http = reqwest::blocking::Client::new();
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/admin/v1/migrations/apply"))
        .bearer_auth(&token)
        .json(&json!({ "concurrency": 8 }))
        .send()
        .expect("apply");
    assert_eq!(resp.status().as_u16(), 202);
    let status: Value = loop {
        let s: Value = http
            .get(format!("{base}/admin/v1/migrations/status"))
            .bearer_auth(&token)
            .send()
            .and_then(|r| r.json())
            .expect("status");
        if s["job"]["state"] != json!("running") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let migrate_time = started.elapsed();
    stop(server);
    assert_eq!(
        status["job"]["done"].as_u64(),
        Some(tenants as u64),
        "{status}"
    );

    println!("| measure | value |");
    println!("|---|---|");
    println!("| tenants | {tenants} |");
    println!("| concurrent clients | {clients} |");
    println!(
        "| provisioning, total | {:.1} s |",
        provision_time.as_secs_f64()
    );
    println!(
        "| provisioning, throughput | {:.0} tenants/s |",
        tenants as f64 / provision_time.as_secs_f64()
    );
    println!(
        "| one creation, p50 | {:.1} ms |",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "| one creation, p99 | {:.1} ms |",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| migration of every tenant (concurrency 8), total | {:.1} s |",
        migrate_time.as_secs_f64()
    );
    println!(
        "| migration, throughput | {:.0} tenants/s |",
        tenants as f64 / migrate_time.as_secs_f64()
    );
}
