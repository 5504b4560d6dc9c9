//! The official Standard Webhooks Python library (`standardwebhooks`), as an
//! independent verifier of our signatures. CI sets `$REKEY_TEST_PYTHON` to
//! a venv python that has it (`.ci/run`); a local run without it skips, a
//! CI run without it fails.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;

/// The python to use, or `None` (with a note) when running locally without
/// one. Panics in CI (`CI=true`) when it is missing.
pub fn standardwebhooks_python() -> Option<PathBuf> {
    match std::env::var_os("REKEY_TEST_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let how = "set REKEY_TEST_PYTHON to a python with the official library: \
                       python3 -m venv /tmp/venv-bao && /tmp/venv-bao/bin/pip install standardwebhooks==1.1.0 \
                       && export REKEY_TEST_PYTHON=/tmp/venv-bao/bin/python";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("REKEY_TEST_PYTHON is not set in CI; {how}");
            }
            eprintln!("SKIPPED (local run): official standardwebhooks check; {how}");
            None
        }
    }
}

const VERIFY_SCRIPT: &str = r#"
import base64, json, sys
from standardwebhooks import Webhook, WebhookVerificationError
req = json.load(sys.stdin)
try:
    Webhook(req["secret"]).verify(base64.b64decode(req["body"]), req["headers"])
except WebhookVerificationError as e:
    print("REJECTED: %s" % e)
    sys.exit(3)
print("VERIFIED")
"#;

/// Verify one request with `standardwebhooks.Webhook(secret).verify`.
/// `Ok(())` when the library accepts it, `Err(output)` when it rejects it.
pub fn verify_with_official_library(
    python: &PathBuf,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let input = serde_json::json!({
        "secret": secret,
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let mut child = Command::new(python)
        .arg("-c")
        .arg(VERIFY_SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) if stdout.contains("VERIFIED") => Ok(()),
        Some(3) => Err(stdout),
        _ => panic!(
            "the standardwebhooks check did not run (is standardwebhooks installed for {}?): {stdout}{stderr}",
            python.display()
        ),
    }
}
