//! Store tests: opening (schema, idempotence, refusing newer, corrupt and
//! foreign files without touching them, the single-instance lock, file
//! mode, read-only access beside a running daemon) and every transition of
//! a rotation, with the outbox events it writes and no secret in the DB
//! outside the sealed column.

use std::os::unix::fs::PermissionsExt;

use chrono::TimeZone;

use crate::state::pg_test::{backends, pg_db};

use super::seal::Sealer;
use super::*;
use crate::secret::{Secret, SecretFields};

/// The plaintext of the new key in transition tests: it must never be found
/// in the DB (the sealed column holds only ciphertext).
const SECRET: &str = "sk-live-NEWKEY-5f3a9c";

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

fn new_rotation(lineage: &str, sinks: &[&str]) -> NewRotation {
    NewRotation {
        policy: "maas".into(),
        lineage: lineage.into(),
        provider: "ob".into(),
        reason: "expiring".into(),
        message: "current key expires in 6d".into(),
        trigger: "schedule".into(),
        revoke_old_immediately: false,
        old_key_id: Some("old-1".into()),
        old_key_name: Some(format!("{lineage}-20261001-r00000001-1")),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        grace: Duration::from_secs(3600),
        at: at(0),
    }
}

fn created(name: &str) -> CreatedRecord {
    CreatedRecord {
        key_id: Some("new-1".into()),
        name: name.into(),
        created_at: Some(at(1)),
        expires_at: Some(at(60 * 24 * 30)),
    }
}

fn event_kinds(store: &Store) -> Vec<String> {
    store
        .events_after(0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Begin, attempt and create: a rotation in `created` with its secret sealed.
fn created_rotation(store: &Store, sealer: &Sealer, sinks: &[&str]) -> String {
    created_rotation_of(store, sealer, "app-main", sinks)
}

/// [`created_rotation`] of lineage `lineage` (sink `file`).
fn created_rotation_in(store: &Store, sealer: &Sealer, lineage: &str) -> String {
    created_rotation_of(store, sealer, lineage, &["file"])
}

fn created_rotation_of(store: &Store, sealer: &Sealer, lineage: &str, sinks: &[&str]) -> String {
    let id = store
        .begin_rotation(&new_rotation(lineage, sinks))
        .unwrap()
        .unwrap();
    let (attempt, name) = store
        .start_attempt(&id, |n| format!("{lineage}-20261122-r{id}-{n}"), at(1))
        .unwrap();
    let fields = SecretFields::single("api_key", Secret::new(SECRET));
    let sealed = sealer.seal(&id, &fields);
    store
        .record_created(
            &id,
            attempt,
            &created(&name),
            &sealed,
            &fields.fingerprint(),
            at(1),
        )
        .unwrap();
    id
}

// ------------------------------------------------------------------ opening

fn table_names(store: &Store) -> Vec<String> {
    let sql = if store.is_postgres() {
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    };
    store
        .read(|tx| tx.query_all(sql, p![])?.iter().map(|r| r.get(0)).collect())
        .unwrap()
}

/// A table's column names, in order, on either backend.
fn column_names(store: &Store, table: &str) -> Vec<String> {
    let sql = if store.is_postgres() {
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position"
    } else {
        "SELECT name FROM pragma_table_info(?1) ORDER BY cid"
    };
    store
        .read(|tx| {
            tx.query_all(sql, p![table])?
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
        .unwrap()
}

#[test]
fn a_fresh_db_gets_the_whole_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(store.version().unwrap(), schema::VERSION);
    assert_eq!(
        table_names(&store),
        [
            "attempts",
            "conditions",
            "dead_letters",
            "deliveries",
            "events",
            "expiring_notices",
            "keys",
            "policy_state",
            "rotations",
            "sink_acks",
            "sink_targets",
        ]
    );
    let pragma = |name: &str| -> String {
        store
            .conn()
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
    // FULL = 2.
    assert_eq!(pragma("synchronous"), "Integer(2)");
}

#[test]
fn the_in_memory_store_has_the_same_schema() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.version().unwrap(), schema::VERSION);
    assert_eq!(table_names(&store).len(), 11);
}

#[test]
fn reopening_is_idempotent_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let id = {
        let store = Store::open(&path).unwrap();
        store
            .begin_rotation(&new_rotation("app-main", &["file"]))
            .unwrap()
            .unwrap()
    };
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.version().unwrap(), schema::VERSION);
        assert_eq!(table_names(&store).len(), 11);
        assert_eq!(
            store.rotation(&id).unwrap().unwrap().state,
            RotationState::Planned
        );
        assert_eq!(event_kinds(&store), ["rotation.started"]);
    }
}

#[test]
fn the_state_directory_is_created_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.db");
    Store::open(&path).unwrap();
    assert!(path.is_file());
}

#[test]
fn the_db_file_is_created_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm", ".lock"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
    }
}

/// A SQLite DB made by someone else, with `setup` run on it.
fn foreign_db(path: &Path, setup: &str) -> Vec<u8> {
    let c = Connection::open(path).unwrap();
    c.execute_batch(setup).unwrap();
    drop(c);
    std::fs::read(path).unwrap()
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[test]
fn a_db_with_a_newer_schema_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let before = foreign_db(
        &path,
        "CREATE TABLE future (x); INSERT INTO future VALUES (1); PRAGMA user_version = 99;",
    );
    match Store::open(&path) {
        Err(StoreError::NewerSchema {
            found, supported, ..
        }) => assert_eq!((found, supported), (99, schema::VERSION)),
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::NewerSchema { found: 99, .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before, "the DB was modified");
    assert!(
        !sidecar(&path, "-wal").exists(),
        "the DB was switched to WAL"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "text.db",
            b"these are someone's notes, not a database\n".repeat(100),
        ),
        ("short.db", b"hi".to_vec()),
        (
            "garbage.db",
            [b"SQLite format 3\0".as_slice(), &[0xA5; 4080]].concat(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt { .. } | StoreError::NewerSchema { .. }
            ),
            "{name}: {err:?}"
        );
        assert!(Store::open_read_only(&path).is_err(), "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} was modified");
        assert!(!sidecar(&path, "-wal").exists(), "{name}");
    }
}

#[test]
fn another_programs_sqlite_db_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let before = foreign_db(
        &path,
        "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');",
    );
    match Store::open(&path) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("tables (users)"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_second_open_is_locked_out_naming_the_owner_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = Store::open(&path).unwrap();
    match Store::open(&path) {
        Err(e @ StoreError::Locked { .. }) => {
            let StoreError::Locked { pid, path: p } = &e else {
                unreachable!()
            };
            assert_eq!(pid, &std::process::id().to_string());
            assert_eq!(p, &path);
            assert!(e.to_string().contains("another rekey is already running"));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    Store::open(&path).expect("the lock is released with the store");
}

#[test]
fn read_only_access_works_beside_the_daemon_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let daemon = Store::open(&path).unwrap();
    let id = daemon
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();

    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.history(None, 10).unwrap()[0].id, id);
    // The reader sees what the daemon commits later.
    daemon
        .emit(&Event::new(
            "key.expiring",
            at(2),
            Some("maas"),
            None,
            serde_json::json!({}),
        ))
        .unwrap();
    assert_eq!(event_kinds(&reader), ["rotation.started", "key.expiring"]);
    // And cannot write.
    let write = reader.emit(&Event::new(
        "key.expiring",
        at(3),
        None,
        None,
        serde_json::json!({}),
    ));
    assert!(
        matches!(write, Err(StoreError::Sql(_))),
        "a read-only store wrote: {write:?}"
    );
    assert!(
        reader
            .begin_rotation(&new_rotation("app-other", &["file"]))
            .is_err()
    );
    assert_eq!(event_kinds(&daemon).len(), 2);

    // Still readable once the daemon is gone (WAL files cleaned up).
    drop(daemon);
    drop(reader);
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(event_kinds(&reader).len(), 2);
}

#[test]
fn read_only_open_of_a_missing_db_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!path.exists());
}

// -------------------------------------------------------------- transitions

fn one_rotation_per_lineage_at_a_time(store: &Store) {
    let first = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap();
    assert!(first.is_some());
    assert_eq!(
        store
            .begin_rotation(&new_rotation("app-main", &["file"]))
            .unwrap(),
        None
    );
    // Another lineage of the same policy is independent.
    assert!(
        store
            .begin_rotation(&new_rotation("app-other", &["file"]))
            .unwrap()
            .is_some()
    );
    // Once the first is over, the lineage may rotate again.
    store
        .fail_rotation(first.as_deref().unwrap(), "boom", "permanent", at(5))
        .unwrap();
    assert!(
        store
            .begin_rotation(&new_rotation("app-main", &["file"]))
            .unwrap()
            .is_some()
    );
}

fn a_rotation_runs_from_planned_to_completed_with_its_events_in_order(store: &Store) {
    let sealer = Sealer::random();
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file", "vault"]))
        .unwrap()
        .unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Planned);
    assert_eq!(row.sinks, ["file", "vault"]);

    let (attempt, name) = store
        .start_attempt(&id, |n| format!("app-main-20261122-r{id}-{n}"), at(1))
        .unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(name, format!("app-main-20261122-r{id}-1"));
    assert_eq!(store.attempts(&id).unwrap()[0].state, "requested");

    let fields = SecretFields::single("api_key", Secret::new(SECRET));
    let sealed = sealer.seal(&id, &fields);
    store
        .record_created(
            &id,
            attempt,
            &created(&name),
            &sealed,
            &fields.fingerprint(),
            at(1),
        )
        .unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Created);
    assert_eq!(row.new_key_id.as_deref(), Some("new-1"));
    assert_eq!(store.attempts(&id).unwrap()[0].state, "created");
    // The sealed secret opens to the key, and only for this rotation.
    let stored = store.sealed_secret(&id).unwrap().unwrap();
    assert_eq!(sealer.open(&id, &stored).unwrap(), fields);

    // Publishing is refused while any sink has not acknowledged.
    store
        .record_sink_ack(
            &id,
            "file",
            Some("/etc/keys/app-main.env"),
            "sha256:test",
            at(2),
        )
        .unwrap();
    assert!(is_conflict(store.record_published(
        &id,
        at(2),
        Some(at(62))
    )));
    store
        .record_sink_failure(&id, "vault", "503", Some(at(3)))
        .unwrap();
    assert!(is_conflict(store.record_published(
        &id,
        at(3),
        Some(at(63))
    )));
    store
        .record_sink_ack(&id, "vault", Some("version 4"), "sha256:test", at(4))
        .unwrap();
    let acks = store.sink_acks(&id).unwrap();
    assert!(acks.iter().all(|a| a.state == "acked"), "{acks:?}");
    assert_eq!(acks[1].attempts, 2, "vault failed once, then acked");

    store.record_published(&id, at(4), Some(at(64))).unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Retiring);
    assert_eq!(row.retire_at, Some(at(64)));
    assert_eq!(
        store.sealed_secret(&id).unwrap(),
        None,
        "sealed secret wiped"
    );
    let key_state = |key_id: &str| {
        store
            .known_keys("maas")
            .unwrap()
            .into_iter()
            .find(|k| k.key_id == key_id)
            .map(|k| k.state)
    };
    assert_eq!(key_state("new-1").as_deref(), Some("live"));

    store.record_old_key_deleted(&id, at(64)).unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Completed);
    assert_eq!(row.outcome.as_deref(), Some("deleted"));
    assert_eq!(row.finished_at, Some(at(64)));
    assert_eq!(store.last_success("maas").unwrap(), Some(at(64)));

    assert_eq!(
        event_kinds(store),
        [
            "rotation.started",
            "key.created",
            "key.published",
            "key.deleted",
            "rotation.completed",
        ]
    );
    let events = store.events_after(0, 100).unwrap();
    assert!(events.iter().all(|e| e.rotation_id.as_deref() == Some(&id)));
    assert_eq!(events[3].data["key_id"], "old-1");
    assert_eq!(events[4].data["outcome"], "deleted");
    assert_no_plaintext_in_db(store, SECRET);
}

fn a_rotation_without_an_old_key_completes_on_publish(store: &Store) {
    let mut r = new_rotation("app-main", &["file"]);
    r.old_key_id = None;
    r.old_key_name = None;
    r.trigger = "bootstrap".into();
    let id = store.begin_rotation(&r).unwrap().unwrap();
    let (attempt, name) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(1))
        .unwrap();
    store
        .record_created(&id, attempt, &created(&name), b"sealed", "sha256:x", at(1))
        .unwrap();
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    store.record_published(&id, at(2), None).unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Completed);
    assert_eq!(row.outcome.as_deref(), Some("no_old_key"));
    assert_eq!(
        event_kinds(store),
        [
            "rotation.started",
            "key.created",
            "key.published",
            "rotation.completed"
        ]
    );
}

fn publishing_without_a_retirement_time_is_refused_when_there_is_an_old_key(store: &Store) {
    // Completing as "no_old_key" would leave the old key live for ever.
    let id = created_rotation(store, &Sealer::random(), &["file"]);
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    assert!(is_conflict(store.record_published(&id, at(2), None)));
    assert_eq!(
        store.rotation(&id).unwrap().unwrap().state,
        RotationState::Created
    );
    store.record_published(&id, at(2), Some(at(62))).unwrap();
}

fn a_provider_that_cannot_delete_leaves_the_old_key_retired(store: &Store) {
    let id = created_rotation(store, &Sealer::random(), &["file"]);
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    store.record_published(&id, at(2), Some(at(62))).unwrap();
    store.record_old_key_retired(&id, at(62)).unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.outcome.as_deref(), Some("retired"));
    assert_eq!(
        event_kinds(store)[3..],
        ["key.retired", "rotation.completed"]
    );
}

fn failing_after_create_emits_rotation_failed_and_keeps_the_key_sealed_for_the_next_check(
    store: &Store,
) {
    let id = created_rotation(store, &Sealer::random(), &["file"]);
    assert_eq!(
        store
            .record_step_failure(&id, "sink down", "retryable", Some(at(5)), at(4))
            .unwrap(),
        1
    );
    store
        .fail_rotation(&id, "sink down", "retryable", at(10))
        .unwrap();
    let row = store.rotation(&id).unwrap().unwrap();
    assert_eq!(row.state, RotationState::Failed);
    assert_eq!(row.error.as_deref(), Some("sink down"));
    // The created key must not be lost: the next check resumes it.
    assert!(store.sealed_secret(&id).unwrap().is_some());
    let events = store.events_after(0, 100).unwrap();
    let failed = events.last().unwrap();
    assert_eq!(failed.kind, "rotation.failed");
    assert_eq!(failed.data["state_at_failure"], "created");
    assert_eq!(failed.data["failures"], 2);
    // Failing twice does not emit twice.
    assert!(is_conflict(store.fail_rotation(
        &id,
        "again",
        "permanent",
        at(11)
    )));
    assert_eq!(event_kinds(store).len(), events.len());
    assert!(store.active_rotations().unwrap().is_empty());
    // Resuming puts it back to created, once.
    assert!(store.revive_rotation(&id, "expiring", at(12)).unwrap());
    assert_eq!(
        store.rotation(&id).unwrap().unwrap().state,
        RotationState::Created
    );
    assert!(!store.revive_rotation(&id, "expiring", at(13)).unwrap());
}

fn failing_before_create_leaves_nothing_sealed(store: &Store) {
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();
    store.fail_rotation(&id, "403", "permanent", at(3)).unwrap();
    assert_eq!(store.sealed_secret(&id).unwrap(), None);
    assert!(!store.revive_rotation(&id, "expiring", at(4)).unwrap());
}

/// The abandon command's delete and a check's retry (from a ledger read
/// before the command recorded its delete) both reached the provider, one
/// `Deleted`, one `NotFound`: each recorded the key deleted, and the outbox
/// sent `key.deleted` twice for one key.
fn an_abandoned_key_recorded_deleted_twice_sends_key_deleted_once(store: &Store) {
    let sealer = Sealer::random();
    let id = created_rotation(store, &sealer, &["file"]);
    store
        .abandon_rotation(&id, "abandoned by an operator", at(5))
        .unwrap();
    assert_eq!(store.abandoned_unpublished("maas").unwrap().len(), 1);
    store.record_abandoned_key_deleted(&id, at(6)).unwrap();
    store.record_abandoned_key_deleted(&id, at(7)).unwrap();
    assert!(store.abandoned_unpublished("maas").unwrap().is_empty());
    let kinds = event_kinds(store);
    assert_eq!(
        kinds.iter().filter(|k| *k == "key.deleted").count(),
        1,
        "{kinds:?}"
    );
    // A key kept for an ambiguous name is not turned into a deleted one.
    let kept = {
        let id = created_rotation_in(store, &sealer, "app-twin");
        store.abandon_rotation(&id, "abandoned", at(8)).unwrap();
        store.record_abandoned_key_kept(&id).unwrap();
        store.record_abandoned_key_deleted(&id, at(9)).unwrap();
        id
    };
    assert_eq!(
        store.rotation(&kept).unwrap().unwrap().outcome.as_deref(),
        Some("next_key_kept")
    );
}

fn transitions_applied_twice_are_refused_not_repeated(store: &Store) {
    let sealer = Sealer::random();
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();
    let (attempt, name) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(1))
        .unwrap();
    // A second attempt while the first is unresolved.
    assert!(is_conflict(store.start_attempt(
        &id,
        |n| format!("k-{n}"),
        at(1)
    )));
    let fields = SecretFields::single("api_key", Secret::new(SECRET));
    let sealed = sealer.seal(&id, &fields);
    let fp = fields.fingerprint();
    store
        .record_created(&id, attempt, &created(&name), &sealed, &fp, at(1))
        .unwrap();
    assert!(is_conflict(store.record_created(
        &id,
        attempt,
        &created(&name),
        &sealed,
        &fp,
        at(1)
    )));
    assert!(is_conflict(store.start_attempt(
        &id,
        |n| format!("k-{n}"),
        at(2)
    )));
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    assert!(is_conflict(store.record_sink_ack(
        &id,
        "file",
        None,
        "sha256:test",
        at(3)
    )));
    store.record_published(&id, at(2), Some(at(62))).unwrap();
    assert!(is_conflict(store.record_published(
        &id,
        at(3),
        Some(at(63))
    )));
    // A late sink failure cannot un-acknowledge a published key.
    assert!(is_conflict(
        store.record_sink_failure(&id, "file", "late", None)
    ));
    store.record_old_key_deleted(&id, at(62)).unwrap();
    assert!(is_conflict(store.record_old_key_deleted(&id, at(63))));
    assert!(is_conflict(store.record_old_key_retired(&id, at(63))));
    assert!(is_conflict(store.fail_rotation(
        &id,
        "x",
        "permanent",
        at(63)
    )));

    assert_eq!(
        event_kinds(store),
        [
            "rotation.started",
            "key.created",
            "key.published",
            "key.deleted",
            "rotation.completed",
        ]
    );
    let acks = store.sink_acks(&id).unwrap();
    assert_eq!((acks[0].attempts, acks[0].acked_at), (1, Some(at(2))));
}

fn sink_acknowledgements_are_refused_outside_publishing(store: &Store) {
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();
    // Nothing to publish yet.
    assert!(is_conflict(store.record_sink_ack(
        &id,
        "file",
        None,
        "sha256:test",
        at(1)
    )));
    assert!(is_conflict(
        store.record_sink_failure(&id, "file", "x", None)
    ));
    let (attempt, name) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(1))
        .unwrap();
    store
        .record_created(&id, attempt, &created(&name), b"sealed", "sha256:x", at(1))
        .unwrap();
    // A sink the rotation was not started with.
    assert!(is_conflict(store.record_sink_ack(
        &id,
        "vault",
        None,
        "sha256:test",
        at(2)
    )));
    assert!(is_conflict(store.record_sink_ack(
        "ffffffff",
        "file",
        None,
        "sha256:test",
        at(2)
    )));
    assert!(
        store
            .sink_acks(&id)
            .unwrap()
            .iter()
            .all(|a| a.state == "pending")
    );
}

fn a_requested_attempt_is_resolved_before_the_next_one(store: &Store) {
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();
    let (a1, _) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(1))
        .unwrap();
    // Still `requested` (outcome unknown, never listed for): no next one.
    assert!(is_conflict(store.start_attempt(
        &id,
        |n| format!("k-{n}"),
        at(2)
    )));
    store
        .resolve_attempt(&id, a1, false, Some("timeout"), at(2))
        .unwrap();
    // A create reported late for the abandoned attempt is not recorded.
    assert!(is_conflict(store.record_created(
        &id,
        a1,
        &created("k-1"),
        b"sealed",
        "sha256:x",
        at(2)
    )));
    store.resolve_attempt(&id, a1, true, None, at(3)).unwrap();
    let (a2, name) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(3))
        .unwrap();
    assert_eq!((a2, name.as_str()), (2, "k-2"));
    let attempts = store.attempts(&id).unwrap();
    assert_eq!(attempts[0].state, "cleaned");
    assert_eq!(attempts[0].error.as_deref(), Some("timeout"));
    // The old attempt's number is no longer the open create.
    assert!(is_conflict(store.record_created(
        &id,
        a1,
        &created("k-1"),
        b"sealed",
        "sha256:x",
        at(3)
    )));
    store
        .record_created(&id, a2, &created(&name), b"sealed", "sha256:x", at(4))
        .unwrap();
}

fn key_expiring_is_noted_at_most_once_per_threshold(store: &Store) {
    let ev = |t| {
        Event::new(
            "key.expiring",
            at(t),
            Some("maas"),
            None,
            serde_json::json!({"key_id": "k1"}),
        )
    };
    assert!(store.note_expiring("maas", "k1", "7d", &ev(0)).unwrap());
    assert!(!store.note_expiring("maas", "k1", "7d", &ev(1)).unwrap());
    assert!(store.note_expiring("maas", "k1", "1d", &ev(2)).unwrap());
    assert!(store.note_expiring("maas", "k2", "7d", &ev(3)).unwrap());
    assert_eq!(event_kinds(store).len(), 3);
}

fn delivery_cursors_start_at_the_end_and_only_move_forward(store: &Store) {
    let emit = |kind: &str| {
        store
            .emit(&Event::new(
                kind,
                at(0),
                Some("maas"),
                None,
                serde_json::json!({}),
            ))
            .unwrap()
    };
    emit("key.expiring");
    assert_eq!(store.last_event_seq().unwrap(), 1);

    // A new target starts at the end of the outbox: no replay of history.
    let d = store.delivery("ops").unwrap();
    assert_eq!((d.cursor, d.attempts), (1, 0));
    assert!(store.events_after(d.cursor, 10).unwrap().is_empty());

    emit("rotation.started");
    emit("rotation.completed");
    let pending = store.events_after(1, 10).unwrap();
    assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(store.events_after(1, 1).unwrap().len(), 1, "limit");

    store.delivery_failed("ops", "HTTP 503", at(5)).unwrap();
    store.delivery_failed("ops", "HTTP 503", at(10)).unwrap();
    let d = store.delivery("ops").unwrap();
    assert_eq!(d.cursor, 1);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.next_attempt_at, Some(at(10)));
    assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));

    store.delivery_done("ops", 2).unwrap();
    let d = store.delivery("ops").unwrap();
    assert_eq!((d.cursor, d.attempts, d.last_error), (2, 0, None));
    // A stale acknowledgement does not move the cursor back.
    store.delivery_done("ops", 1).unwrap();
    assert_eq!(store.delivery("ops").unwrap().cursor, 2);

    // Giving up on an event records it and moves past it.
    let third = &pending[1];
    store.dead_letter("ops", third, "HTTP 410", at(20)).unwrap();
    assert_eq!(store.delivery("ops").unwrap().cursor, 3);
    let dead = store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].event_seq,
            dead[0].event_id.as_str(),
            dead[0].kind.as_str()
        ),
        (3, third.id.as_str(), "rotation.completed")
    );

    // Targets are independent.
    assert_eq!(store.delivery("audit").unwrap().cursor, 3);
    assert_eq!(store.delivery("ops").unwrap().cursor, 3);
}

#[test]
fn no_secret_reaches_the_db_file_outside_the_sealed_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    let sealer = Sealer::random();
    let id = created_rotation(&store, &sealer, &["file"]);
    assert_no_plaintext_in_db(&store, SECRET);
    store
        .record_sink_ack(
            &id,
            "file",
            Some("/etc/keys/app-main.env"),
            "sha256:test",
            at(2),
        )
        .unwrap();
    store.record_published(&id, at(2), Some(at(62))).unwrap();
    store.record_old_key_deleted(&id, at(62)).unwrap();
    assert_no_plaintext_in_db(&store, SECRET);
    // Not on disk at all, in the DB or its WAL.
    for file in [path.clone(), sidecar(&path, "-wal")] {
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{} holds the plaintext",
                file.display()
            );
        }
    }
}

/// Scan every column of every row of every table: no text holds `secret`,
/// and the only blob allowed is `rotations.sealed_secret`, which must not
/// hold it in clear either.
fn assert_no_plaintext_in_db(store: &Store, secret: &str) {
    let mut scanned = 0;
    for table in table_names(store) {
        let columns = column_names(store, &table);
        let rows = store
            .read(|tx| tx.query_all(&format!("SELECT * FROM {table}"), p![]))
            .unwrap();
        for row in rows {
            for (i, col) in columns.iter().enumerate() {
                scanned += 1;
                match &row.0[i] {
                    backend::Value::Text(t) => {
                        assert!(!t.contains(secret), "{table}.{col} holds the secret")
                    }
                    backend::Value::Blob(b) => {
                        assert_eq!(
                            (table.as_str(), col.as_str()),
                            ("rotations", "sealed_secret"),
                            "unexpected blob column"
                        );
                        assert!(
                            !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                            "sealed_secret holds the plaintext"
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(scanned > 0, "nothing scanned");
}

fn an_abandoned_attempt_is_cleaned_only_after_several_later_listings_across_the_window(
    store: &Store,
) {
    let id = store
        .begin_rotation(&new_rotation("app-main", &["file"]))
        .unwrap()
        .unwrap();
    let (a1, _) = store
        .start_attempt(&id, |n| format!("k-{n}"), at(10))
        .unwrap();
    store
        .resolve_attempt(&id, a1, false, Some("timeout"), at(10))
        .unwrap();
    let state = |s: &Store| s.attempts(&id).unwrap()[0].state.clone();
    // A listing that started before the attempt proves nothing.
    assert!(!store.note_attempt_absent(&id, a1, at(9)).unwrap());
    assert_eq!(store.orphan_attempts("maas").unwrap()[0].absent_listings, 0);
    // Three later listings inside the window are not enough.
    for m in [11, 12, 13] {
        assert!(!store.note_attempt_absent(&id, a1, at(m)).unwrap());
    }
    assert_eq!(state(store), "abandoned");
    // Once the window has passed, the next absent listing resolves it.
    let after = 10 + schema::ORPHAN_WINDOW.num_minutes() + 1;
    assert!(store.note_attempt_absent(&id, a1, at(after)).unwrap());
    assert_eq!(state(store), "cleaned");
    // Its name stays an orphan's for ever.
    let orphans = store.orphan_attempts("maas").unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].attempt.name, "k-1");
}

#[test]
fn no_copy_of_the_sealed_secret_survives_the_wipe_in_the_db_or_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    let sealer = Sealer::random();
    let id = created_rotation(&store, &sealer, &["file"]);
    let sealed = store.sealed_secret(&id).unwrap().unwrap();
    // Every update of the row writes another copy of its page.
    for i in 0..5 {
        store
            .record_step_failure(&id, "sink down", "retryable", Some(at(3 + i)), at(2 + i))
            .unwrap();
    }
    let holds = |file: &Path| {
        std::fs::read(file)
            .map(|b| b.windows(sealed.len()).any(|w| w == sealed.as_slice()))
            .unwrap_or(false)
    };
    assert!(
        holds(&path) || holds(&sidecar(&path, "-wal")),
        "the sealed value should be on disk before the wipe (or this test proves nothing)"
    );
    store
        .record_sink_ack(
            &id,
            "file",
            Some("/etc/keys/app-main.env"),
            "sha256:test",
            at(9),
        )
        .unwrap();
    store.record_published(&id, at(9), Some(at(69))).unwrap();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = if suffix.is_empty() {
            path.clone()
        } else {
            sidecar(&path, suffix)
        };
        assert!(
            !holds(&file),
            "{} still holds the sealed secret",
            file.display()
        );
        // Nor any 16-byte run of it (a partly overwritten copy).
        if let Ok(bytes) = std::fs::read(&file) {
            for chunk in sealed.chunks(16).filter(|c| c.len() == 16) {
                assert!(
                    !bytes.windows(16).any(|w| w == chunk),
                    "{} holds part of the sealed secret",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn a_symlinked_lock_db_or_key_file_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();

    let path = dir.path().join("state.db");
    std::os::unix::fs::symlink(&victim, super::lock_path(&path)).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    let path = dir.path().join("other.db");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    assert!(Store::open(&path).is_err());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    let key = dir.path().join("state.db.key");
    std::os::unix::fs::symlink(&victim, &key).unwrap();
    assert!(crate::state::seal::Sealer::from_key_file(&key).is_err());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn a_symlinked_wal_or_shm_file_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let path = dir.path().join("state.db");
    {
        Store::open(&path).unwrap();
    }
    for suffix in ["-wal", "-shm"] {
        let side = sidecar(&path, suffix);
        let _ = std::fs::remove_file(&side);
        std::os::unix::fs::symlink(&victim, &side).unwrap();
    }
    if let Ok(store) = Store::open(&path) {
        let sealer = Sealer::random();
        let _ = created_rotation(&store, &sealer, &["file"]);
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// Broke on PostgreSQL only: a provider error body (or key name) holding
/// U+0000 — valid in JSON as `\u0000` — made every write that carried it
/// fail ("invalid byte sequence for encoding UTF8: 0x00"): the check, and
/// a step failure that could never be recorded against the failure
/// budget. PostgreSQL text cannot hold NUL; it is stored as `\u{0}`.
fn a_nul_character_from_a_provider_is_stored_not_refused(store: &Store) {
    store
        .record_check(&CheckRecord {
            policy: "p".into(),
            provider: "x".into(),
            at: at(0),
            next_check_at: None,
            health: "error".into(),
            error: Some("HTTP 400 Bad: a\0b".into()),
            decisions: Some("{}".into()),
            keys: vec![SeenKey {
                key_id: "id-1".into(),
                name: "k\0".into(),
                lineage: "k".into(),
                created_at: None,
                expires_at: None,
                origin: "adopted",
                rotation_id: None,
                unknown_time: None,
            }],
            complete_listing: true,
        })
        .unwrap();
    let err = store
        .policy_state("p")
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    let name = &store.known_keys("p").unwrap()[0].name;
    if store.is_postgres() {
        assert_eq!(
            (err.as_str(), name.as_str()),
            ("HTTP 400 Bad: a\\u{0}b", "k\\u{0}")
        );
    } else {
        assert_eq!((err.as_str(), name.as_str()), ("HTTP 400 Bad: a\0b", "k\0"));
    }
}

/// Issue 13: a write of one policy's rows moves the ledger generation of
/// that policy and of every policy holding a row of one of its key ids
/// (their `claimed_elsewhere` reads it), and of no other; a write naming
/// no policy moves every one. (Before, any write moved one store-wide
/// generation: one policy's first check made every other policy's settled
/// status stale.)
fn a_write_moves_the_ledger_generation_of_its_policy_and_of_policies_sharing_a_key_id_only(
    store: &Store,
) {
    let gens = |store: &Store| ["maas", "b", "c"].map(|p| store.ledger_generation(p));
    store
        .record_check(&listing_of_policy("maas", 0, &["k1"]))
        .unwrap();
    store
        .record_check(&listing_of_policy("b", 0, &["k2"]))
        .unwrap();
    let g0 = gens(store);
    // c's first check records a key id nobody else holds.
    store
        .record_check(&listing_of_policy("c", 1, &["k3"]))
        .unwrap();
    let g1 = gens(store);
    assert_eq!(g1[..2], g0[..2], "c's own keys moved other policies'");
    assert_ne!(g1[2], g0[2]);
    // b claims k1 too: maas's claims change.
    store
        .record_check(&listing_of_policy("b", 2, &["k2", "k1"]))
        .unwrap();
    let g2 = gens(store);
    assert_ne!(g2[0], g1[0], "a rival's claim on maas's key left maas's");
    assert_ne!(g2[1], g1[1]);
    assert_eq!(g2[2], g1[2]);
    // b's complete listing no longer has k1 (gone for b): maas's claims
    // change again.
    store
        .record_check(&listing_of_policy("b", 3, &["k2"]))
        .unwrap();
    let g3 = gens(store);
    assert_ne!(g3[0], g2[0], "a rival letting maas's key go left maas's");
    assert_eq!(g3[2], g2[2]);
    // Rotation writes, named by policy or by rotation id: that policy's
    // (and b's, which holds a row of k1), never c's.
    let id = store
        .begin_rotation(&new_rotation("app-k1", &["f"]))
        .unwrap()
        .unwrap();
    let g4 = gens(store);
    assert_ne!(g4[0], g3[0]);
    assert_eq!(g4[2], g3[2]);
    store.set_next_attempt(&id, Some(at(5))).unwrap();
    let g5 = gens(store);
    assert_ne!(g5[0], g4[0]);
    assert_eq!(g5[2], g4[2]);
    // Conditions are their own policy's only.
    let held = [(
        "app-k3".to_string(),
        "step_failing".to_string(),
        None,
        "m".to_string(),
    )];
    store.sync_conditions("c", &held, at(6)).unwrap();
    let g6 = gens(store);
    assert_eq!(g6[..2], g5[..2]);
    assert_ne!(g6[2], g5[2]);
    // A new fence (a write naming no policy too): every one.
    store.set_fence(store.fence());
    let g7 = gens(store);
    for (now, before) in g7.iter().zip(&g6) {
        assert_ne!(now, before);
    }
    // Another store's never equal.
    let other = Store::open_in_memory().unwrap();
    assert_ne!(
        other.ledger_generation("maas"),
        store.ledger_generation("maas")
    );
}

/// A key listed by checks that changed nothing (which write no key row,
/// so its `last_seen_at` stays at the last check that wrote it) and then
/// missed by one complete listing is `gone` since *that* listing: the
/// planner's "missing for 15 minutes" counts from it. (Before, `gone`
/// keys carried only `last_seen_at`, an hour old here, so one walk that
/// skipped the key after a quiet hour took it for gone for good.)
fn a_key_missed_after_an_hour_of_quiet_checks_is_gone_since_the_listing_that_missed_it(
    store: &Store,
) {
    store.record_check(&listing_of(0, &["k1", "k2"])).unwrap();
    assert_eq!(gone_since_of(store, "k1"), ("live".into(), None));
    // An hour of checks that list both keys and change nothing.
    for m in (10..=60).step_by(10) {
        store
            .record_check_times(&[listing_of(m, &["k1", "k2"])])
            .unwrap();
    }
    // One complete listing misses k1.
    store.record_check(&listing_of(61, &["k2"])).unwrap();
    assert_eq!(gone_since_of(store, "k1"), ("gone".into(), Some(at(61))));
    assert_eq!(gone_since_of(store, "k2"), ("live".into(), None));
    // Still missed later: gone since the first listing that missed it.
    store.record_check(&listing_of(75, &["k2", "k3"])).unwrap();
    assert_eq!(gone_since_of(store, "k1"), ("gone".into(), Some(at(61))));
    // Listed again, then missed again: counted from the new miss.
    store
        .record_check(&listing_of(80, &["k1", "k2", "k3"]))
        .unwrap();
    assert_eq!(gone_since_of(store, "k1"), ("live".into(), None));
    store.record_check(&listing_of(90, &["k2", "k3"])).unwrap();
    assert_eq!(gone_since_of(store, "k1"), ("gone".into(), Some(at(90))));
}

/// A complete listing of policy `maas` at `minutes` that saw `ids`
/// (lineage `app-ID`, adopted).
fn listing_of(minutes: i64, ids: &[&str]) -> CheckRecord {
    listing_of_policy("maas", minutes, ids)
}

/// [`listing_of`] for policy `policy`.
fn listing_of_policy(policy: &str, minutes: i64, ids: &[&str]) -> CheckRecord {
    CheckRecord {
        policy: policy.into(),
        provider: "ob".into(),
        at: at(minutes),
        next_check_at: None,
        health: "ok".into(),
        error: None,
        decisions: Some("{}".into()),
        keys: ids
            .iter()
            .map(|id| SeenKey {
                key_id: id.to_string(),
                name: format!("app-{id}"),
                lineage: format!("app-{id}"),
                created_at: None,
                expires_at: None,
                origin: "adopted",
                rotation_id: None,
                unknown_time: None,
            })
            .collect(),
        complete_listing: true,
    }
}

/// `(state, gone_since)` of key `id` of policy `maas`.
fn gone_since_of(store: &Store, id: &str) -> (String, Option<DateTime<Utc>>) {
    let k = store.known_keys("maas").unwrap();
    let k = k.iter().find(|k| k.key_id == id).unwrap();
    (k.state.clone(), k.gone_since)
}

/// The other way into `gone`: a retiring rotation whose next key the
/// listings before its delete missed ends `next_key_missing`, and that
/// key is gone since the first of those misses (`listing_wait_since`;
/// with none recorded, since the failure: see the next test) — not since
/// it was created (its
/// `last_seen_at`: the create, when quiet checks listed it since).
fn a_next_key_missing_is_gone_since_the_listings_first_missed_it(store: &Store) {
    let id = created_rotation(store, &Sealer::random(), &["file"]);
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    store.record_published(&id, at(2), Some(at(62))).unwrap();
    store.set_listing_wait(&id, Some(at(70))).unwrap();
    store
        .fail_next_key_missing(&id, "the new key is no longer listed", at(90))
        .unwrap();
    assert_eq!(gone_since_of(store, "new-1"), ("gone".into(), Some(at(70))));
}

/// Gone since no earlier than a listing last showed it: a next key a
/// recorded check listed after the delete's listings first missed it
/// (`listing_wait_since`) is gone since that check, not since the first
/// miss. The same read bounds a `gone_at` a writer that predates it left
/// behind (a v2-schema leader still running beside a migrated database
/// neither clears nor stamps it).
fn a_next_key_listed_after_its_first_miss_is_gone_since_that_listing(store: &Store) {
    let id = created_rotation(store, &Sealer::random(), &["file"]);
    store
        .record_sink_ack(&id, "file", None, "sha256:test", at(2))
        .unwrap();
    store.record_published(&id, at(2), Some(at(62))).unwrap();
    store.set_listing_wait(&id, Some(at(70))).unwrap();
    let mut check = listing_of(80, &[]);
    check.keys = vec![SeenKey {
        key_id: "new-1".into(),
        name: format!("app-main-20261122-r{id}-1"),
        lineage: "app-main".into(),
        created_at: Some(at(1)),
        expires_at: Some(at(60 * 24 * 30)),
        origin: "created",
        rotation_id: Some(id.clone()),
        unknown_time: None,
    }];
    check.complete_listing = false;
    store.record_check(&check).unwrap();
    store
        .fail_next_key_missing(&id, "the new key is no longer listed", at(90))
        .unwrap();
    assert_eq!(gone_since_of(store, "new-1"), ("gone".into(), Some(at(80))));
}

/// A key gone in an earlier episode, made live again by `rekey recover`
/// (not by a listing) and then missed again: gone since the new miss, not
/// since the earlier one.
fn a_recovered_key_missed_again_is_gone_since_the_new_miss_not_the_earlier_one(store: &Store) {
    store.record_check(&listing_of(0, &["k9", "k1"])).unwrap();
    store.record_check(&listing_of(10, &["k1"])).unwrap();
    assert_eq!(gone_since_of(store, "k9"), ("gone".into(), Some(at(10))));
    let key = |id: &str| RecoveredKey {
        id: id.into(),
        name: format!("app-{id}"),
        created_at: None,
        expires_at: None,
    };
    let rotation = store
        .record_recovered(
            "maas",
            "app-k9",
            "ob",
            &key("k9"),
            Some(&key("k1")),
            &[("file".into(), "sha256:x".into())],
            Duration::from_secs(3600),
            at(20),
        )
        .unwrap()
        .unwrap();
    assert_eq!(gone_since_of(store, "k9"), ("live".into(), None));
    store
        .fail_next_key_missing(&rotation, "the new key is no longer listed", at(50))
        .unwrap();
    assert_eq!(gone_since_of(store, "k9"), ("gone".into(), Some(at(50))));
}

/// `clamp_key_times` (start-up after the wall clock ran ahead) brings
/// `gone_at` and `last_seen_at` later than now back to now, moving the
/// policy's ledger generation; a key later missed is gone since that
/// listing. On PostgreSQL "now" is never before the database's clock: a
/// node whose clock runs a day slow does not date the stamps back a day.
fn clamping_key_times_brings_stamps_in_the_future_back_to_now(store: &Store) {
    let ahead = Utc::now() + chrono::Duration::days(1);
    let mut check = listing_of(0, &["k1", "k2"]);
    check.at = ahead;
    store.record_check(&check).unwrap();
    let mut check = listing_of(0, &["k2"]);
    check.at = ahead + chrono::Duration::minutes(10);
    store.record_check(&check).unwrap();
    let generation = store.ledger_generation("maas");
    let slow = Utc::now() - chrono::Duration::days(1);
    let before = Utc::now();
    // k1: last_seen_at and gone_at; k2: last_seen_at.
    assert_eq!(store.clamp_key_times(slow).unwrap(), 3);
    let after = Utc::now();
    assert_ne!(store.ledger_generation("maas"), generation);
    let (state, since) = gone_since_of(store, "k1");
    assert_eq!(state, "gone");
    let since = since.unwrap();
    if store.is_postgres() {
        assert!(
            since >= before - chrono::Duration::seconds(5)
                && since <= after + chrono::Duration::seconds(5),
            "{since}: not the database's now"
        );
    } else {
        assert_eq!(since.timestamp_millis(), slow.timestamp_millis());
    }
    // Nothing later than now is left: clamping again changes nothing.
    assert_eq!(store.clamp_key_times(since).unwrap(), 0);
    // k2 (last seen a day ahead) is gone once a later listing misses it.
    let mut check = listing_of(0, &[]);
    check.at = since + chrono::Duration::minutes(1);
    store.record_check(&check).unwrap();
    assert_eq!(gone_since_of(store, "k2"), ("gone".into(), Some(check.at)));
}

/// Drops a test database when it goes away.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        crate::state::pg_test::drop_database(&self.0);
    }
}

/// A SQLite DB at schema v4 (before `keys.gone_at`) holding a key a
/// listing marked `gone` opens and migrates: that key counts from its
/// `last_seen_at` (all v4 kept), a relisted then missed key from the new
/// miss; a read-only open of v4 is refused, and so is a newer schema.
#[test]
fn a_v4_db_holding_gone_keys_upgrades_and_they_are_gone_since_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = Connection::open(&path).unwrap();
        for m in &schema::MIGRATIONS[..4] {
            c.execute_batch(m).unwrap();
        }
        c.pragma_update(None, "user_version", 4).unwrap();
        c.execute_batch(&format!(
            "INSERT INTO keys (policy, key_id, name, lineage, provider, first_seen_at, last_seen_at, origin, state)
             VALUES ('maas', 'k1', 'app-k1', 'app-k1', 'ob', '{t}', '{t}', 'adopted', 'gone'),
                    ('maas', 'k2', 'app-k2', 'app-k2', 'ob', '{t}', '{t}', 'adopted', 'live');",
            t = ts(at(0))
        ))
        .unwrap();
    }
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::Open { .. })
    ));
    let store = Store::open(&path).unwrap();
    assert!(column_names(&store, "keys").contains(&"gone_at".to_string()));
    assert_eq!(gone_since_of(&store, "k1"), ("gone".into(), Some(at(0))));
    assert_eq!(gone_since_of(&store, "k2"), ("live".into(), None));
    store.record_check(&listing_of(30, &["k1", "k2"])).unwrap();
    store.record_check(&listing_of(40, &["k2"])).unwrap();
    assert_eq!(gone_since_of(&store, "k1"), ("gone".into(), Some(at(40))));
    drop(store);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", schema::VERSION + 1)
        .unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::NewerSchema { .. })
    ));
}

/// The same for a PostgreSQL state at version 2 (before `keys.gone_at`):
/// the first node to start migrates it, gone keys count from their
/// `last_seen_at`, a later miss is stamped.
#[test]
fn a_postgres_v2_state_holding_gone_keys_upgrades_and_they_are_gone_since_last_seen() {
    let Some(name) = crate::state::pg_test::fresh_database() else {
        return;
    };
    let _drop = DropDatabase(name.clone());
    crate::state::pg_test::admin_on(
        &name,
        &format!(
            "{}{}UPDATE schema_version SET version = 2;
             INSERT INTO keys (policy, key_id, name, lineage, provider, first_seen_at, last_seen_at, origin, state)
             VALUES ('maas', 'k1', 'app-k1', 'app-k1', 'ob', '{t}', '{t}', 'adopted', 'gone'),
                    ('maas', 'k2', 'app-k2', 'app-k2', 'ob', '{t}', '{t}', 'adopted', 'live');",
            schema::PG_MIGRATIONS[0],
            schema::PG_MIGRATIONS[1],
            t = ts(at(0))
        ),
    )
    .unwrap();
    let opts = crate::state::pg_test::options_for(&name, "node-a");
    assert!(matches!(
        Store::open_postgres_read_only(&opts),
        Err(StoreError::Open { .. })
    ));
    let store = Store::open_postgres(&opts).unwrap();
    assert!(column_names(&store, "keys").contains(&"gone_at".to_string()));
    assert_eq!(gone_since_of(&store, "k1"), ("gone".into(), Some(at(0))));
    assert_eq!(gone_since_of(&store, "k2"), ("live".into(), None));
    store.record_check(&listing_of(30, &["k1", "k2"])).unwrap();
    store.record_check(&listing_of(40, &["k2"])).unwrap();
    assert_eq!(gone_since_of(&store, "k1"), ("gone".into(), Some(at(40))));
}

/// `rekey migrate-state` copies `keys.gone_at`: a key gone since a
/// listing after an hour of quiet checks is gone since that listing in
/// the PostgreSQL copy too, not since it was last seen.
#[test]
fn migrate_state_copies_when_a_key_became_gone() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(&dir.path().join("state.db")).unwrap();
    src.record_check(&listing_of(0, &["k1", "k2"])).unwrap();
    src.record_check_times(&[listing_of(60, &["k1", "k2"])])
        .unwrap();
    src.record_check(&listing_of(61, &["k2"])).unwrap();
    assert_eq!(gone_since_of(&src, "k1"), ("gone".into(), Some(at(61))));
    src.copy_into(&pg).unwrap();
    assert_eq!(gone_since_of(&pg, "k1"), ("gone".into(), Some(at(61))));
    assert_eq!(gone_since_of(&pg, "k2"), ("live".into(), None));
}

// Each transition test above runs against both backends:
// `state::tests::sqlite::NAME` (in memory) and `state::tests::postgres::NAME`
// (a fresh database on the local server; see `pg_test`).
backends!(
    publishing_without_a_retirement_time_is_refused_when_there_is_an_old_key,
    one_rotation_per_lineage_at_a_time,
    a_rotation_runs_from_planned_to_completed_with_its_events_in_order,
    a_rotation_without_an_old_key_completes_on_publish,
    a_provider_that_cannot_delete_leaves_the_old_key_retired,
    failing_after_create_emits_rotation_failed_and_keeps_the_key_sealed_for_the_next_check,
    failing_before_create_leaves_nothing_sealed,
    transitions_applied_twice_are_refused_not_repeated,
    an_abandoned_key_recorded_deleted_twice_sends_key_deleted_once,
    sink_acknowledgements_are_refused_outside_publishing,
    a_requested_attempt_is_resolved_before_the_next_one,
    key_expiring_is_noted_at_most_once_per_threshold,
    delivery_cursors_start_at_the_end_and_only_move_forward,
    an_abandoned_attempt_is_cleaned_only_after_several_later_listings_across_the_window,
    a_nul_character_from_a_provider_is_stored_not_refused,
    a_write_moves_the_ledger_generation_of_its_policy_and_of_policies_sharing_a_key_id_only,
    a_key_missed_after_an_hour_of_quiet_checks_is_gone_since_the_listing_that_missed_it,
    a_next_key_missing_is_gone_since_the_listings_first_missed_it,
    a_recovered_key_missed_again_is_gone_since_the_new_miss_not_the_earlier_one,
    clamping_key_times_brings_stamps_in_the_future_back_to_now,
    a_next_key_listed_after_its_first_miss_is_gone_since_that_listing,
);

/// `sudo rekey abandon -c FILE` (offline) opens the daemon's DB as root; if
/// that run is killed (kill -9, power loss) its `-wal`/`-shm` stay behind,
/// and were they root's (0600), the daemon, running as the `rekey` user,
/// could no longer open its own DB. SQLite's unix VFS gives them the DB
/// file's owner when running as root; this keeps that true.
#[test]
fn files_sqlite_makes_beside_a_db_owned_by_another_user_take_that_users_owner() {
    use std::os::unix::fs::MetadataExt;
    // Only root can hand a file to another user; CI runs as root.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    drop(Store::open(&db).unwrap());
    let (uid, gid) = (65534, 65534);
    for p in [dir.path().to_path_buf(), db.clone(), lock_path(&db)] {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    }
    let store = Store::open(&db).unwrap();
    store
        .begin_rotation(&new_rotation("app-a", &["f"]))
        .unwrap();
    let mut seen = 0;
    for suffix in ["-wal", "-shm", ".lock"] {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        if let Ok(m) = std::fs::metadata(std::path::PathBuf::from(s)) {
            seen += 1;
            assert_eq!(
                (m.uid(), m.gid()),
                (uid, gid),
                "{suffix} is not the DB owner's"
            );
        }
    }
    assert!(seen >= 2, "the WAL files exist while the store is open");
    // What a killed run leaves: the daemon's user can still use them.
    std::mem::forget(store);
}
