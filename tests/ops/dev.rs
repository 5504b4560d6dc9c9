//! `rekey dev`: the printed `rekey rotate … --token-file …` line works as
//! printed, a second `rekey dev` in the same directory refuses before
//! writing anything, and a taken default port is named.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::rekey_bin;

#[test]
fn rekey_dev_prints_a_working_rotate_line_and_a_second_one_touches_nothing() {
    // Hold the default port, so the dev daemon must say it took another.
    let _held = std::net::TcpListener::bind("127.0.0.1:9477");
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join("rekey-dev");
    let mut first = Command::new(rekey_bin())
        .args(["dev", "--dir"])
        .arg(&dev_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = first.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let rotate_line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no rotate line from rekey dev:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if let Some(i) = line.find("rekey rotate ") {
            break line[i..].to_string();
        }
    };
    let printed = seen.join("\n");
    assert!(
        printed
            .contains("port 9477 is taken (another rekey?); this one listens on http://127.0.0.1:"),
        "{printed}"
    );
    let token_file = dev_dir.join("secrets/admin-token");
    assert!(rotate_line.ends_with(&format!("--token-file {}", token_file.display())));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The line, as printed.
    let args: Vec<&str> = rotate_line.split_whitespace().skip(1).collect();
    // The daemon knows a lineage once its first check listed the keys (a
    // check runs at start, then every 5 s): until then the answer is 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = Command::new(rekey_bin()).args(&args).output().unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rotation accepted for policy dev lineage app-web"),
        "{stdout}"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!stdout.contains(token.trim()));

    // A second dev in the same directory: refused, nothing rewritten.
    let config_before = std::fs::read(dev_dir.join("rekey.toml")).unwrap();
    let second = Command::new(rekey_bin())
        .args(["dev", "--dir"])
        .arg(&dev_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another `rekey dev` is running in"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dev_dir.join("rekey.toml")).unwrap(),
        config_before
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);

    unsafe {
        libc::kill(first.id() as i32, libc::SIGINT);
    }
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
