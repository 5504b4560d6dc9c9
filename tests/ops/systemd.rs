//! `systemd/rekey.service`: `systemd-analyze verify` prints nothing, and
//! `systemd-analyze security --offline=yes` scores it 1.0 or better.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{rekey_bin, require_tool};

const UNIT: &str = include_str!("../../systemd/rekey.service");

/// The unit in a temp dir with `/usr/bin/rekey` pointed at the built binary
/// (verify insists that every Exec binary exists).
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.service");
    std::fs::write(&path, UNIT.replace("/usr/bin/rekey", rekey_bin())).unwrap();
    (dir, path)
}

#[test]
fn systemd_unit_has_the_documented_service_settings() {
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecStartPre=/usr/bin/rekey check -c /etc/rekey/rekey.toml",
        "ExecStart=/usr/bin/rekey run -c /etc/rekey/rekey.toml",
        "ExecReload=/usr/bin/rekey check -c /etc/rekey/rekey.toml\nExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=rekey",
        "ConfigurationDirectory=rekey",
        "LimitCORE=0",
        "Restart=on-failure",
        "TimeoutStopSec=45s",
    ] {
        assert!(UNIT.contains(line), "rekey.service lacks {line:?}");
    }
}

#[test]
fn systemd_analyze_verify_prints_nothing() {
    let Some(sa) = require_tool("systemd-analyze", "checks systemd/rekey.service") else {
        return;
    };
    let (dir, unit) = unit_copy();
    let out = Command::new(sa)
        .arg("verify")
        .arg(&unit)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify (exit {:?}):\n{stdout}{stderr}",
        out.status.code()
    );
}

#[test]
fn systemd_unit_exposure_is_at_most_1_0() {
    let Some(sa) = require_tool("systemd-analyze", "scores systemd/rekey.service") else {
        return;
    };
    let (dir, unit) = unit_copy();
    // --threshold is on a 0-100 scale: 10 means an overall 1.0.
    let out = Command::new(sa)
        .args(["security", "--offline=yes", "--threshold=10", "--no-pager"])
        .arg(&unit)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall score in:\n{stdout}"));
    let score: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {overall:?}"));
    assert!(score <= 1.0, "{overall}\n{stdout}");
    assert!(
        out.status.success(),
        "exit {:?} with --threshold=10:\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The file-sink recipe (systemd/recipes/file-sink/): the drop-in on the
/// shipped unit, the `.path` unit and the reload service it starts.
fn recipe_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/recipes/file-sink");
    std::fs::write(
        dir.path().join("rekey.service"),
        UNIT.replace("/usr/bin/rekey", rekey_bin()),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("rekey.service.d")).unwrap();
    for f in [
        "rekey.service.d/myapp-keys.conf",
        "myapp-keys.path",
        "myapp-keys-reload.service",
    ] {
        std::fs::copy(format!("{recipe}/{f}"), dir.path().join(f)).unwrap();
    }
    dir
}

/// `systemd-analyze` with the unit search path set to `dir`, so the
/// drop-in directory beside the unit is read as systemd would read
/// /etc/systemd/system/rekey.service.d/.
fn analyze(sa: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(sa)
        .args(args)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn file_sink_recipe_units_verify_cleanly_with_the_drop_in_applied() {
    let Some(sa) = require_tool("systemd-analyze", "checks systemd/recipes/file-sink") else {
        return;
    };
    let dir = recipe_copy();
    for unit in [
        "rekey.service",
        "myapp-keys.path",
        "myapp-keys-reload.service",
    ] {
        let out = analyze(&sa, dir.path(), &["verify", unit]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify {unit} (exit {:?}):\n{text}",
            out.status.code()
        );
    }
    // The drop-in is really applied (a typo in it would have warned above).
    let drop_in =
        std::fs::read_to_string(dir.path().join("rekey.service.d/myapp-keys.conf")).unwrap();
    assert!(drop_in.contains("ReadWritePaths=/etc/myapp/keys"));
}

#[test]
fn file_sink_recipe_keeps_the_exposure_at_most_1_0() {
    let Some(sa) = require_tool("systemd-analyze", "scores the file-sink recipe") else {
        return;
    };
    let dir = recipe_copy();
    let out = analyze(
        &sa,
        dir.path(),
        &[
            "security",
            "--offline=yes",
            "--threshold=10",
            "--no-pager",
            "rekey.service",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure with the recipe's drop-in above 1.0:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit names only files the repository (and so the package) ships, or
/// the system's own: no `EnvironmentFile=`/`LoadCredential=` pointing at a
/// file an install would have to invent.
#[test]
fn the_unit_refers_to_no_file_outside_the_package() {
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('#') || !line.contains('=') {
            continue;
        }
        for word in line.split(['=', ' ']) {
            let word = word.trim_start_matches(['-', '@']);
            if !word.starts_with('/') {
                continue;
            }
            let known = [
                "/usr/bin/rekey",
                "/bin/kill",
                "/etc/rekey/rekey.toml",
                "/run/rekey",
            ];
            assert!(
                known.contains(&word),
                "rekey.service refers to {word}, which the package does not ship: {line}"
            );
        }
    }
}

/// The users and groups of COMMON decisions exist once sysusers.d runs: a
/// system user `rekey` and the group `rekey-admin`.
#[test]
fn sysusers_creates_the_rekey_user_and_the_admin_group() {
    let Some(sysusers) = require_tool("systemd-sysusers", "checks packaging/sysusers.d") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/sysusers.d/rekey.conf"
    );
    let out = Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let rekey = passwd
        .lines()
        .find(|l| l.starts_with("rekey:"))
        .unwrap_or_else(|| panic!("no rekey user in:\n{passwd}"));
    let uid: u32 = rekey.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "rekey is a system user: {rekey}");
    assert!(
        rekey.ends_with(":/var/lib/rekey:/usr/sbin/nologin") || rekey.contains(":/var/lib/rekey:")
    );
    assert!(
        group.lines().any(|l| l.starts_with("rekey-admin:")),
        "no rekey-admin group in:\n{group}"
    );
}

/// The recipe's sink, with a provider and a policy around it, is a valid
/// config (its `env_names` names the OceanBase field).
#[test]
fn file_sink_recipe_config_validates() {
    let sink = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/recipes/file-sink/rekey.toml"
    ))
    .unwrap();
    let src = format!(
        r#"{sink}
[providers.ob]
kind = "oceanbase"
org_id = "org-1"
project_id = "proj-1"
access_key_id = {{ env = "OB_AK" }}
access_key_secret = {{ env = "OB_SK" }}

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["myapp-keys"]
create = {{ action = "read" }}
"#
    );
    let env = crate::support::hermetic_env(&[("OB_AK", "a"), ("OB_SK", "b")]);
    match rekey::config::load_str(std::path::Path::new("rekey.toml"), &src, &env) {
        Ok((cfg, warnings)) => {
            assert!(warnings.is_empty(), "{warnings:#?}");
            assert_eq!(cfg.sinks.len(), 1);
        }
        Err(diags) => panic!("{diags:#?}"),
    }
}
