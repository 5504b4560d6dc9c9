//! Benchmarks for the targets of DESIGN §9, run on demand:
//!
//! ```sh
//! cargo bench --bench targets               # every scenario
//! cargo bench --bench targets -- latency    # one (rate, latency, idle, status, scan, startup)
//! ```
//!
//! Each scenario prints its measurement next to its target; results are
//! recorded by hand in `benches/RESULTS.md` with the date and machine.
//! Nothing here is asserted by the test suite: speed is measured, not tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::oceanbase::{self, OceanBaseEmulatorOptions};
use rekey::state::{RotationState, Store};

fn bin() -> PathBuf {
    // cargo bench builds the binary in the same profile directory.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("rekey");
    assert!(
        p.exists(),
        "build the binary first: cargo build --release (looked for {})",
        p.display()
    );
    p
}

struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("ak"), oceanbase::DEFAULT_ACCESS_KEY_ID).unwrap();
        std::fs::write(dir.path().join("sk"), oceanbase::DEFAULT_ACCESS_KEY_SECRET).unwrap();
        Bench { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(
        &self,
        endpoint: &str,
        provider_extra: &str,
        daemon_extra: &str,
        policies: &str,
    ) -> PathBuf {
        let cfg = format!(
            r#"
[daemon]
state = "{state}"
listen = "127.0.0.1:0"
{daemon_extra}

[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = {{ file = "{ak}" }}
access_key_secret = {{ file = "{sk}" }}
{provider_extra}

[sinks.files]
kind = "file"
path = "{keys}/{{lineage}}.env"

{policies}
"#,
            state = self.path("state.db").display(),
            org = oceanbase::DEFAULT_ORG_ID,
            project = oceanbase::DEFAULT_PROJECT_ID,
            ak = self.path("ak").display(),
            sk = self.path("sk").display(),
            keys = self.path("keys").display(),
        );
        let p = self.path("rekey.toml");
        std::fs::write(&p, cfg).unwrap();
        p
    }

    fn spawn(&self, cfg: &Path, envs: &[(&str, String)]) -> Child {
        let mut cmd = Command::new(bin());
        cmd.args(["--log-level", "warn", "run", "-c"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    fn completed(&self) -> usize {
        Store::open_read_only(&self.path("state.db"))
            .ok()
            .and_then(|s| s.history(None, 100_000).ok())
            .map(|h| {
                h.iter()
                    .filter(|r| r.state == RotationState::Completed)
                    .count()
            })
            .unwrap_or(0)
    }
}

fn policy(name: &str, glob: &str, schedule: &str, grace: &str) -> String {
    format!(
        r#"
[[policy]]
name = "{name}"
provider = "ob"
match = "{glob}"
schedule = "{schedule}"
rotate_before_expiry = "7d"
grace_period = "{grace}"
sinks = ["files"]
create = {{ action = "read" }}
max_attempts = 20
"#
    )
}

fn seed_due(emu: &oceanbase::EmulatorHandle, prefix: &str, n: usize) {
    let now = Utc::now();
    for i in 0..n {
        emu.insert_key(
            &format!("{prefix}{i:05}"),
            now - chrono::Duration::days(29),
            Some(now + chrono::Duration::hours(1)),
        );
    }
}

fn stop(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Wait for `n` completed rotations; returns the time from `t0`.
fn wait_completed(b: &Bench, n: usize, t0: Instant, limit: Duration) -> Duration {
    loop {
        if b.completed() >= n {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// First rotation start to last rotation finish, from the state DB: the
/// span the throughput targets describe (process start-up excluded).
fn rotation_span(b: &Bench) -> Duration {
    let h = Store::open_read_only(&b.path("state.db"))
        .unwrap()
        .history(None, 100_000)
        .unwrap();
    let start = h.iter().map(|r| r.started_at).min().unwrap();
    let end = h.iter().filter_map(|r| r.finished_at).max().unwrap();
    (end - start).to_std().unwrap_or_default()
}

fn provider_calls(emu: &oceanbase::EmulatorHandle) -> u64 {
    emu.stats().requests()
}

/// N due lineages against a provider limited to R requests/s:
/// target ≤ 1.10 × (provider calls ÷ R).
async fn rate_limited() {
    let (n, r) = (40usize, 20.0);
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions {
            rate_limit: Some(r * 1.05),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    seed_due(&emu, "app-", n);
    let b = Bench::new();
    let cfg = b.config(
        &emu.endpoint(),
        &format!("rate_limit = \"{r}/s\""),
        "max_concurrent_rotations = 8",
        &policy("p", "app-*", "0 0 0 1 1 *", "0s"),
    );
    emu.reset_stats();
    let t0 = Instant::now();
    let mut d = b.spawn(&cfg, &[]);
    let (wall, b) = tokio::task::spawn_blocking(move || {
        let t = wait_completed(&b, n, t0, Duration::from_secs(600));
        (t, b)
    })
    .await
    .unwrap();
    stop(&mut d);
    let calls = provider_calls(&emu);
    let ideal = calls as f64 / r;
    let span = rotation_span(&b);
    println!(
        "rate-limited: {n} lineages, R={r}/s, {calls} provider calls (incl. the first check): first start → last finish {:.2}s (process start to last finish {:.2}s); ideal {:.2}s; ratio {:.3} (target ≤ 1.10)",
        span.as_secs_f64(),
        wall.as_secs_f64(),
        ideal,
        span.as_secs_f64() / ideal
    );
}

/// 20 ms per call, no rate limit: target ≤ 1.25 × (critical-path calls ×
/// latency ÷ concurrency).
async fn latency_bound() {
    let (n, conc, lat) = (40usize, 4usize, 20u64);
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions {
            latency: Duration::from_millis(lat),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    seed_due(&emu, "app-", n);
    let b = Bench::new();
    let cfg = b.config(
        &emu.endpoint(),
        "",
        &format!("max_concurrent_rotations = {conc}"),
        &policy("p", "app-*", "0 0 0 1 1 *", "0s"),
    );
    emu.reset_stats();
    let t0 = Instant::now();
    let mut d = b.spawn(&cfg, &[]);
    let (wall, b) = tokio::task::spawn_blocking(move || {
        let t = wait_completed(&b, n, t0, Duration::from_secs(600));
        (t, b)
    })
    .await
    .unwrap();
    stop(&mut d);
    let stats = emu.stats();
    // Calls on each rotation's critical path: everything but the check's
    // listing and the Digest challenge(s), which precede the rotations.
    let per_rotation =
        (stats.requests() - stats.list.requests.min(1) - stats.challenged()) as f64 / n as f64;
    let ideal = per_rotation * n as f64 * lat as f64 / 1000.0 / conc as f64;
    let span = rotation_span(&b);
    println!(
        "latency-bound: {n} lineages, {lat} ms/call, concurrency {conc}, {:.2} calls/rotation: first start → last finish {:.2}s (process start to last finish {:.2}s); ideal {:.2}s; ratio {:.3} (target ≤ 1.25)",
        per_rotation,
        span.as_secs_f64(),
        wall.as_secs_f64(),
        ideal,
        span.as_secs_f64() / ideal
    );
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// 100 policies over 10,000 keys, nothing due: peak RSS ≤ 15 MiB, CPU ≤
/// 0.1 % of a core between checks.
async fn idle() {
    let emu_proc = EmulatorProcess::start(&["--keys", "10000", "--lifetime", "30d"]);
    let b = Bench::new();
    let mut policies = String::new();
    // Seeded names are app-00000 … app-09999: 100 policies of 100 keys each.
    for i in 0..100 {
        policies.push_str(&policy(
            &format!("p{i:03}"),
            &format!("app-{:03}??*", i),
            "0 0 * * * *",
            "1h",
        ));
    }
    let cfg = b.config(&emu_proc.endpoint, "", "", &policies);
    let mut d = b.spawn(&cfg, &[]);
    let pid = d.id();
    // First checks list everything once; let them settle.
    std::thread::sleep(Duration::from_secs(20));
    if let Some(st) = d.try_wait().unwrap() {
        panic!(
            "the daemon exited ({st}):\n{}",
            std::fs::read_to_string(b.path("daemon.log")).unwrap_or_default()
        );
    }
    let settled_rss = proc_status(pid, "VmRSS:");
    let t0 = cpu_ticks(pid);
    let window = 60;
    std::thread::sleep(Duration::from_secs(window));
    let t1 = cpu_ticks(pid);
    let hwm = proc_status(pid, "VmHWM:");
    stop(&mut d);
    let hz = 100.0;
    let cpu = (t1 - t0) as f64 / hz / window as f64 * 100.0;
    println!(
        "idle: 100 policies / 10,000 keys: peak RSS {:.1} MiB (after first scan {:.1} MiB; target ≤ 15), CPU {cpu:.3} % of a core over {window}s between checks (target ≤ 0.1)",
        hwm as f64 / 1024.0,
        settled_rss as f64 / 1024.0
    );
}

/// A `rekey emulate oceanbase` child process (so its memory is not ours).
struct EmulatorProcess {
    child: Child,
    endpoint: String,
}

impl EmulatorProcess {
    fn start(args: &[&str]) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(bin())
            .args([
                "--log-level",
                "warn",
                "emulate",
                "oceanbase",
                "--listen",
                &addr.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        EmulatorProcess {
            child,
            endpoint: format!("http://{addr}"),
        }
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One provider with 100,000 keys, 20 ms per page: memory growth ≤ 20 MiB,
/// time ≤ 1.1 × pages × latency.
async fn scan() {
    let (keys, lat) = (100_000usize, 20u64);
    let emu = EmulatorProcess::start(&[
        "--keys",
        &keys.to_string(),
        "--latency",
        &format!("{lat}ms"),
    ]);
    let metrics = rekey::metrics::Metrics::new();
    let src = format!(
        r#"
[providers.ob]
kind = "oceanbase"
endpoint = "{}"
org_id = "{}"
project_id = "{}"
access_key_id = "{}"
access_key_secret = "{}"
"#,
        emu.endpoint,
        oceanbase::DEFAULT_ORG_ID,
        oceanbase::DEFAULT_PROJECT_ID,
        oceanbase::DEFAULT_ACCESS_KEY_ID,
        oceanbase::DEFAULT_ACCESS_KEY_SECRET
    );
    let (cfg, _) =
        rekey::config::load_str(Path::new("bench.toml"), &src, &Default::default()).unwrap();
    let provider = rekey::provider::build(&cfg.providers["ob"], &metrics).unwrap();
    let before = proc_status(std::process::id(), "VmRSS:");
    let t0 = Instant::now();
    // Keep one key in 1,000 (a policy's share), as the planner would.
    let kept = provider.list(&|n: &str| n.ends_with("000")).await.unwrap();
    let took = t0.elapsed();
    let after_hwm = proc_status(std::process::id(), "VmHWM:");
    let pages = keys.div_ceil(100);
    let ideal = pages as f64 * lat as f64 / 1000.0;
    println!(
        "scan: {keys} keys ({pages} pages, {lat} ms each), kept {}: {:.2}s; ideal {:.2}s; ratio {:.3} (target ≤ 1.1); memory growth ≤ {:.1} MiB (peak RSS − RSS before; target ≤ 20)",
        kept.len(),
        took.as_secs_f64(),
        ideal,
        took.as_secs_f64() / ideal,
        after_hwm.saturating_sub(before) as f64 / 1024.0
    );
}

/// READY=1 within 100 ms with 100,000 history rows.
async fn startup() {
    let b = Bench::new();
    let cfg = b.config(
        "http://127.0.0.1:9",
        "",
        "",
        &policy("p", "app-*", "0 0 0 1 1 *", "1h"),
    );
    {
        let store = Store::open(&b.path("state.db")).unwrap();
        drop(store);
        let conn = rusqlite::Connection::open(b.path("state.db")).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let mut st = conn
            .prepare(
                "INSERT INTO rotations (id, policy, lineage, provider, state, reason, message, trigger, sinks, grace_seconds, started_at, finished_at, outcome, old_key_id, new_key_id)
                 VALUES (?1, 'p', ?2, 'ob', 'completed', 'expiring', 'bench', 'schedule', '[\"files\"]', 3600, ?3, ?3, 'deleted', 'old', 'new')",
            )
            .unwrap();
        let base = Utc::now() - chrono::Duration::days(400);
        for i in 0..100_000u32 {
            let t = rekey::state::ts(base + chrono::Duration::minutes(i as i64));
            st.execute(rusqlite::params![
                format!("{i:08x}"),
                format!("app-{}", i % 500),
                t
            ])
            .unwrap();
        }
        drop(st);
        conn.execute_batch("COMMIT").unwrap();
    }
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut d = b.spawn(&cfg, &[("NOTIFY_SOCKET", sock_path.display().to_string())]);
    let mut buf = [0u8; 4096];
    let took = loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break t0.elapsed();
        }
    };
    stop(&mut d);
    println!(
        "startup: READY=1 after {:.1} ms with 100,000 history rows, including process exec (target ≤ 100 ms)",
        took.as_secs_f64() * 1000.0
    );
}

/// `/status` and `/metrics` p99 at 1,000 requests/s while rotations run:
/// target ≤ 2 ms.
async fn status() {
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions {
            latency: Duration::from_millis(50),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    seed_due(&emu, "app-", 200);
    let b = Bench::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = b.config(
        &emu.endpoint(),
        "",
        "max_concurrent_rotations = 8",
        &policy("p", "app-*", "*/5 * * * * *", "10s"),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut d = b.spawn(&cfg, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "status endpoint did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for path in ["/status", "/metrics"] {
        let rate = 1000u64;
        let secs = 10u64;
        let mut lat = Vec::with_capacity((rate * secs) as usize);
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut handles = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            ticker.tick().await;
            let c = client.clone();
            let url = format!("{base}{path}");
            handles.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c.get(url).send().await.and_then(|r| r.error_for_status());
                let ok = match r {
                    Ok(r) => r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (t.elapsed(), ok)
            }));
        }
        let mut errors = 0;
        for h in handles {
            let (l, ok) = h.await.unwrap();
            if !ok {
                errors += 1;
            }
            lat.push(l);
        }
        lat.sort();
        let p = |q: f64| {
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0
        };
        println!(
            "status: GET {path} at {rate}/s for {secs}s while rotating ({} completed so far): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {errors} (target p99 ≤ 2 ms; client in the same process)",
            b.completed(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    stop(&mut d);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    println!(
        "rekey benchmarks — {} — {} cores",
        Utc::now().to_rfc3339(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if !std::env::args().any(|a| a == "--one") {
        println!(
            "rekey benchmarks — {} — {} cores",
            Utc::now().to_rfc3339(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
    }
    if want("rate") {
        rate_limited().await;
    }
    if want("latency") {
        latency_bound().await;
    }
    if want("scan") {
        scan().await;
    }
    if want("startup") {
        startup().await;
    }
    if want("status") {
        status().await;
    }
    if want("idle") {
        idle().await;
    }
}
