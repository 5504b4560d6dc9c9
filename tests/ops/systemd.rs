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
