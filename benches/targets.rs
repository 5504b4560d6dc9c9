//! Benchmarks for the targets of DESIGN §9, run on demand:
//!
//! ```sh
//! cargo bench --bench targets               # every scenario
//! cargo bench --bench targets -- latency    # one (rate, latency, idle, scale, status,
//!                                           #      unknown, scan, startup)
//! REKEY_BENCH_SMALL=1 cargo test --bench targets -- idle   # smoke run: tiny sizes, dev build
//! ```
//!
//! Each scenario prints its measurement next to its target; results are
//! recorded by hand in `benches/RESULTS.md` with the date and machine.
//! Nothing here is asserted by the test suite: speed is measured, not tested.
//! With `REKEY_BENCH_SMALL=1` every scenario runs at a fraction of its size
//! (to check the bench code itself; its figures mean nothing).
//! `REKEY_BENCH_BIN=PATH` runs another build of the daemon;
//! `REKEY_BENCH_WRAP="heaptrack -o /tmp/x"` runs it under a profiler;
//! `REKEY_BENCH_SCALE_PERIOD=60` gives the scale scenario's checks a
//! one-minute period (a round under heaptrack takes longer than 30 s).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::oceanbase::{self, OceanBaseEmulatorOptions};
use rekey::state::{RotationState, Store};

/// Smoke-run sizes (`REKEY_BENCH_SMALL=1`)?
fn small() -> bool {
    std::env::var_os("REKEY_BENCH_SMALL").is_some()
}

/// `full`, or `tiny` in a smoke run.
fn size(full: usize, tiny: usize) -> usize {
    if small() { tiny } else { full }
}

/// Pin process `pid` (0 = this one) to CPU `cpu`.
fn pin(pid: i32, cpu: usize) -> bool {
    // CPUs online, not `available_parallelism` (which is this thread's
    // affinity: 1 once the load generator is pinned).
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if n < 2 {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Every thread of this process onto `cpu` (sched_setaffinity applies to
/// one thread; tokio's workers are already running). A thread that exited
/// meanwhile is no failure.
fn pin_all_threads(cpu: usize) -> bool {
    pin_threads_of("self", cpu)
}

/// Every thread of process `pid` (`"self"` or a number) onto `cpu`; threads
/// it starts later inherit their creator's affinity.
fn pin_threads_of(pid: &str, cpu: usize) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut pinned = 0;
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
            && pin(tid, cpu)
        {
            pinned += 1;
        }
    }
    pinned > 0
}

/// An emulator's admin API answer (`/__emulator/stats` or `requests`).
async fn admin(endpoint: &str, what: &str) -> serde_json::Value {
    reqwest::get(format!("{endpoint}/__emulator/{what}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Walks (answered first list pages) and answered list pages in an
/// emulator's request log.
async fn walks_and_pages(endpoint: &str) -> (usize, usize) {
    let log = admin(endpoint, "requests").await;
    let log = log.as_array().unwrap();
    let list_ok = |r: &&serde_json::Value| r["operation"] == "list" && r["status"] == 200;
    let pages = log.iter().filter(list_ok).count();
    let walks = log
        .iter()
        .filter(list_ok)
        .filter(|r| r["page"] == 1)
        .count();
    (walks, pages)
}

/// `Rss`, `Anonymous` and file-backed (`Rss` − `Anonymous`) kB of `pid`.
fn rss_breakdown(pid: u32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rss = field("Rss:");
    let anon = field("Anonymous:");
    (rss, anon, rss.saturating_sub(anon))
}

fn bin() -> PathBuf {
    // REKEY_BENCH_BIN=/path/to/rekey: another build of the daemon (a
    // before/after comparison from one bench binary).
    if let Some(p) = std::env::var_os("REKEY_BENCH_BIN") {
        return PathBuf::from(p);
    }
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

    /// Start the daemon. `REKEY_BENCH_WRAP="heaptrack -o /tmp/x"` runs it
    /// under that command (words split on whitespace); the figures read
    /// from the child's `/proc` are then the wrapper's, not the daemon's.
    fn spawn(&self, cfg: &Path, envs: &[(&str, String)]) -> Child {
        let wrap = std::env::var("REKEY_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
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

/// N due lineages against a provider limited to R requests/s: target ≤
/// 1.25 × (minimum necessary calls ÷ R), the minimum being creates +
/// deletes + the pages of one walk. Both ratios are reported: against the
/// calls made and against that minimum.
async fn rate_limited() {
    let (n, r) = (size(100, 10), 20.0);
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
        let t = wait_completed(&b, n, t0, Duration::from_secs(900));
        (t, b)
    })
    .await
    .unwrap();
    stop(&mut d);
    let stats = emu.stats();
    let calls = provider_calls(&emu);
    let log = emu.request_log();
    let walks = log.iter().filter(|q| q.starts_walk()).count();
    let pages = log
        .iter()
        .filter(|q| q.operation == oceanbase::Operation::List && q.status == 200)
        .count();
    // One walk of the account as it stood: n keys, 100 per page.
    let minimum = (stats.create.ok + stats.delete.ok) as usize + n.div_ceil(100);
    let span = rotation_span(&b);
    let made = span.as_secs_f64() / (calls as f64 / r);
    let floor = span.as_secs_f64() / (minimum as f64 / r);
    println!(
        "rate-limited: {n} lineages, R={r}/s: {calls} provider calls ({} creates, {} deletes, {pages} list pages in {walks} walks, {} Digest challenges, {} answered 429); minimum {minimum}; first start → last finish {:.2}s (process start to last finish {:.2}s); ratio {made:.3} against the calls made, {floor:.3} against the minimum (target ≤ 1.25)",
        stats.create.requests,
        stats.delete.requests,
        stats.challenged(),
        stats.list.rate_limited + stats.create.rate_limited + stats.delete.rate_limited,
        span.as_secs_f64(),
        wall.as_secs_f64(),
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
    // Calls made per rotation: everything but the check's listing and the
    // Digest challenge(s), which precede the rotations. Walks are shared,
    // so this is less than a rotation's critical path, which is still
    // create → id lookup walk → pre-delete walk → delete: 4 calls of
    // latency (one page per walk here), shared or not.
    let per_rotation =
        (stats.requests() - stats.list.requests.min(1) - stats.challenged()) as f64 / n as f64;
    let critical = 4.0;
    let made = per_rotation * n as f64 * lat as f64 / 1000.0 / conc as f64;
    let ideal = critical * n as f64 * lat as f64 / 1000.0 / conc as f64;
    let span = rotation_span(&b);
    println!(
        "latency-bound: {n} lineages, {lat} ms/call, concurrency {conc}, {:.2} calls made/rotation: first start → last finish {:.2}s (process start to last finish {:.2}s); critical-path ideal ({critical} calls) {:.2}s, ratio {:.3} (target ≤ 1.25); against the calls made {:.2}s, ratio {:.3}",
        per_rotation,
        span.as_secs_f64(),
        wall.as_secs_f64(),
        ideal,
        span.as_secs_f64() / ideal,
        made,
        span.as_secs_f64() / made
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

/// 100 policies over 10,000 keys on one account, checked every 10 s,
/// nothing due: list requests per window = the pages of one walk; CPU ≤
/// 0.5 % of a core over a minute including the checks; peak RSS ≤ 15 MiB.
async fn idle() {
    let (keys, policies_n, window) = (size(10_000, 1_000), size(100, 10), size(60, 20) as u64);
    let emu_proc = EmulatorProcess::start(&["--keys", &keys.to_string(), "--lifetime", "30d"]);
    let b = Bench::new();
    let mut policies = String::new();
    // Seeded names are app-00000 … : policies of keys/policies_n keys each.
    let per = keys / policies_n;
    for i in 0..policies_n {
        let glob = if per == 100 {
            format!("app-{i:03}??*")
        } else {
            format!("app-{:04}?*", i)
        };
        policies.push_str(&policy(&format!("p{i:03}"), &glob, "*/10 * * * * *", "1h"));
    }
    let cfg = b.config(&emu_proc.endpoint, "", "", &policies);
    let mut d = b.spawn(&cfg, &[]);
    let pid = d.id();
    // Start-up (the config check of 100 globs) and the first checks.
    let t_start = Instant::now();
    loop {
        let checked = Store::open_read_only(&b.path("state.db"))
            .ok()
            .and_then(|s| s.policy_states().ok())
            .map(|p| p.iter().filter(|p| p.last_check_at.is_some()).count())
            .unwrap_or(0);
        if checked >= policies_n {
            break;
        }
        if let Some(st) = d.try_wait().unwrap() {
            panic!("the daemon exited ({st})");
        }
        assert!(
            t_start.elapsed() < Duration::from_secs(300),
            "first checks not done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_after = t_start.elapsed();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let settled_rss = proc_status(pid, "VmRSS:");
    let (w0, p0) = walks_and_pages(&emu_proc.endpoint).await;
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(window)).await;
    let t1 = cpu_ticks(pid);
    let (w1, p1) = walks_and_pages(&emu_proc.endpoint).await;
    let hwm = proc_status(pid, "VmHWM:");
    let (rss, anon, file) = rss_breakdown(pid);
    let binary = std::fs::metadata(bin()).map(|m| m.len()).unwrap_or(0);
    stop(&mut d);
    let hz = 100.0;
    let cpu = (t1 - t0) as f64 / hz / window as f64 * 100.0;
    let windows = window / 10;
    let pages_per_walk = keys.div_ceil(100);
    println!(
        "idle: {policies_n} policies / {keys} keys on one account, checks every 10 s: {} walks and {} list pages in {window}s ({windows} windows; one walk = {pages_per_walk} pages; target: {pages_per_walk} pages per window); CPU {cpu:.3} % of a core over {window}s including the checks (target ≤ 0.5); peak RSS {:.1} MiB (target ≤ 15; {:.1} MiB after the first checks); at the end RSS {:.1} MiB = {:.1} anonymous + {:.1} file-backed (binary {:.1} MiB); first checks done {:.1}s after exec",
        w1 - w0,
        p1 - p0,
        hwm as f64 / 1024.0,
        settled_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        binary as f64 / 1048576.0,
        ready_after.as_secs_f64(),
    );
}

/// 1,000 policies over 100,000 keys on 10 accounts, nothing due: each
/// account walked once per window; peak RSS ≤ 64 MiB; a full round of
/// checks within 1.1 × (pages per account × page latency), accounts walked
/// concurrently.
async fn scale() {
    let (accounts, keys, per_account) = (size(10, 2), size(10_000, 500), size(100, 5));
    let lat = 20u64;
    // REKEY_BENCH_SCALE_PERIOD=60: check every minute instead of every
    // 30 s (a daemon under heaptrack needs more than 30 s for a round).
    let period: i64 = match std::env::var("REKEY_BENCH_SCALE_PERIOD").as_deref() {
        Ok("60") => 60,
        _ => 30,
    };
    let schedule = if period == 60 {
        "0 * * * * *".to_string()
    } else {
        format!("*/{period} * * * * *")
    };
    let emus: Vec<EmulatorProcess> = (0..accounts)
        .map(|_| {
            EmulatorProcess::start(&[
                "--keys",
                &keys.to_string(),
                "--lifetime",
                "30d",
                "--latency",
                &format!("{lat}ms"),
            ])
        })
        .collect();
    let b = Bench::new();
    let mut body = String::new();
    for (a, emu) in emus.iter().enumerate() {
        body.push_str(&format!(
            r#"
[providers.ob{a}]
kind = "oceanbase"
endpoint = "{}"
org_id = "{}"
project_id = "{}"
access_key_id = {{ file = "{}" }}
access_key_secret = {{ file = "{}" }}
"#,
            emu.endpoint,
            oceanbase::DEFAULT_ORG_ID,
            oceanbase::DEFAULT_PROJECT_ID,
            b.path("ak").display(),
            b.path("sk").display(),
        ));
    }
    let digits = if keys / per_account >= 100 { 3 } else { 4 };
    for a in 0..accounts {
        for i in 0..per_account {
            let glob = if digits == 3 {
                format!("app-{i:03}??*")
            } else {
                format!("app-{i:04}?*")
            };
            body.push_str(
                &policy(&format!("a{a}p{i:03}"), &glob, &schedule, "1h")
                    .replace("provider = \"ob\"", &format!("provider = \"ob{a}\"")),
            );
        }
    }
    let text = format!(
        r#"
[daemon]
state = "{}"
listen = "127.0.0.1:0"

[sinks.files]
kind = "file"
path = "{}/{{policy}}-{{lineage}}.env"
{body}
"#,
        b.path("state.db").display(),
        b.path("keys").display(),
    );
    let cfg = b.path("rekey.toml");
    std::fs::write(&cfg, text).unwrap();
    let total = accounts * per_account;
    let mut d = b.spawn(&cfg, &[]);
    let pid = d.id();
    let all_checked_since = |since: Option<chrono::DateTime<Utc>>| {
        Store::open_read_only(&b.path("state.db"))
            .ok()
            .and_then(|s| s.policy_states().ok())
            .map(|p| {
                p.iter()
                    .filter(|p| {
                        p.last_check_at
                            .is_some_and(|t| since.is_none_or(|s| t >= s))
                    })
                    .count()
            })
            .unwrap_or(0)
            >= total
    };
    let t_start = Instant::now();
    while !all_checked_since(None) {
        if let Some(st) = d.try_wait().unwrap() {
            panic!("the daemon exited ({st})");
        }
        assert!(
            t_start.elapsed() < Duration::from_secs(600),
            "first round not done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_after = t_start.elapsed();
    // The next window: wall-clock seconds divisible by the period.
    let now = Utc::now();
    let next = now.timestamp() - now.timestamp().rem_euclid(period) + period;
    let window = chrono::DateTime::from_timestamp(next, 0).unwrap();
    let before: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        for e in &emus {
            v.push(walks_and_pages(&e.endpoint).await);
        }
        v
    };
    // A round's wall time from its window's start to the last check
    // record, and the daemon's CPU time meanwhile (seconds; less sensitive
    // to other load than the wall time).
    let measure = |window: chrono::DateTime<Utc>| {
        let all_checked_since = &all_checked_since;
        async move {
            tokio::time::sleep((window - Utc::now()).to_std().unwrap_or_default()).await;
            let t_window = Instant::now();
            let c0 = cpu_ticks(pid);
            while !all_checked_since(Some(window)) {
                assert!(
                    t_window.elapsed() < Duration::from_secs(period as u64),
                    "the round did not finish within its period"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (t_window.elapsed(), (cpu_ticks(pid) - c0) as f64 / 100.0)
        }
    };
    let (round, round_cpu) = measure(window).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut walks = Vec::new();
    for (e, (w0, _)) in emus.iter().zip(&before) {
        walks.push(walks_and_pages(&e.endpoint).await.0 - w0);
    }
    // The round after (the steady state: the second round after start-up
    // is the first whose checks find an unchanged ledger).
    let (next_round, next_cpu) = measure(window + chrono::Duration::seconds(period)).await;
    let hwm = proc_status(pid, "VmHWM:");
    let (rss, anon, file) = rss_breakdown(pid);
    stop(&mut d);
    let pages = keys.div_ceil(100);
    let ideal = pages as f64 * lat as f64 / 1000.0;
    println!(
        "scale: {total} policies over {} keys on {accounts} accounts ({pages} pages of {lat} ms each per account): walks per account in one window {walks:?} (target 1 each); full round of checks {:.2}s vs {:.2}s = pages × latency (ratio {:.2}, target ≤ 1.1; measured from the window's start to the last policy's check record, polled every 25 ms; daemon CPU {round_cpu:.2}s); the round after {:.2}s (ratio {:.2}; daemon CPU {next_cpu:.2}s); peak RSS {:.1} MiB (target ≤ 64); at the end {:.1} MiB = {:.1} anonymous + {:.1} file-backed; first round done {:.1}s after exec",
        keys * accounts,
        round.as_secs_f64(),
        ideal,
        round.as_secs_f64() / ideal,
        next_round.as_secs_f64(),
        next_round.as_secs_f64() / ideal,
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        ready_after.as_secs_f64(),
    );
}

/// 150 due keys against an account limited to 10 requests/s, no
/// `rate_limit` configured: every rotation completes, none fails, within
/// 1.5 × (minimum necessary calls ÷ 10/s), with 429s under 10 % of requests.
async fn unknown_limit() {
    let (n, r) = (size(150, 15), 10.0);
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions {
            rate_limit: Some(r),
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
        "max_concurrent_rotations = 8",
        &policy("p", "app-*", "0 0 0 1 1 *", "0s"),
    );
    emu.reset_stats();
    let t0 = Instant::now();
    let mut d = b.spawn(&cfg, &[]);
    let (done, b) = tokio::task::spawn_blocking(move || {
        // Never panics: report what finished within the limit.
        let limit = Duration::from_secs(size(600, 120) as u64);
        loop {
            let c = b.completed();
            if c >= n || t0.elapsed() > limit {
                return (c, b);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    stop(&mut d);
    let stats = emu.stats();
    let history = Store::open_read_only(&b.path("state.db"))
        .unwrap()
        .history(None, 100_000)
        .unwrap();
    let failed = history
        .iter()
        .filter(|r| r.state == RotationState::Failed)
        .count();
    let requests = stats.requests();
    let throttled = stats.list.rate_limited + stats.create.rate_limited + stats.delete.rate_limited;
    let minimum = (stats.create.ok + stats.delete.ok) as usize + n.div_ceil(100);
    let span = if done > 0 {
        rotation_span(&b)
    } else {
        Duration::ZERO
    };
    println!(
        "unknown limit: {n} due keys, emulator limited to {r}/s, no rate_limit configured: {done}/{n} rotations completed, {failed} failed; {requests} requests, {throttled} answered 429 ({:.1} %, target < 10 %); first start → last finish {:.1}s vs minimum {minimum} calls ÷ {r}/s = {:.1}s (ratio {:.2}, target ≤ 1.5)",
        throttled as f64 * 100.0 / requests.max(1) as f64,
        span.as_secs_f64(),
        minimum as f64 / r,
        span.as_secs_f64() / (minimum as f64 / r),
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
    // REKEY_BENCH_STATUS_LINEAGES=N: rotate N lineages instead (0: the
    // same load with nothing rotating, to tell the endpoint's own tail
    // from the one rotations add).
    let lineages = std::env::var("REKEY_BENCH_STATUS_LINEAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| size(200, 20));
    seed_due(&emu, "app-", lineages);
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
    // The load generator (and the emulator it hosts) on CPU 0, the daemon
    // on CPU 1, where the machine has two.
    // REKEY_BENCH_NO_PIN=1: leave both free (the daemon then has both
    // cores, the load generator too).
    let pinned = std::env::var_os("REKEY_BENCH_NO_PIN").is_none()
        && pin(d.id() as i32, 1)
        && pin_all_threads(0);
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
    // Threads the daemon started before it was pinned (the spawn races
    // its start-up) are pinned now; later ones inherit the affinity.
    let pinned = pinned && pin_threads_of(&d.id().to_string(), 1);
    eprintln!("status: daemon pid {}", d.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // REKEY_BENCH_STATUS_PATHS=/healthz,/status: other paths (`/healthz`
    // renders nothing: the floor of the server and the load generator).
    let paths: Vec<String> = std::env::var("REKEY_BENCH_STATUS_PATHS")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| vec!["/status".to_string(), "/metrics".to_string()]);
    for path in &paths {
        let rate = 1000u64;
        let secs = size(10, 2) as u64;
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
            "status: GET {path} at {rate}/s for {secs}s while {lineages} lineages rotate ({} completed so far): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {errors} (target p99 ≤ 2 ms; {})",
            b.completed(),
            p(0.5),
            p(0.99),
            p(1.0),
            if pinned {
                "load generator and emulator pinned to CPU 0, daemon to CPU 1"
            } else {
                "not pinned: load generator, emulator and daemon share both CPUs"
            }
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
    if want("scale") {
        scale().await;
    }
    if want("unknown") {
        unknown_limit().await;
    }
}
