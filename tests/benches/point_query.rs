//! Point-query benchmark: one hot tenant queried by primary key over `/v2/pipeline` (the
//! libSQL protocol) and over `/v1/db/query`, and silo's `GET /health` (all of silo's
//! middleware, no work), against the HTTP floor: a bare axum route returning a constant,
//! built into this bench and run as a process of its own (this binary started again with
//! `POINT_QUERY_FLOOR=1`), on a multi-threaded tokio runtime like silo's. Then the
//! cold-open latency: 10,000 tenants read in turn through a cache of 1,000 handles.
//!
//!     cargo build --release --bin silo
//!     cargo bench -p silo-e2e --bench point_query -- [SECONDS] [CONNECTIONS] [TENANTS] [CACHE] [ROUNDS]
//!
//! Defaults: 6 s per run, 32 connections, 10,000 tenants, a cache of 1,000, 5 rounds. The
//! load generator is `wrk` (Debian): installed with apt-get if it is missing. Each round runs
//! every configuration once, interleaved, so drift of a shared machine hits all of them
//! alike; the table gives each configuration's median round. The share of the floor is
//! paired: each round's requests/s over the floor's in the same round, the median of those
//! ratios reported with their range (on a shared machine the load of the neighbours moves
//! both numbers of a round together, and the ratio much less than either). Beside
//! requests/s it reports the server's own CPU time per request (from /proc), which depends
//! far less than throughput on what else the machine runs. Results go to stdout as
//! Markdown, for docs/benchmarks.md.

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::{percentile, read_address, serve, stop};

fn ensure_wrk() {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return;
    }
    eprintln!("wrk is missing: installing it from Debian");
    let ok = Command::new("sh")
        .args([
            "-c",
            "(apt-get install -y wrk || (apt-get update && apt-get install -y wrk)) >/dev/null",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install wrk (apt-get install wrk)");
}

struct Run {
    name: String,
    rps: f64,
    p50: String,
    p99: String,
    errors: String,
    /// The server's CPU time (user + system) per request, in microseconds.
    cpu_us: f64,
}

/// CPU time the process `pid` has used so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    field(11) + field(12)
}

/// Clock ticks per second (USER_HZ): 100 on Linux for x86_64 and arm64.
const TICKS_PER_SEC: f64 = 100.0;

/// Runs wrk against `url` (POSTing `body` when given) and reads its summary. With one token,
/// every request carries it; with several, requests take them in turn.
#[allow(clippy::too_many_arguments)]
fn wrk(
    pid: u32,
    name: &str,
    url: &str,
    tokens: &[&str],
    body: Option<&Value>,
    secs: u64,
    conns: u32,
) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("req.lua");
    let mut lua = String::new();
    if let Some(b) = body {
        lua.push_str("wrk.method = \"POST\"\n");
        lua.push_str(&format!("wrk.body = {}\n", lua_string(&b.to_string())));
        lua.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    match tokens {
        [] => {}
        [t] => lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = {}\n",
            lua_string(&format!("Bearer {t}"))
        )),
        many => {
            // Each request made once, at start: a request then costs wrk a table lookup.
            let list: Vec<String> = many
                .iter()
                .map(|t| lua_string(&format!("Bearer {t}")))
                .collect();
            lua.push_str(&format!("local auth = {{{}}}\n", list.join(",")));
            lua.push_str(
                "local made, i = {}, 0\n\
                 init = function(args)\n\
                   for k, a in ipairs(auth) do\n\
                     local h = {}\n\
                     for name, v in pairs(wrk.headers) do h[name] = v end\n\
                     h[\"Authorization\"] = a\n\
                     made[k] = wrk.format(nil, nil, h, nil)\n\
                   end\n\
                 end\n\
                 request = function()\n\
                   i = i + 1\n\
                   return made[(i % #made) + 1]\n\
                 end\n",
            );
        }
    }
    // Non-2xx answers are counted by wrk and reported below.
    std::fs::write(&script, lua).expect("write script");
    let ticks_before = cpu_ticks(pid);
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .expect("run wrk");
    let ticks = cpu_ticks(pid).saturating_sub(ticks_before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| -> String {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let errors = text.lines().find(|l| l.contains("Non-2xx")).map_or_else(
        || "0".to_owned(),
        |l| l.trim().rsplit(' ').next().unwrap_or("?").to_owned(),
    );
    let rps: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let requests = rps * secs as f64;
    Run {
        name: name.to_owned(),
        rps,
        p50: field("50%"),
        p99: field("99%"),
        errors,
        cpu_us: if requests > 0.0 {
            ticks as f64 / TICKS_PER_SEC * 1e6 / requests
        } else {
            0.0
        },
    }
}

fn lua_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn post(
    client: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut req = client.post(format!("{base}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("request");
    let status = resp.status();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

fn signup(client: &reqwest::blocking::Client, base: &str, i: usize) -> String {
    let body = post(
        client,
        base,
        "/v1/signup",
        None,
        json!({ "org": format!("Bench{i}"), "email": format!("owner{i}@bench.example.com"), "password": "a bench password" }),
    );
    body["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

/// The floor: axum and tokio doing nothing but HTTP/1.1, one route answering a constant.
/// Prints its address on stdout, then serves until killed.
fn floor_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "silo listening on http://{}",
            listener.local_addr().expect("address")
        );
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        axum::serve(listener, app).await.expect("serve");
    });
}

/// Starts the floor server (this binary, again) and returns it with its base URL.
fn start_floor() -> (std::process::Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .env("POINT_QUERY_FLOOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the floor server");
    let base = read_address(&mut child);
    (child, base)
}

fn main() {
    if std::env::var_os("POINT_QUERY_FLOOR").is_some() {
        return floor_server();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(6);
    let conns: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let tenants: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let cache: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    ensure_wrk();
    let client = reqwest::blocking::Client::new();

    // --- one hot tenant ---
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, base) = serve(&dir.path().join("data"), &[]);
    let token = signup(&client, &base, 0);
    post(
        &client,
        &base,
        "/v1/db/query",
        Some(&token),
        json!({ "sql": "CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT NOT NULL)" }),
    );
    post(
        &client,
        &base,
        "/v1/db/query",
        Some(&token),
        json!({ "sql": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO kv SELECT x, hex(randomblob(16)) FROM n" }),
    );
    let key = post(
        &client,
        &base,
        "/v1/api-keys",
        Some(&token),
        json!({ "name": "bench", "scopes": ["db:read"] }),
    )["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let v1 = json!({ "sql": "SELECT v FROM kv WHERE id = ?", "params": [4242] });
    let v2 = json!({ "requests": [
        { "type": "execute", "stmt": { "sql": "SELECT v FROM kv WHERE id = ?", "args": [{ "type": "integer", "value": "4242" }] } },
        { "type": "close" }
    ]});
    // Warm up: caches, connections, the statement cache.
    for _ in 0..100 {
        post(&client, &base, "/v1/db/query", Some(&token), v1.clone());
        post(&client, &base, "/v2/pipeline", Some(&token), v2.clone());
    }
    let pid = child.id();
    let (floor_child, floor_base) = start_floor();
    // (server pid, name, URL, credentials, body)
    type Config<'a> = (u32, &'a str, String, &'a [&'a str], Option<&'a Value>);
    let configs: [Config; 6] = [
        (
            floor_child.id(),
            "HTTP floor: bare axum route returning a constant",
            format!("{floor_base}/"),
            &[],
            None,
        ),
        (
            pid,
            "silo `GET /health` (all middleware, no work)",
            format!("{base}/health"),
            &[],
            None,
        ),
        (
            pid,
            "`POST /v2/pipeline`, access token",
            format!("{base}/v2/pipeline"),
            &[&token],
            Some(&v2),
        ),
        (
            pid,
            "`POST /v1/db/query`, access token",
            format!("{base}/v1/db/query"),
            &[&token],
            Some(&v1),
        ),
        (
            pid,
            "`POST /v2/pipeline`, API key (db:read)",
            format!("{base}/v2/pipeline"),
            &[&key],
            Some(&v2),
        ),
        (
            pid,
            "`POST /v1/db/query`, API key (db:read)",
            format!("{base}/v1/db/query"),
            &[&key],
            Some(&v1),
        ),
    ];
    let mut rounds_done: Vec<Vec<Run>> = (0..configs.len()).map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (pid, name, url, auth, body)) in configs.iter().enumerate() {
            rounds_done[i].push(wrk(*pid, name, url, auth, *body, secs, conns));
        }
    }
    // Each configuration's share of the floor, round by round: (median, least, most).
    let shares: Vec<(f64, f64, f64)> = rounds_done
        .iter()
        .map(|runs| {
            let mut r: Vec<f64> = runs
                .iter()
                .zip(&rounds_done[0])
                .map(|(run, floor)| run.rps / floor.rps.max(1.0) * 100.0)
                .collect();
            r.sort_by(f64::total_cmp);
            (r[r.len() / 2], r[0], r[r.len() - 1])
        })
        .collect();
    // Each configuration's median round (by requests/s).
    let runs: Vec<Run> = rounds_done
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let mid = r.len() / 2;
            r.swap_remove(mid)
        })
        .collect();
    // A noisy neighbour: another tenant floods the server with heavy queries (each ~0.3 s of
    // CPU) from 16 clients while the hot tenant's point queries are measured again.
    let noisy = signup(&client, &base, 1);
    let stop_flood = std::sync::atomic::AtomicBool::new(false);
    let (neighbour, flood_counts) = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..16)
            .map(|_| {
                let (client, base, noisy, stop_flood) = (&client, &base, &noisy, &stop_flood);
                s.spawn(move || {
                    let mut counts = (0u64, 0u64);
                    while !stop_flood.load(std::sync::atomic::Ordering::Relaxed) {
                        let status = client
                            .post(format!("{base}/v1/db/query"))
                            .bearer_auth(noisy)
                            .json(&json!({ "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000) SELECT max(x) FROM c" }))
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        if status == 200 { counts.0 += 1 } else { counts.1 += 1 }
                    }
                    counts
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let run = wrk(
            pid,
            "`POST /v2/pipeline`, access token, while another tenant floods",
            &format!("{base}/v2/pipeline"),
            &[&token],
            Some(&v2),
            secs,
            conns,
        );
        stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
        let counts = flooders
            .into_iter()
            .map(|f| f.join().expect("flooder"))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        (run, counts)
    });
    // The server's CPU time then includes the neighbour's queries: not per point query.
    let neighbour = Run {
        cpu_us: f64::NAN,
        ..neighbour
    };
    stop(child);
    stop(floor_child);
    let floor = runs[0].rps.max(1.0);
    println!(
        "### Point query on one hot tenant ({secs} s a run, {conns} connections, wrk -t2, median of {rounds} rounds)\n"
    );
    println!(
        "| run | requests/s | % of floor (median of rounds, range) | p50 | p99 | server CPU per request | non-2xx |"
    );
    println!("|---|---|---|---|---|---|---|");
    let paired = shares
        .iter()
        .map(|(mid, lo, hi)| format!("{mid:.0} % ({lo:.0}–{hi:.0})"));
    // The neighbour's run is one, beside the floor's median round.
    let alone = format!("{:.0} %", neighbour.rps / floor * 100.0);
    for (r, share) in runs
        .iter()
        .chain(std::iter::once(&neighbour))
        .zip(paired.chain(std::iter::once(alone)))
    {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            r.name,
            r.rps,
            share,
            r.p50,
            r.p99,
            if r.cpu_us.is_nan() {
                "— (the neighbour's too)".to_owned()
            } else {
                format!("{:.1} µs", r.cpu_us)
            },
            r.errors
        );
    }
    println!(
        "\nThe neighbour's heavy queries meanwhile: {} answered, {} turned away (429: over its \
         concurrency limit).",
        flood_counts.0, flood_counts.1
    );

    if tenants == 0 {
        return;
    }

    // --- cold opens across many tenants ---
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, base) = serve(
        &dir.path().join("data"),
        &["--max-open-tenants", &cache.to_string()],
    );
    let started = Instant::now();
    let tokens: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (client, base) = (&client, &base);
                s.spawn(move || {
                    (0..tenants)
                        .filter(|i| i % 4 == w)
                        .map(|i| {
                            let t = signup(client, base, i);
                            post(
                                client,
                                base,
                                "/v1/db/query",
                                Some(&t),
                                json!({ "sql": "CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT)" }),
                            );
                            t
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    eprintln!("{tenants} tenants signed up in {:?}", started.elapsed());
    // Read each tenant once, in turn: past the first `cache`, every read opens a database
    // the cache evicted (least recently used).
    let timed_read = |t: &String| {
        let started = Instant::now();
        post(
            &client,
            &base,
            "/v2/pipeline",
            Some(t),
            v2.clone().tap_sql("SELECT count(*) FROM kv"),
        );
        started.elapsed()
    };
    let mut cold: Vec<_> = tokens.iter().map(timed_read).collect();
    // The same tenants once more, the last `cache` of them now warm.
    let mut warm: Vec<_> = tokens
        .iter()
        .rev()
        .take(cache / 2)
        .map(timed_read)
        .collect();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    let spread = spread_over_tenants(&client, &base, child.id(), &tokens, cache, secs, conns);
    stop(child);
    cold.sort();
    warm.sort();
    let misses = metrics
        .lines()
        .find(|l| l.starts_with("silo_tenant_handle_cache_misses_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_owned();
    println!("\n### Cold opens: {tenants} tenants read in turn, cache of {cache} handles\n");
    println!("| requests | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| cold (handle evicted, reopened: unseal DB token, key SQLCipher, install sandbox) | {:.2?} | {:.2?} |",
        percentile(&cold, 0.5),
        percentile(&cold, 0.99)
    );
    println!(
        "| warm (handle cached), for comparison | {:.2?} | {:.2?} |",
        percentile(&warm, 0.5),
        percentile(&warm, 0.99)
    );
    println!("\nCache misses counted by the server: {misses} (each a database open).");
    // The server's own measure of an open (unseal the DB token, key SQLCipher, check the
    // key, install the sandbox), from its histogram: the bucket that holds the quantile.
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("silo_tenant_open_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), count))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let quantile = |q: f64| {
        buckets.iter().find(|(_, c)| *c >= q * total).map_or_else(
            || "?".to_owned(),
            |(le, _)| format!("≤ {:.2} ms", le * 1000.0),
        )
    };
    println!(
        "Server-side open time over {total} opens (histogram buckets): p50 {}, p99 {}.",
        quantile(0.5),
        quantile(0.99)
    );
    println!("{spread}");
}

/// The point query spread over the credentials of many warm tenants, alone, then while one
/// other tenant makes audited schema changes (each a catalog write) 50 times a second. A
/// catalog write used to make every cached credential stale; now only those it may have
/// changed. Returns its report.
fn spread_over_tenants(
    client: &reqwest::blocking::Client,
    base: &str,
    pid: u32,
    tokens: &[String],
    cache: usize,
    secs: u64,
    conns: u32,
) -> String {
    // The last tenants read: their handles and credentials are cached.
    let spread: Vec<&str> = tokens
        .iter()
        .rev()
        .take((cache / 2).clamp(1, 300))
        .map(String::as_str)
        .collect();
    let Some(writer) = tokens.first().filter(|_| tokens.len() > spread.len()) else {
        return String::new();
    };
    let query = json!({ "requests": [
        { "type": "execute", "stmt": { "sql": "SELECT count(*) FROM kv" } },
        { "type": "close" }
    ]});
    let url = format!("{base}/v2/pipeline");
    let misses = || -> f64 {
        client
            .get(format!("{base}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("silo_credential_cache_misses_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = misses();
    let alone = wrk(pid, "alone", &url, &spread, Some(&query), secs, conns);
    let between = misses();
    let stop_writing = std::sync::atomic::AtomicBool::new(false);
    let (busy, changes) = std::thread::scope(|s| {
        let changer = s.spawn(|| {
            let mut n = 0u64;
            while !stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
                let sql = if n.is_multiple_of(2) {
                    "CREATE TABLE churn(x)"
                } else {
                    "DROP TABLE churn"
                };
                post(
                    client,
                    base,
                    "/v1/db/query",
                    Some(writer),
                    json!({ "sql": sql }),
                );
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            n
        });
        let run = wrk(
            pid,
            "while another tenant changes its schema",
            &url,
            &spread,
            Some(&query),
            secs,
            conns,
        );
        stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
        (run, changer.join().expect("changer"))
    });
    let after = misses();
    let mut out = format!(
        "\n### Point query spread over {} tenants' access tokens ({secs} s a run)\n\n\
         | run | requests/s | p50 | p99 | server CPU per request | credentials read from the catalog |\n\
         |---|---|---|---|---|---|\n",
        spread.len()
    );
    for (run, read) in [(&alone, between - before), (&busy, after - between)] {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.1} µs | {read:.0} |\n",
            run.name, run.rps, run.p50, run.p99, run.cpu_us
        ));
    }
    out.push_str(&format!(
        "\nThe other tenant's audited schema changes during the second run: {changes}.\n"
    ));
    out
}

trait TapSql {
    fn tap_sql(self, sql: &str) -> Value;
}

impl TapSql for Value {
    /// The same pipeline with another statement.
    fn tap_sql(mut self, sql: &str) -> Value {
        self["requests"][0]["stmt"] = json!({ "sql": sql });
        self
    }
}
