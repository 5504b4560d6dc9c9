//! `rekey check` is the validation `rekey run` does before serving: the
//! same messages, each located, for every secret form and host problem; and
//! the commands an operator runs on a real host (`--no-secrets`,
//! `--credentials-dir`, `history` without secrets, `plan`'s exit codes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rekey::emulator::oceanbase::{self, OceanBaseEmulatorOptions};

use crate::support::{rekey_bin, write_file};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `rekey ARGS` with a clean environment plus `vars`.
fn rekey(args: &[&str], config: &Path, vars: &[(&str, &str)]) -> Output {
    Command::new(rekey_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .output()
        .expect("run rekey")
}

/// `rekey run`, which must refuse (exit 1) within 20 s: a daemon that
/// starts instead is killed and the test fails.
fn run_refused(config: &Path, vars: &[(&str, &str)]) -> String {
    let mut child = Command::new(rekey_bin())
        .args(["run", "-c"])
        .arg(config)
        .env_clear()
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert_eq!(st.code(), Some(1), "rekey run:\n{}", text(&out.stderr));
            return text(&out.stderr);
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("rekey run started with a config it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error lines (`FILE:LINE:COL: error: …`) of an output, in order.
fn errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .map(|l| {
            // run's log lines carry a level and time before the diagnostic.
            l[l.find('/').unwrap_or(0)..].to_string()
        })
        .collect()
}

/// A config whose every secret is in a broken shape, one per form: a
/// webhook sink's and a notify target's `whsec_` secret, the sealing key,
/// and one-line tokens (provider credentials, a Vault token, the admin
/// token) holding a line break or tab.
fn broken_secrets(dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    write_file(dir, "whsec-sink", "not-a-whsec\n");
    write_file(dir, "seal", "abc123\n");
    write_file(dir, "ob-ak", "AKID\tsecond-half\n");
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    write_file(&dir.join("creds"), "vault-token", "hvs.first\nhvs.second\n");
    write_file(&dir.join("creds"), "admin-token", "adm\u{1b}[31m\n");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let d = dir.display();
    let src = format!(
        r#"[daemon]
state = "{d}/state.db"
listen = "127.0.0.1:0"
admin_token = {{ credential = "admin-token" }}
seal_key = {{ file = "{d}/seal" }}

[providers.ob]
kind = "oceanbase"
org_id = "org-1"
project_id = "proj-1"
access_key_id = {{ file = "{d}/ob-ak" }}
access_key_secret = {{ env = "OB_SK" }}

[providers.gw]
kind = "tencent-apigateway"
region = "ap-guangzhou"
secret_id = {{ env = "TC_ID" }}
secret_key = {{ env = "TC_KEY" }}

[sinks.files]
kind = "file"
path = "{d}/keys/{{lineage}}.env"

[sinks.hook]
kind = "webhook"
url = "https://deploy.internal/keys"
secret = {{ file = "{d}/whsec-sink" }}

[sinks.vault]
kind = "vault"
address = "https://vault.internal:8200"
path = "maas/{{lineage}}"
auth = {{ token = {{ credential = "vault-token" }} }}

[notify.ops]
url = "https://hooks.internal/rekey"
secret = {{ env = "OPS_WHSEC" }}

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["files", "hook", "vault"]
create = {{ action = "read" }}
"#
    );
    let vars = vec![
        ("OB_SK".to_string(), "sk".to_string()),
        ("TC_ID".to_string(), "AKID\r\n2".to_string()),
        ("TC_KEY".to_string(), "tc-key".to_string()),
        ("OPS_WHSEC".to_string(), "whsec_!!!".to_string()),
        (
            "CREDENTIALS_DIRECTORY".to_string(),
            dir.join("creds").display().to_string(),
        ),
    ];
    (write_file(dir, "rekey.toml", &src), vars)
}

#[test]
fn every_broken_secret_form_gets_the_same_located_message_from_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vars) = broken_secrets(dir.path());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let check = rekey(&["check"], &config, &vars);
    assert_eq!(check.status.code(), Some(1));
    let check_errors = errors(&text(&check.stderr));
    let f = config.display();
    let expected = [
        format!(
            "{f}:4:15: error: `admin_token` (credential:admin-token) is not usable: the value holds a control character"
        ),
        format!(
            "{f}:5:12: error: `seal_key` (file:{}/seal) is not usable: seal key must be 64 hex characters (32 bytes)",
            dir.path().display()
        ),
        format!(
            "{f}:11:17: error: `access_key_id` (file:{}/ob-ak) is not usable: the value holds a control character",
            dir.path().display()
        ),
        format!(
            "{f}:17:13: error: `secret_id` (env:TC_ID) is not usable: the value holds a control character"
        ),
        format!(
            "{f}:27:10: error: `secret` (file:{}/whsec-sink) is not usable: webhook secret is not valid base64 after the whsec_ prefix",
            dir.path().display()
        ),
        format!(
            "{f}:33:18: error: `auth.token` (credential:vault-token) is not usable: the value holds a control character"
        ),
        format!(
            "{f}:37:10: error: `secret` (env:OPS_WHSEC) is not usable: webhook secret is not valid base64 after the whsec_ prefix"
        ),
    ];
    assert_eq!(check_errors.len(), expected.len(), "{check_errors:#?}");
    for (got, want) in check_errors.iter().zip(&expected) {
        assert!(
            got.starts_with(want.as_str()),
            "\n got: {got}\nwant: {want}…"
        );
    }
    // `run` refuses with exactly the same lines, before creating anything.
    let run_errors = errors(&run_refused(&config, &vars));
    assert_eq!(run_errors, check_errors);
    assert!(!dir.path().join("state.db").exists(), "run wrote state");
    // No secret value is repeated.
    let all = format!("{}{}", text(&check.stdout), text(&check.stderr));
    for secret in [
        "not-a-whsec",
        "abc123",
        "second-half",
        "hvs.first",
        "whsec_!!!",
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
}

#[test]
fn a_missing_state_or_sink_directory_is_reported_by_check_and_run_creates_neither() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = write_file(
        dir.path(),
        "rekey.toml",
        &format!(
            r#"[daemon]
state = "{d}/nonexistent/dir/state.db"

[providers.ob]
kind = "oceanbase"
org_id = "o"
project_id = "p"
access_key_id = {{ env = "A" }}
access_key_secret = {{ env = "B" }}

[sinks.files]
kind = "file"
path = "{d}/missing/{{policy}}/{{lineage}}.env"

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["files"]
create = {{ action = "read" }}
"#
        ),
    );
    let vars = [("A", "a"), ("B", "b")];
    let check = rekey(&["check"], &config, &vars);
    let stderr = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    let f = config.display();
    assert_eq!(
        errors(&stderr),
        [format!(
            "{f}:2:9: error: state directory {d}/nonexistent/dir does not exist"
        )]
    );
    // The sink's directory: reported (its publishes fail until it exists),
    // not a refusal to start.
    assert!(
        stderr.contains(&format!(
            "{f}:13:8: warning: directory {d}/missing of [sinks.files] does not exist (the part before the first placeholder; directories below it are created as needed)"
        )),
        "{stderr}"
    );
    assert_eq!(errors(&run_refused(&config, &vars)), errors(&stderr));
    assert!(
        !dir.path().join("nonexistent").exists(),
        "run created the state directory"
    );
    assert!(
        !dir.path().join("missing").exists(),
        "run created the sink directory"
    );
}

#[test]
fn run_refuses_a_taken_status_port_at_the_place_of_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "rekey.toml",
        &format!(
            "[daemon]\nstate = \"{}/state.db\"\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    );
    let stderr = run_refused(&config, &[]);
    let errs = errors(&stderr);
    assert_eq!(errs.len(), 1, "{stderr}");
    assert!(
        errs[0].starts_with(&format!(
            "{}:3:10: error: status endpoint 127.0.0.1:{port}",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn env_names_naming_a_field_the_provider_does_not_have_is_refused_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = write_file(
        dir.path(),
        "rekey.toml",
        &format!(
            r#"[daemon]
state = "{d}/state.db"

[providers.ob]
kind = "oceanbase"
org_id = "o"
project_id = "p"
access_key_id = {{ env = "A" }}
access_key_secret = {{ env = "B" }}

[sinks.files]
kind = "file"
path = "{d}/{{lineage}}.env"
env_names = {{ apikey = "MAAS_API_KEY" }}

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["files"]
create = {{ action = "read" }}
"#
        ),
    );
    let out = rekey(&["check"], &config, &[("A", "a"), ("B", "b")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:14:13: error: `env_names` of [sinks.files] names field `apikey`, which oceanbase keys (provider \"ob\", policy `maas`) do not have\n  hint: did you mean `api_key`?",
            config.display()
        )),
        "{stderr}"
    );
}

/// A config as recommended: every secret a `{ credential = … }`, which
/// resolves only inside the service (or with --credentials-dir).
fn credential_config(dir: &Path) -> PathBuf {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    write_file(
        dir,
        "rekey.toml",
        &format!(
            r#"[daemon]
state = "{d}/state.db"
admin_token = {{ credential = "admin-token" }}

[providers.ob]
kind = "oceanbase"
org_id = "o"
project_id = "p"
access_key_id = {{ credential = "ob-ak" }}
access_key_secret = {{ credential = "ob-sk" }}

[sinks.files]
kind = "file"
path = "{d}/keys/{{lineage}}.env"

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["files"]
create = {{ action = "read" }}
"#
        ),
    )
}

#[test]
fn check_no_secrets_and_history_work_from_a_root_shell_without_the_service_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = credential_config(dir.path());
    let full = rekey(&["check"], &config, &[]);
    assert_eq!(full.status.code(), Some(1));
    assert_eq!(
        errors(&text(&full.stderr)).len(),
        3,
        "every credential is unresolved: {}",
        text(&full.stderr)
    );
    let no_secrets = rekey(&["check", "--no-secrets"], &config, &[]);
    assert_eq!(
        no_secrets.status.code(),
        Some(0),
        "{}",
        text(&no_secrets.stderr)
    );
    assert!(text(&no_secrets.stdout).contains("secret values not checked"));

    // --credentials-dir stands in for $CREDENTIALS_DIRECTORY.
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    for (name, value) in [("admin-token", "t0ken"), ("ob-ak", "ak"), ("ob-sk", "sk")] {
        write_file(&creds, name, value);
    }
    let with_dir = Command::new(rekey_bin())
        .arg("--credentials-dir")
        .arg(&creds)
        .args(["check", "-c"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(
        with_dir.status.code(),
        Some(0),
        "{}",
        text(&with_dir.stderr)
    );

    // history opens the state and resolves nothing else.
    drop(rekey::state::Store::open(&dir.path().join("state.db")).unwrap());
    let history = rekey(&["history"], &config, &[]);
    assert_eq!(history.status.code(), Some(0), "{}", text(&history.stderr));
    assert_eq!(text(&history.stdout).trim(), "no rotations");
}

#[test]
fn rekey_config_names_the_config_when_no_c_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = credential_config(dir.path());
    let out = Command::new(rekey_bin())
        .args(["check", "--no-secrets"])
        .env_clear()
        .env("REKEY_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{}: ok", config.display())));
}

/// `plan` exits like `terraform plan -detailed-exitcode`: 0 nothing to do,
/// 2 something due or misconfigured, 1 an error.
/// A config in `dir` for `rekey plan` against the OceanBase emulator at
/// `endpoint`: one policy `maas` over `app-*` (lead 7d, plus
/// `policy_extra`) with a file sink at `dir/keys/<sink_path>`.
fn plan_config(dir: &Path, sink_path: &str, endpoint: &str, policy_extra: &str) -> PathBuf {
    let d = dir.display();
    write_file(dir, "ak", oceanbase::DEFAULT_ACCESS_KEY_ID);
    write_file(dir, "sk", oceanbase::DEFAULT_ACCESS_KEY_SECRET);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    write_file(
        dir,
        "rekey.toml",
        &format!(
            r#"[daemon]
state = "{d}/state.db"

[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = {{ file = "{d}/ak" }}
access_key_secret = {{ file = "{d}/sk" }}
timeout = "3s"

[sinks.files]
kind = "file"
path = "{d}/keys/{sink_path}"

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["files"]
create = {{ action = "read" }}
{policy_extra}
"#,
            org = oceanbase::DEFAULT_ORG_ID,
            project = oceanbase::DEFAULT_PROJECT_ID,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_exit_code_says_whether_anything_is_due_or_misconfigured() {
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |sink_path: &str, endpoint: &str| plan_config(dir.path(), sink_path, endpoint, "");
    let now = chrono::Utc::now();
    let days = chrono::Duration::days;
    emu.insert_key("app-fresh", now - days(1), Some(now + days(29)));
    let plan = |cfg: &Path, extra: &[&str]| {
        let mut args = vec!["plan"];
        args.extend_from_slice(extra);
        rekey(&args, cfg, &[])
    };
    let cfg = config("{lineage}.env", &emu.endpoint());
    let out = plan(&cfg, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing due:\n{}",
        text(&out.stdout)
    );

    emu.insert_key("app-old", now - days(28), Some(now + days(2)));
    let out = plan(&cfg, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "app-old is due:\n{stdout}");
    assert!(stdout.contains("lineage app-old: ROTATE NOW"), "{stdout}");
    assert!(
        stdout.contains("expires in 2d") || stdout.contains("expires in 1d 23h"),
        "{stdout}"
    );
    let due_only = text(&plan(&cfg, &["--due"]).stdout);
    assert!(
        due_only.contains("app-old") && !due_only.contains("lineage app-fresh"),
        "{due_only}"
    );
    let summary = text(&plan(&cfg, &["--summary"]).stdout);
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(summary.contains("2 lineage(s), 1 due"), "{summary}");

    let fixed = config("one.env", &emu.endpoint());
    let out = plan(&fixed, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "misconfigured:\n{}",
        text(&out.stdout)
    );
    let check = rekey(&["check"], &fixed, &[]);
    assert!(
        text(&check.stderr).contains("writes to the fixed target"),
        "check says so statically: {}",
        text(&check.stderr)
    );

    let unreachable = config("{lineage}.env", "http://127.0.0.1:9");
    let out = plan(&unreachable, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error:\n{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_warns_when_the_grace_period_outlives_a_keys_time_before_its_lead() {
    let emu = oceanbase::start(
        OceanBaseEmulatorOptions::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = plan_config(
        dir.path(),
        "{lineage}.env",
        &emu.endpoint(),
        "grace_period = \"24h\"",
    );
    let now = chrono::Utc::now();
    let hours = chrono::Duration::hours;
    // 30 days of life: a day of grace is nothing to it.
    emu.insert_key("app-long", now - hours(24), Some(now + hours(29 * 24)));
    let out = rekey(&["plan"], &cfg, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("outlives"), "{stdout}");
    // A day of life: its lead is clamped to a third (8 h), so the 24 h
    // grace outlives the 16 h before its replacement is due. `check`
    // cannot know key lifetimes; `plan` sees them and warns.
    emu.insert_key("app-short", now - hours(1), Some(now + hours(23)));
    let out = rekey(&["plan"], &cfg, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "fresh keys only:\n{stdout}");
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.contains("outlives")).collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("grace_period (1day) outlives this key's time before its lead (16h)"),
        "{stdout}"
    );
}
