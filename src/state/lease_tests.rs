//! PostgreSQL-only store tests: the lease (two holders, expiry by the
//! database's clock, fence increments, resign and NOTIFY), fenced
//! transitions, the delete deadline on the database's clock, schema
//! refusals, and `migrate-state`'s copy. Each skips (with a hint) when no
//! server answers outside CI.

use std::time::Duration;

use chrono::TimeZone;

use super::pg_test::{admin_on, drop_database, fresh_database, options_for, pg_db};
use super::*;

const TTL: Duration = Duration::from_secs(30);

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

fn rotation(lineage: &str, at: DateTime<Utc>) -> NewRotation {
    NewRotation {
        policy: "maas".into(),
        lineage: lineage.into(),
        provider: "ob".into(),
        reason: "expiring".into(),
        message: "m".into(),
        trigger: "schedule".into(),
        revoke_old_immediately: false,
        old_key_id: Some("old-1".into()),
        old_key_name: Some("old".into()),
        sinks: vec!["file".into()],
        grace: Duration::from_secs(3600),
        at,
    }
}

/// Expire the lease now, by the database's clock (what waiting out the
/// TTL would do, without a timed test).
fn expire(db: &str) {
    admin_on(
        db,
        "UPDATE lease SET lease_until = now() - interval '1 second' WHERE name = 'leader'",
    )
    .unwrap();
}

#[test]
fn a_second_holder_waits_until_the_lease_expires_by_the_database_clock() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let first = a.lease_acquire("node-a", TTL, "digest-1").unwrap().unwrap();
    assert_eq!(first.fence, 1);
    let info = a.lease_info().unwrap();
    assert_eq!(info.holder.as_deref(), Some("node-a"));
    assert!(info.is_held());
    // The lease runs TTL from the database's now(), whatever a node's clock says.
    let left = info.lease_until.unwrap() - info.db_now;
    assert!(left > chrono::Duration::seconds(25) && left <= chrono::Duration::seconds(30));
    assert_eq!(b.lease_acquire("node-b", TTL, "digest-1").unwrap(), None);
    // Not even its own name takes a running lease: a second process under
    // the same instance name must not share the fence (renewal is
    // `lease_renew`).
    assert_eq!(a.lease_acquire("node-a", TTL, "digest-1").unwrap(), None);
    expire(a.name());
    let taken = b.lease_acquire("node-b", TTL, "digest-1").unwrap().unwrap();
    assert_eq!(taken.fence, 2, "a takeover increments the fence");
    assert_eq!(a.lease_acquire("node-a", TTL, "digest-1").unwrap(), None);
}

/// Two processes under one instance name (a cloned host's name, the
/// default) racing for a free lease: with "the holder may re-acquire its
/// own lease" both got the same fence and led at once. Exactly one wins.
#[test]
fn two_processes_sharing_an_instance_name_never_hold_one_fence_together() {
    let Some(a) = pg_db() else { return };
    let stores: Vec<Store> = (0..4)
        .map(|_| Store::open_postgres(&options_for(a.name(), "node-a")).unwrap())
        .collect();
    for round in 0..5 {
        let barrier = std::sync::Barrier::new(stores.len());
        let won: Vec<Option<Lease>> = std::thread::scope(|s| {
            let handles: Vec<_> = stores
                .iter()
                .map(|st| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        st.lease_acquire("node-a", TTL, "d").unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<i64> = won.iter().flatten().map(|l| l.fence).collect();
        assert_eq!(winners.len(), 1, "round {round}: {won:?}");
        expire(a.name());
    }
}

/// Two nodes that share an instance name (cloned VMs with one
/// `/etc/hostname`, the default instance) must not both lead under one
/// fence: the second waits for the lease to expire, takes a new fence,
/// and the first node's next transition is fenced. Broke: an acquisition by the same holder
/// name kept the fence, so both nodes passed every fence check.
#[test]
fn two_nodes_with_one_instance_name_never_lead_under_the_same_fence() {
    let Some(a) = pg_db() else { return };
    let twin = Store::open_postgres(&options_for(a.name(), "node-a")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    a.begin_rotation(&rotation("one", at(0))).unwrap().unwrap();
    // While its lease runs, not even its own name takes it.
    assert_eq!(twin.lease_acquire("node-a", TTL, "d").unwrap(), None);
    expire(a.name());
    let lt = twin.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    twin.set_fence(Some(lt.fence));
    assert!(lt.fence > la.fence, "the twin leads under the old fence");
    assert!(
        matches!(
            a.begin_rotation(&rotation("two", at(1))),
            Err(StoreError::Fenced { .. })
        ),
        "the first node still writes after its twin acquired"
    );
    twin.begin_rotation(&rotation("two", at(1)))
        .unwrap()
        .unwrap();
    // Renewing keeps the fence and the renewing node's writes going.
    let r = twin.lease_renew("node-a", lt.fence, TTL).unwrap().unwrap();
    assert_eq!(r.fence, lt.fence);
    twin.begin_rotation(&rotation("three", at(2)))
        .unwrap()
        .unwrap();
    assert_eq!(a.lease_renew("node-a", la.fence, TTL).unwrap(), None);
}

#[test]
fn a_renewal_keeps_the_fence_and_a_lost_lease_is_not_renewed() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let l = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    let r = a.lease_renew("node-a", l.fence, TTL).unwrap().unwrap();
    assert_eq!(r.fence, l.fence);
    assert!(r.until >= l.until);
    assert_eq!(a.lease_renew("node-b", l.fence, TTL).unwrap(), None);
    assert_eq!(a.lease_renew("node-a", l.fence + 1, TTL).unwrap(), None);
    expire(a.name());
    assert_eq!(
        a.lease_renew("node-a", l.fence, TTL).unwrap(),
        None,
        "an expired lease is lost even if nobody took it"
    );
    // Re-taking it after expiry is a new acquisition: a new fence.
    let back = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    assert_eq!(back.fence, l.fence + 1);
    let _ = b;
}

#[test]
fn a_resign_frees_the_lease_and_wakes_a_listening_standby() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let l = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    // The standby starts listening; nothing has happened yet.
    assert!(!b.listen_lease(Duration::ZERO).unwrap());
    assert!(
        !a.lease_resign("node-b", l.fence).unwrap(),
        "only the holder resigns"
    );
    assert!(a.lease_resign("node-a", l.fence).unwrap());
    // Bounded, not timed: the notification arrives long before this.
    assert!(
        b.listen_lease(Duration::from_secs(20)).unwrap(),
        "no NOTIFY"
    );
    let info = b.lease_info().unwrap();
    assert_eq!(info.holder, None);
    assert!(!info.is_held());
    let next = b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
    assert_eq!(next.fence, l.fence + 1);
    assert!(
        !a.lease_resign("node-a", l.fence).unwrap(),
        "resigning twice does nothing"
    );
}

#[test]
fn a_deposed_leaders_transition_is_fenced_rolled_back_and_counted() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    a.begin_rotation(&rotation("one", at(0))).unwrap().unwrap();
    expire(a.name());
    let lb = b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
    b.set_fence(Some(lb.fence));
    match a.begin_rotation(&rotation("two", at(1))) {
        Err(StoreError::Fenced {
            expected,
            found,
            holder,
        }) => {
            assert_eq!((expected, found), (la.fence, lb.fence));
            assert_eq!(holder.as_deref(), Some("node-b"));
        }
        other => panic!("not fenced: {other:?}"),
    }
    assert_eq!(a.fenced_commits(), 1);
    assert_eq!(b.fenced_commits(), 0);
    // Nothing of the fenced transaction is there; the new leader writes.
    let lineages: Vec<String> = b
        .history(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.lineage)
        .collect();
    assert_eq!(lineages, ["one"]);
    b.begin_rotation(&rotation("two", at(2))).unwrap().unwrap();
    // Reads are never fenced.
    assert_eq!(a.history(None, 10).unwrap().len(), 2);
    // A resigned leader is fenced too (same fence, no holder).
    b.lease_resign("node-b", lb.fence).unwrap();
    assert!(matches!(
        b.begin_rotation(&rotation("three", at(3))),
        Err(StoreError::Fenced { holder: None, .. })
    ));
}

/// The quiet check times a check group writes early (the engine's
/// `spill_quiet_decisions`, mid-group) and at its end go through
/// `record_check_times`: a deposed leader's are fenced like any write, and
/// nothing of them lands (its decisions would stand for the new leader's
/// settled checks).
#[test]
fn a_deposed_leaders_quiet_check_times_are_fenced() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    let record = |at: DateTime<Utc>, decisions: &str| CheckRecord {
        policy: "maas".into(),
        provider: "ob".into(),
        at,
        next_check_at: None,
        health: "ok".into(),
        error: None,
        decisions: Some(decisions.into()),
        keys: Vec::new(),
        complete_listing: true,
    };
    a.record_check_times(&[record(at(0), r#"{"l":"a"}"#)])
        .unwrap();
    expire(a.name());
    let lb = b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
    b.set_fence(Some(lb.fence));
    assert!(matches!(
        a.record_check_times(&[record(at(1), r#"{"l":"stale"}"#)]),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(a.fenced_commits(), 1);
    let row = b.policy_state("maas").unwrap().unwrap();
    assert_eq!(row.last_check_at, Some(at(0)));
    assert_eq!(row.decisions.to_string(), r#"{"l":"a"}"#);
}

#[test]
fn the_old_key_delete_waits_for_the_database_clock_not_the_nodes() {
    let Some(db) = pg_db() else { return };
    let sealer = seal::Sealer::random();
    let now = Utc::now();
    let id = db.begin_rotation(&rotation("app", now)).unwrap().unwrap();
    let (n, name) = db.start_attempt(&id, |n| format!("app-{n}"), now).unwrap();
    let key = CreatedRecord {
        key_id: Some("new-1".into()),
        name,
        created_at: None,
        expires_at: None,
    };
    let fields = crate::secret::SecretFields::single("k", crate::secret::Secret::new("s"));
    db.record_created(&id, n, &key, &sealer.seal(&id, &fields), "sha256:x", now)
        .unwrap();
    db.record_sink_ack(&id, "file", None, "sha256:x", now)
        .unwrap();
    // Grace ends an hour from the database's now: a node whose clock runs
    // an hour fast would think it over, the store does not.
    let db_now = db.db_now().unwrap();
    db.record_published(&id, now, Some(db_now + chrono::Duration::hours(1)))
        .unwrap();
    let left = db.retire_wait(&id).unwrap().expect("not due yet");
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    db.set_retire_at(&id, db_now - chrono::Duration::seconds(1))
        .unwrap();
    assert_eq!(db.retire_wait(&id).unwrap(), None);
    assert!(matches!(
        db.retire_wait("nope"),
        Err(StoreError::Conflict(_))
    ));
    // SQLite has one clock, the engine's: never a wait from the store.
    let lite = Store::open_in_memory().unwrap();
    assert_eq!(lite.retire_wait("anything").unwrap(), None);
}

#[test]
fn lease_operations_on_a_sqlite_state_say_they_need_postgres() {
    let lite = Store::open_in_memory().unwrap();
    for e in [
        lite.lease_acquire("a", TTL, "d").unwrap_err(),
        lite.lease_info().unwrap_err(),
        lite.request_rotation("p", None, &serde_json::json!({}), "a")
            .unwrap_err(),
        lite.take_rotation_requests().unwrap_err(),
        lite.listen_lease(Duration::ZERO).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("PostgreSQL"), "{e}");
    }
}

#[test]
fn a_standby_records_a_rotate_request_and_only_the_leader_takes_it() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let l = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(l.fence));
    let opts = serde_json::json!({"revoke_old_immediately": true});
    let id = b
        .request_rotation("maas", Some("app"), &opts, "node-b")
        .unwrap();
    // A standby holding a stale fence cannot take requests.
    b.set_fence(Some(l.fence));
    assert!(matches!(
        b.take_rotation_requests(),
        Err(StoreError::Fenced { .. })
    ));
    let taken = a.take_rotation_requests().unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, id);
    assert_eq!(taken[0].options, opts);
    assert_eq!(taken[0].lineage.as_deref(), Some("app"));
    assert_eq!(
        taken[0].taken_by.as_deref(),
        Some(format!("node-a fence {}", l.fence).as_str())
    );
    assert!(a.take_rotation_requests().unwrap().is_empty(), "taken once");
    a.finish_rotation_request(id, &serde_json::json!({"rotation": "abcd1234"}))
        .unwrap();
    let seen = b.rotation_request(id).unwrap().unwrap();
    assert_eq!(
        seen.result,
        Some(serde_json::json!({"rotation": "abcd1234"}))
    );
}

/// Found by the HA adversary: a leader that died after taking a request
/// and before finishing it lost the request for good (only untaken ones
/// were taken). The next leader takes it again; the same leader does not.
#[test]
fn a_request_taken_by_a_leader_that_died_before_finishing_it_is_taken_by_the_next() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    let id = b
        .request_rotation("maas", None, &serde_json::json!({}), "node-b")
        .unwrap();
    assert_eq!(a.take_rotation_requests().unwrap().len(), 1);
    assert!(a.take_rotation_requests().unwrap().is_empty(), "in hand");
    // node-a dies here; node-b leads.
    expire(a.name());
    let lb = b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
    b.set_fence(Some(lb.fence));
    let again = b.take_rotation_requests().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    b.finish_rotation_request(id, &serde_json::json!({"rotation": "r1"}))
        .unwrap();
    assert!(b.take_rotation_requests().unwrap().is_empty(), "finished");
}

#[test]
fn the_seal_check_value_is_recorded_and_read_back() {
    let Some(db) = pg_db() else { return };
    assert_eq!(db.seal_check().unwrap(), None);
    db.set_seal_check("v1:0123abcd").unwrap();
    assert_eq!(db.seal_check().unwrap().as_deref(), Some("v1:0123abcd"));
}

#[test]
fn a_newer_postgres_schema_and_another_programs_database_are_refused() {
    let Some(db) = pg_db() else { return };
    admin_on(db.name(), "UPDATE schema_version SET version = 99").unwrap();
    match Store::open_postgres(&db.opts) {
        Err(StoreError::NewerSchema { found: 99, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(Store::open_postgres_read_only(&db.opts).is_err());
    let Some(other) = fresh_database() else {
        return;
    };
    admin_on(&other, "CREATE TABLE invoices (id BIGINT)").unwrap();
    let r = Store::open_postgres(&options_for(&other, "n"));
    drop_database(&other);
    match r {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("invoices"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_password_or_server_fails_at_open_naming_the_url_not_the_password() {
    let mut o = options_for("does_not_exist_rekey", "n");
    o.password = Some("hunter2-secret".into());
    let Some(db) = pg_db() else { return };
    drop(db);
    let e = Store::open_postgres(&o).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("postgres://postgres@127.0.0.1:5432/does_not_exist_rekey"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn migrate_state_copies_every_row_keeps_event_numbers_and_refuses_a_used_target() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(&dir.path().join("state.db")).unwrap();
    let sealer = seal::Sealer::random();
    let id = src
        .begin_rotation(&rotation("app", at(0)))
        .unwrap()
        .unwrap();
    let (n, name) = src
        .start_attempt(&id, |n| format!("app-{n}"), at(1))
        .unwrap();
    let key = CreatedRecord {
        key_id: Some("new-1".into()),
        name,
        created_at: Some(at(1)),
        expires_at: None,
    };
    let fields = crate::secret::SecretFields::single("k", crate::secret::Secret::new("s"));
    let sealed = sealer.seal(&id, &fields);
    src.record_created(&id, n, &key, &sealed, "sha256:x", at(1))
        .unwrap();
    src.delivery("hook").unwrap();
    src.emit(&Event::new(
        "key.expiring",
        at(2),
        Some("maas"),
        None,
        serde_json::json!({}),
    ))
    .unwrap();
    src.begin_rotation(&rotation("db", at(3))).unwrap().unwrap();
    let report = src.copy_into(&pg).unwrap();
    assert_eq!(report.tables.len(), migrate::TABLES.len());
    assert!(report.total() >= 8, "{report:?}");
    // The same state, read through the PostgreSQL store.
    let lite: Vec<_> = src
        .history(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    let copied: Vec<_> = pg
        .history(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(lite, copied);
    assert_eq!(pg.sealed_secret(&id).unwrap(), Some(sealed));
    let seqs = |s: &Store| -> Vec<i64> {
        s.events_after(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(&src), seqs(&pg));
    assert_eq!(
        pg.delivery("hook").unwrap().cursor,
        src.delivery("hook").unwrap().cursor
    );
    // New events continue after the copied numbers.
    let last = pg.last_event_seq().unwrap();
    pg.emit(&Event::new(
        "key.expiring",
        at(4),
        Some("maas"),
        None,
        serde_json::json!({}),
    ))
    .unwrap();
    assert_eq!(pg.last_event_seq().unwrap(), last + 1);
    // Never into a state that holds anything.
    match src.copy_into(&pg) {
        Err(StoreError::Conflict(m)) => assert!(m.contains("not empty"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nor one that was ever led.
    let Some(led) = pg_db() else { return };
    led.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    assert!(matches!(src.copy_into(&led), Err(StoreError::Conflict(_))));
}

/// The local server's certificate when it serves TLS (Debian's default
/// cluster: `ssl = on` with the snakeoil certificate for `localhost`).
fn server_certificate(db: &Store) -> Option<std::path::PathBuf> {
    let (on, file): (String, String) = db
        .read(|tx| {
            let on = tx.query_row("SHOW ssl", p![])?.get(0)?;
            let file = tx.query_row("SHOW ssl_cert_file", p![])?.get(0)?;
            Ok((on, file))
        })
        .unwrap();
    let file = std::path::PathBuf::from(file);
    if on != "on" || std::fs::read(&file).is_err() {
        eprintln!(
            "skipping a TLS test: the server at 127.0.0.1:5432 does not serve TLS with a readable certificate"
        );
        return None;
    }
    Some(file)
}

/// Whether this store's session runs over TLS (`pg_stat_ssl`).
fn session_is_tls(store: &Store) -> bool {
    store
        .read(|tx| {
            tx.query_row(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                p![],
            )?
            .get(0)
        })
        .unwrap()
}

#[test]
fn sslmode_require_encrypts_and_verify_full_checks_the_ca_and_the_host_name() {
    let Some(db) = pg_db() else { return };
    let Some(cert) = server_certificate(&db) else {
        return;
    };
    let url = |host: &str, mode: &str| {
        PgOptions::from_url(&format!(
            "postgres://postgres@{host}:5432/{}?sslmode={mode}",
            db.name()
        ))
        .unwrap()
    };
    assert!(!session_is_tls(&db), "sslmode=disable is plain TCP");
    let enc = Store::open_postgres(&url("127.0.0.1", "require")).unwrap();
    assert!(session_is_tls(&enc), "sslmode=require must encrypt");
    // verify-full: the certificate names localhost and is its own CA.
    let mut full = url("localhost", "verify-full");
    full.ca_file = Some(cert.clone());
    let ok = Store::open_postgres(&full).unwrap();
    assert!(session_is_tls(&ok));
    // The same certificate does not name 127.0.0.1: refused.
    let mut wrong_name = url("127.0.0.1", "verify-full");
    wrong_name.ca_file = Some(cert.clone());
    let e = Store::open_postgres(&wrong_name).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A CA file with no certificate in it: refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, "not a certificate\n").unwrap();
    let mut no_ca = url("localhost", "verify-full");
    no_ca.ca_file = Some(other);
    let e = Store::open_postgres(&no_ca).unwrap_err().to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

/// Negative control (test builds with `ha-test-unfenced` only): with the
/// fence check off, a deposed leader's write goes through — what the
/// check prevents.
#[cfg(feature = "ha-test-unfenced")]
#[test]
fn with_fence_checks_off_a_deposed_leader_writes_unhindered() {
    let Some(a) = pg_db() else { return };
    let b = Store::open_postgres(&options_for(a.name(), "node-b")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    expire(a.name());
    b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
    a.set_fence_checks(false);
    a.begin_rotation(&rotation("stale", at(0)))
        .unwrap()
        .unwrap();
    assert_eq!(a.fenced_commits(), 0);
    a.set_fence_checks(true);
    assert!(matches!(
        a.begin_rotation(&rotation("stale-2", at(1))),
        Err(StoreError::Fenced { .. })
    ));
}

#[test]
fn after_the_server_drops_the_connection_the_next_transition_reconnects() {
    let Some(db) = pg_db() else { return };
    db.begin_rotation(&rotation("one", at(0))).unwrap().unwrap();
    // What a server restart or a failover does to an idle connection.
    db.drop_connections().unwrap();
    db.begin_rotation(&rotation("two", at(1))).unwrap().unwrap();
    assert_eq!(db.history(None, 10).unwrap().len(), 2);
}

/// Broke: once the store thread saw the connection die inside a
/// transaction, it forgot the transaction: the caller's next statement
/// reconnected and ran in autocommit (unfenced, outside the transaction)
/// and its `COMMIT` on the new connection "succeeded" (PostgreSQL only
/// warns that no transaction is in progress).
#[test]
fn a_transaction_whose_connection_died_runs_nothing_more_and_never_reports_a_commit() {
    let Some(db) = pg_db() else { return };
    let insert = |c: &str| {
        format!(
            "INSERT INTO conditions (policy, lineage, condition, since, message) VALUES ('p', 'l', '{c}', 't', 'm')"
        )
    };
    {
        let c = db.pg().unwrap();
        let tx = c.begin().unwrap();
        tx.execute(&insert("c1"), p![]).unwrap();
        db.drop_connections().unwrap();
        assert!(tx.execute(&insert("c2"), p![]).is_err());
        // A caller that goes on regardless must not write anything.
        assert!(
            tx.execute(&insert("c3"), p![]).is_err(),
            "a statement ran on a new connection outside the lost transaction"
        );
        assert!(
            tx.commit().is_err(),
            "the commit of a lost transaction reported success"
        );
    }
    let n: i64 = db
        .read(|t| t.query_row("SELECT COUNT(*) FROM conditions", p![])?.get(0))
        .unwrap();
    assert_eq!(n, 0, "rows of a lost transaction were written");
    // The store goes on with a new connection.
    db.begin_rotation(&rotation("after", at(0)))
        .unwrap()
        .unwrap();
}

/// A real race, made deterministic: the old leader's transaction has
/// passed its fence check and holds the lease row `FOR SHARE` while a
/// standby takes the expired lease on another thread. The old leader
/// writes its event only once the standby's acquisition is either waiting
/// on that lock or has returned; the acquisition must not return before
/// the old leader's commit (else a deposed leader's write lands after the
/// new leader started from what it read). Fails without `FOR SHARE`.
#[test]
fn no_write_of_a_deposed_leader_commits_after_the_new_leaders_acquisition_returned() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(a) = pg_db() else { return };
    let b = std::sync::Arc::new(Store::open_postgres(&options_for(a.name(), "node-b")).unwrap());
    let watch = Store::open_postgres(&options_for(a.name(), "watch")).unwrap();
    let la = a.lease_acquire("node-a", TTL, "d").unwrap().unwrap();
    a.set_fence(Some(la.fence));
    expire(a.name());
    let acquired = std::sync::Arc::new(AtomicBool::new(false));
    let mut standby = None;
    a.tx_quiet(|tx| {
        // The fence check passed; now the standby tries to take over.
        let (b, done) = (b.clone(), acquired.clone());
        standby = Some(std::thread::spawn(move || {
            let l = b.lease_acquire("node-b", TTL, "d").unwrap().unwrap();
            let seen = b.last_event_seq().unwrap();
            done.store(true, Ordering::SeqCst);
            (l, seen)
        }));
        let sql = format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
            a.name()
        );
        while !acquired.load(Ordering::SeqCst)
            && watch.read(|t| t.query_row(&sql, p![])?.get::<i64>(0))? == 0
        {
            std::thread::yield_now();
        }
        insert_event(
            tx,
            &Event::new("test.race", at(0), None, None, serde_json::json!({})),
        )
    })
    .unwrap();
    let (lb, seen_at_takeover) = standby.unwrap().join().unwrap();
    assert!(lb.fence > la.fence);
    assert_eq!(
        seen_at_takeover, 1,
        "the new leader's acquisition returned before the old leader's transaction committed"
    );
    // The old leader's next transition is fenced.
    assert!(matches!(
        a.emit(&Event::new(
            "test.late",
            at(1),
            None,
            None,
            serde_json::json!({})
        )),
        Err(StoreError::Fenced { .. })
    ));
}
