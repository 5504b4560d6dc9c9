//! The emulator framework (`emulator::common`, issue 12's foundation 1c):
//! the three emulators serve one admin API with one fault shape, count and
//! log their calls the same way and refuse the same mistakes, each keeping
//! only its protocol. Checked by driving each emulator through rekey's own
//! clients and reading the admin API over HTTP.

use reqwest::StatusCode;
use serde_json::{Value, json};

use rekey::emulator::{huawei, oceanbase, tencent};
use rekey::provider::Provider;

use crate::support::cloud::{huawei_provider, huawei_token_auth, loopback, tencent_provider};
use crate::support::{oceanbase_config, oceanbase_provider, start_oceanbase};

async fn get(base: &str, what: &str) -> (StatusCode, Value) {
    let r = reqwest::get(format!("{base}/__emulator/{what}"))
        .await
        .expect("admin GET");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, what: &str, body: Value) -> (StatusCode, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/__emulator/{what}"))
        .json(&body)
        .send()
        .await
        .expect("admin POST");
    (r.status(), r.text().await.unwrap_or_default())
}

/// What every emulator's admin API must do: the same fault fields, all or
/// nothing; a flag of another emulator refused; stats per operation with
/// the list's walk in the request log.
async fn admin_api_is_the_frameworks(
    base: &str,
    list_op: &str,
    own_flag: &str,
    foreign_flag: &str,
    list_once: impl std::future::Future<Output = usize>,
) {
    let (s, faults) = get(base, "faults").await;
    assert_eq!(s, StatusCode::OK);
    for field in ["error_rate", "latency", "rate_limit", "forced"] {
        assert!(faults.get(field).is_some(), "{field} in {faults}");
    }
    let (s, _) = post(
        base,
        "faults",
        json!({"latency": "1ms", "rate_limit": 1000, "error_rate": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, faults) = get(base, "faults").await;
    assert_eq!(faults["latency"], "1ms", "{faults}");
    assert_eq!(faults["rate_limit"], 1000.0, "{faults}");

    // All or nothing: a bad value leaves the latency as it was.
    let (s, _) = post(base, "faults", json!({"latency": "7ms", "error_rate": 2.0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, text) = post(base, "faults", json!({ foreign_flag: true })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{foreign_flag}: {text}");
    assert!(text.contains(foreign_flag), "{text}");
    let (s, _) = post(base, "faults", json!({"nonsense": true})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, faults) = get(base, "faults").await;
    assert_eq!(faults["latency"], "1ms", "nothing half-applied: {faults}");
    let (s, text) = post(base, "faults", json!({ own_flag: true })).await;
    assert_eq!(s, StatusCode::OK, "{own_flag}: {text}");

    let listed = list_once.await;
    assert!(listed > 0);
    let (s, stats) = get(base, "stats").await;
    assert_eq!(s, StatusCode::OK);
    assert!(stats[list_op]["requests"].as_u64() >= Some(1), "{stats}");
    assert!(stats[list_op]["ok"].as_u64() >= Some(1), "{stats}");
    let (s, log) = get(base, "requests").await;
    assert_eq!(s, StatusCode::OK);
    let walks = log
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["operation"] == list_op && r["page"] == 1 && r["status"] == 200)
        .count();
    assert_eq!(walks, 1, "one walk began: {log}");
}

#[tokio::test]
async fn the_oceanbase_emulator_serves_the_frameworks_admin_api() {
    let emu = start_oceanbase(oceanbase::OceanBaseEmulatorOptions {
        keys: 3,
        ..Default::default()
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    admin_api_is_the_frameworks(
        &emu.endpoint(),
        "list",
        "expire_nonces",
        "expire_tokens",
        async { provider.list(&|_: &str| true).await.unwrap().len() },
    )
    .await;
    let log = emu.request_log();
    assert_eq!(log.iter().filter(|r| r.starts_walk()).count(), 1);
}

#[tokio::test]
async fn the_tencent_emulator_serves_the_frameworks_admin_api() {
    let emu = tencent::start(
        tencent::Options {
            keys: 3,
            usage_plans: vec![tencent::DEFAULT_USAGE_PLAN.into()],
            ..Default::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let provider = tencent_provider(&emu);
    // Tencent has no flag of its own: `clear_forced` stands in.
    admin_api_is_the_frameworks(
        &emu.endpoint(),
        "DescribeApiKeysStatus",
        "clear_forced",
        "expire_nonces",
        async { provider.list(&|_: &str| true).await.unwrap().len() },
    )
    .await;
    let (_, plans) = get(&emu.endpoint(), "usage-plans").await;
    assert_eq!(
        plans["usage_plans"][0]["AccessKeyIds"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "the emulator's own admin route is still served: {plans}"
    );
    assert_eq!(
        emu.request_log().iter().filter(|r| r.starts_walk()).count(),
        1
    );
}

#[tokio::test]
async fn the_huawei_emulator_serves_the_frameworks_admin_api() {
    let emu = huawei::start(
        huawei::Options {
            keys: 3,
            ..Default::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let provider = huawei_provider(&emu, huawei_token_auth(&emu));
    admin_api_is_the_frameworks(
        &emu.endpoint(),
        "list",
        "expire_tokens",
        "expire_nonces",
        async { provider.list(&|_: &str| true).await.unwrap().len() },
    )
    .await;
    assert_eq!(
        emu.request_log().iter().filter(|r| r.starts_walk()).count(),
        1
    );
}

#[tokio::test]
async fn a_tencent_error_envelope_is_logged_with_its_code() {
    let emu = tencent::start(
        tencent::Options {
            keys: 1,
            ..Default::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.set_faults(tencent::Faults {
        force: vec![tencent::ForcedFault {
            action: "DescribeApiKeysStatus".into(),
            code: "InternalError".into(),
            message: None,
            count: 1,
        }],
        ..Default::default()
    })
    .unwrap();
    let provider = tencent_provider(&emu);
    assert!(provider.list(&|_: &str| true).await.is_err());
    let log = emu.request_log();
    let first = log.first().expect("logged");
    // HTTP 200 as Tencent answers errors, the code beside it; not a walk.
    assert_eq!(
        (first.status, first.code.as_deref()),
        (200, Some("InternalError"))
    );
    assert!(!first.starts_walk());
}

/// The emulators must not agree with the client's bugs by sharing its code:
/// no file under `src/emulator/` names `crate::provider` (issue 12; the
/// signatures are checked by `emulator::sig`, the client's by `provider`).
#[test]
fn no_emulator_file_uses_the_provider_clients_code() {
    let dir = crate::support::repo_path("src/emulator");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("src/emulator") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("crate::provider") && !code.contains("super::super::provider"),
                "{}:{}: an emulator uses the client's code: {line}",
                path.display(),
                n + 1
            );
        }
    }
    assert!(files >= 5, "the emulator files were read ({files})");
}
