//! Conformance with the vendors' own clients, so the emulators cannot just
//! agree with rekey's client: the official Python SDKs
//! (`tencentcloud-sdk-python-common` + `-apigateway`, `huaweicloudsdkcore`)
//! drive the Tencent and Huawei emulators, and their signers check
//! signatures rekey produced (captured from a real call).
//!
//! CI installs the SDKs into the venv behind `$REKEY_TEST_PYTHON`
//! (`.ci/run`); a local run without them skips with the install command, a
//! CI run without them fails.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use rekey::emulator::{huawei, tencent};
use rekey::provider::{CreateRequest, Provider};
use serde_json::{Map, Value, json};

use crate::support::cloud::{
    huawei_config, literal, loopback, tencent_config, tencent_provider_with,
};
use crate::support::in_ci;

const INSTALL_HINT: &str = "the SDK conformance tests need the vendors' Python SDKs: \
    python3 -m venv /tmp/venv-sdk && /tmp/venv-sdk/bin/pip install \
    tencentcloud-sdk-python-common tencentcloud-sdk-python-apigateway huaweicloudsdkcore, \
    then export REKEY_TEST_PYTHON=/tmp/venv-sdk/bin/python";

/// The python with both SDKs, or `None` (skip, saying how) outside CI.
fn sdk_python() -> Option<PathBuf> {
    let python = std::env::var_os("REKEY_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let ok = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args([
                "-c",
                "import tencentcloud.apigateway.v20180808.apigateway_client, huaweicloudsdkcore.signer.signer",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return python;
    }
    assert!(
        !in_ci(),
        "REKEY_TEST_PYTHON does not import the vendor SDKs; {INSTALL_HINT}"
    );
    eprintln!("SKIPPED (local run): vendor SDK conformance; {INSTALL_HINT}");
    None
}

/// Run `script` with `input` as JSON on stdin; its stdout parsed as JSON.
fn run_python(python: &PathBuf, script: &str, input: &Value) -> Value {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const TENCENT_SDK_DRIVE: &str = r#"
import json, sys
from tencentcloud.common import credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.apigateway.v20180808 import apigateway_client, models
req = json.load(sys.stdin)
hp = HttpProfile(protocol="http", endpoint=req["endpoint"])
c = apigateway_client.ApigatewayClient(
    credential.Credential(req["secret_id"], req["secret_key"]), req["region"],
    ClientProfile(httpProfile=hp))
def call(name, params):
    m = getattr(models, name + "Request")()
    m.from_json_string(json.dumps(params))
    return json.loads(getattr(c, name)(m).to_json_string())
out = {}
out["create"] = call("CreateApiKey", {"SecretName": "sdk-made"})
key = out["create"]["Result"]["AccessKeyId"]
out["list"] = call("DescribeApiKeysStatus", {"Limit": 100, "Offset": 0})
out["bind"] = call("BindSecretIds", {"UsagePlanId": req["plan"], "AccessKeyIds": [key]})
try:
    call("BindSecretIds", {"UsagePlanId": req["plan"], "AccessKeyIds": [key]})
    out["rebind"] = "accepted"
except TencentCloudSDKException as e:
    out["rebind"] = e.get_code()
out["plan_keys"] = call("DescribeUsagePlanSecretIds", {"UsagePlanId": req["plan"]})
out["unbind"] = call("UnBindSecretIds", {"UsagePlanId": req["plan"], "AccessKeyIds": [key]})
out["disable"] = call("DisableApiKey", {"AccessKeyId": key})
out["delete"] = call("DeleteApiKey", {"AccessKeyId": key})
try:
    bad = apigateway_client.ApigatewayClient(
        credential.Credential(req["secret_id"], req["secret_key"]), "ap-nowhere",
        ClientProfile(httpProfile=hp))
    m = models.DescribeApiKeysStatusRequest()
    bad.DescribeApiKeysStatus(m)
    out["wrong_region"] = "accepted"
except TencentCloudSDKException as e:
    out["wrong_region"] = e.get_code()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_tencent_sdk_drives_the_emulator() {
    let Some(python) = sdk_python() else { return };
    let emu = tencent::start(
        tencent::Options {
            seed: Some(3),
            usage_plans: vec!["usagePlan-sdk".into()],
            ..tencent::Options::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let o = emu.options().clone();
    let input = json!({
        "endpoint": emu.addr().to_string(),
        "secret_id": o.secret_id,
        "secret_key": o.secret_key.expose(),
        "region": o.region,
        "plan": "usagePlan-sdk",
    });
    let out = tokio::task::spawn_blocking(move || run_python(&python, TENCENT_SDK_DRIVE, &input))
        .await
        .unwrap();
    let key = out["create"]["Result"]["AccessKeyId"].as_str().unwrap();
    assert!(key.starts_with("AKID"), "{out}");
    assert!(
        out["list"]["Result"]["ApiKeySet"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["AccessKeyId"] == key),
        "{out}"
    );
    assert_eq!(out["bind"]["Result"], true, "{out}");
    assert_eq!(out["rebind"], "UnsupportedOperation.AlreadyBindUsagePlan");
    assert_eq!(out["plan_keys"]["Result"]["TotalCount"], 1, "{out}");
    assert_eq!(out["delete"]["Result"], true, "{out}");
    assert_eq!(out["wrong_region"], "InvalidParameterValue.InvalidRegion");
    assert!(emu.keys().is_empty());
    // Every SDK request passed the emulator's own signature check.
    let stats = emu.stats();
    assert_eq!(
        stats.values().map(|s| s.auth_failures).sum::<u64>(),
        0,
        "{stats:?}"
    );
    emu.shutdown().await;
}

const HUAWEI_SDK_DRIVE: &str = r#"
import io, json, sys, zipfile
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
req = json.load(sys.stdin)
signer = Signer(BasicCredentials(req["ak"], req["sk"], req["project"]))
base = "/v1/%s/node-provider/credentials" % req["project"]
def send(method, path, query=None, body=None):
    headers = {"X-Project-Id": req["project"]}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body)
    r = SdkRequest(method=method, schema="http", host=req["host"], resource_path=path,
                   query_params=list(query or []), header_params=headers, body=body or "")
    r = signer.sign(r)
    url = "http://%s%s" % (req["host"], r.uri)
    return requests.request(method, url, headers=r.header_params, data=r.body)
out = {"signed_headers": []}
resp = send("POST", base, body={"description": "sdk-made"})
out["create_status"] = resp.status_code
z = zipfile.ZipFile(io.BytesIO(resp.content))
out["create_names"] = z.namelist()
resp = send("GET", base, query=[("limit", 100), ("offset", 0)])
out["list_status"] = resp.status_code
creds = resp.json()["credentials"]
made = [c for c in creds if c["description"] == "sdk-made"]
out["listed"] = len(made)
resp = send("DELETE", base + "/" + made[0]["id"])
out["delete_status"] = resp.status_code
resp = send("DELETE", base + "/" + made[0]["id"])
out["delete_again_status"] = resp.status_code
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_huawei_sdk_signer_drives_the_emulator_with_aksk() {
    let Some(python) = sdk_python() else { return };
    let emu = huawei::start(
        huawei::Options {
            seed: Some(5),
            ..huawei::Options::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let o = emu.options().clone();
    let input = json!({
        "host": emu.addr().to_string(),
        "ak": o.access_key,
        "sk": o.secret_key.expose(),
        "project": o.project_id,
    });
    let out = tokio::task::spawn_blocking(move || run_python(&python, HUAWEI_SDK_DRIVE, &input))
        .await
        .unwrap();
    assert_eq!(out["create_status"], 200, "{out}");
    assert_eq!(out["create_names"], json!(["credential.csv"]), "{out}");
    assert_eq!(out["list_status"], 200, "{out}");
    assert_eq!(out["listed"], 1, "{out}");
    assert_eq!(out["delete_status"], 200, "{out}");
    // Documented: no 404 for an unknown id.
    assert_eq!(out["delete_again_status"], 400, "{out}");
    let stats = emu.stats();
    assert_eq!(
        stats.values().map(|s| s.auth_failures).sum::<u64>(),
        0,
        "{stats:?}"
    );
    emu.shutdown().await;
}

/// One request as a capture server received it.
#[derive(Debug, Clone)]
struct Captured {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A loopback server that records every request and answers `answer`.
async fn capture_server(
    answer: fn(&Uri) -> axum::response::Response,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<Captured>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: Arc<Mutex<Vec<Captured>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(Captured {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    query: uri.query().unwrap_or("").to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: body.to_vec(),
                });
                answer(&uri)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen, task)
}

fn captured_json(c: &Captured) -> Value {
    use base64::Engine as _;
    json!({
        "method": c.method,
        "path": c.path,
        "query": c.query,
        "headers": c.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "body": base64::engine::general_purpose::STANDARD.encode(&c.body),
    })
}

const TENCENT_SDK_VERIFY: &str = r#"
import base64, hashlib, json, sys
from tencentcloud.common.sign import Sign
req = json.load(sys.stdin)
out = []
for c in req["captured"]:
    h = {}
    for k, v in c["headers"]:
        h[k.lower()] = v
    auth = h["authorization"]
    cred = auth.split("Credential=")[1].split(",")[0]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    sig = auth.split("Signature=")[1].strip()
    _, date, service, _ = cred.split("/")
    body = base64.b64decode(c["body"])
    canonical_headers = "".join("%s:%s\n" % (n, h[n].strip().lower()) for n in sorted(signed))
    canonical = "%s\n/\n\n%s\n%s\n%s" % (c["method"], canonical_headers, ";".join(sorted(signed)),
                                         hashlib.sha256(body).hexdigest())
    s2s = "TC3-HMAC-SHA256\n%s\n%s/%s/tc3_request\n%s" % (
        h["x-tc-timestamp"], date, service, hashlib.sha256(canonical.encode()).hexdigest())
    want = Sign.sign_tc3(req["secret_key"], date, service, s2s)
    out.append({"signed": signed, "ok": want == sig})
print(json.dumps(out))
"#;

fn tencent_list_answer(_: &Uri) -> axum::response::Response {
    axum::Json(
        json!({"Response": {"Result": {"TotalCount": 0, "ApiKeySet": []}, "RequestId": "r-1"}}),
    )
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_signatures_rekey_sends_verify_with_the_sdks_signer() {
    let Some(python) = sdk_python() else { return };
    let (addr, seen, task) = capture_server(tencent_list_answer).await;
    let cfg = tencent_config(
        &format!("http://{addr}"),
        "ap-guangzhou",
        "AKIDrekeyCaptureTest00000000000000000",
        "capture-secret-key-0123456789",
    );
    let p = tencent_provider_with(&cfg);
    p.list(&|_: &str| true).await.unwrap();
    let captured: Vec<Value> = seen.lock().unwrap().iter().map(captured_json).collect();
    assert_eq!(captured.len(), 1);
    let input = json!({"captured": captured, "secret_key": "capture-secret-key-0123456789"});
    let wrong = json!({"captured": captured, "secret_key": "capture-secret-key-0123456788"});
    let (out, bad) = tokio::task::spawn_blocking(move || {
        (
            run_python(&python, TENCENT_SDK_VERIFY, &input),
            run_python(&python, TENCENT_SDK_VERIFY, &wrong),
        )
    })
    .await
    .unwrap();
    assert_eq!(out[0]["ok"], true, "{out}");
    // The check can fail: another key does not verify.
    assert_eq!(bad[0]["ok"], false, "{bad}");
    assert_eq!(
        out[0]["signed"],
        json!(["content-type", "host", "x-tc-action"])
    );
    task.abort();
}

const HUAWEI_SDK_VERIFY: &str = r#"
import base64, json, sys
from urllib.parse import parse_qsl
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
req = json.load(sys.stdin)
signer = Signer(BasicCredentials(req["ak"], req["sk"]))
out = []
for c in req["captured"]:
    h = {}
    for k, v in c["headers"]:
        h[k.lower()] = v
    auth = h["authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    # Exactly the headers rekey signed, with the values it sent; the SDK
    # signs every header it is given.
    headers = {n: h[n] for n in signed}
    body = base64.b64decode(c["body"])
    r = SdkRequest(method=c["method"], schema="http", host=h["host"], resource_path=c["path"],
                   query_params=parse_qsl(c["query"], keep_blank_values=True),
                   header_params=headers, body=body)
    r = signer.sign(r)
    out.append({"signed": signed, "ok": r.header_params["Authorization"] == auth,
                "sdk": r.header_params["Authorization"].split("Signature=")[0]})
print(json.dumps(out))
"#;

fn huawei_answer(uri: &Uri) -> axum::response::Response {
    if uri.query().is_some() {
        axum::Json(json!({"credentials": [], "count": 0})).into_response()
    } else {
        (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            rekey::emulator::zip::archive("credential.csv", b"credential_id,api_key\r\nx,y\r\n"),
        )
            .into_response()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_signatures_rekey_sends_verify_with_the_sdks_signer() {
    let Some(python) = sdk_python() else { return };
    let (addr, seen, task) = capture_server(huawei_answer).await;
    let emu_like = huawei::Options::default();
    let cfg = huawei_config(
        &format!("http://{addr}"),
        &emu_like.project_id,
        rekey::config::HuaweiAuth::Aksk {
            access_key: literal("CAPTUREAK0000000000"),
            secret_key: literal("capture-sk-0123456789"),
        },
    );
    let p = rekey::provider::huawei::HuaweiProvider::new(
        &cfg,
        rekey::provider::http::ProviderHttp::new(&cfg, rekey::metrics::Metrics::new()).unwrap(),
    )
    .unwrap();
    p.list(&|_: &str| true).await.unwrap();
    let mut params = Map::new();
    params.insert("control_type".into(), json!("allowlist"));
    let new = p
        .create(&CreateRequest {
            name: "app-capture-1",
            params: &params,
        })
        .await
        .unwrap();
    assert!(new.unreadable.is_none());
    let captured: Vec<Value> = seen.lock().unwrap().iter().map(captured_json).collect();
    // list, create, and create's id lookup (a list).
    assert!(captured.len() >= 2, "{captured:?}");
    let input = json!({
        "captured": captured,
        "ak": "CAPTUREAK0000000000",
        "sk": "capture-sk-0123456789",
    });
    let wrong = json!({
        "captured": captured,
        "ak": "CAPTUREAK0000000000",
        "sk": "capture-sk-0123456780",
    });
    let (out, bad) = tokio::task::spawn_blocking(move || {
        (
            run_python(&python, HUAWEI_SDK_VERIFY, &input),
            run_python(&python, HUAWEI_SDK_VERIFY, &wrong),
        )
    })
    .await
    .unwrap();
    for r in out.as_array().unwrap() {
        assert_eq!(r["ok"], true, "{out}");
    }
    // The check can fail: another secret key does not verify.
    assert!(
        bad.as_array().unwrap().iter().all(|r| r["ok"] == false),
        "{bad}"
    );
    task.abort();
}
