//! The versioned SQLite schema.
//!
//! Versions (PRAGMA user_version), one line each:
//! - 1: keys, rotations, attempts, sink_acks, events, deliveries,
//!   dead_letters, policy_state, expiring_notices.
//! - 2 (ownership): `keys.origin` also `orphan`/`unrecognised` (table
//!   rebuilt), indexes `keys_by_id` and `rotations_by_old_key`; `attempts.absent_listings`,
//!   `attempts.absent_since`, index `attempts_not_created`; table `sink_targets`.
//! - 3 (liveness): `rotations.prepared_at`, `rotations.listing_wait_since`,
//!   `rotations.old_disabled_at`, `keys.unknown_time`; table `conditions`.
//! - 4 (issue 13, start-up): index `rotations_with_new_key`.
//! - 5 (liveness): `keys.gone_at`.
//!
//! Timestamps are UTC RFC 3339 text with milliseconds (`2026-11-22T10:00:00.000Z`),
//! which sorts as text. No column outside `rotations.sealed_secret` ever holds
//! key material.
//!
//! ## keys: every matching key a policy has seen
//! - `policy`, `key_id`: primary key; the provider's id.
//! - `name`: the key's name at the provider.
//! - `lineage`: the logical credential it belongs to (recorded at create
//!   time for keys rekey made; the key's own name for adopted keys).
//! - `provider`: provider name from the config.
//! - `created_at`, `expires_at`: as the provider reports them (nullable).
//! - `first_seen_at`: when a scan first listed it. `last_seen_at`: the
//!   last check that recorded it (a check whose listing changes nothing
//!   the row holds writes no key row: `policy_state.last_check_at` says
//!   when the policy was last listed; a key is `gone` once a complete
//!   listing that changed something no longer has it).
//! - `origin`: `created` (a rotation in the store produced it), `adopted`,
//!   `orphan` (named like an attempt that never handed over its key) or
//!   `unrecognised` (looks generated, no rotation produced it). Only the
//!   rotations table proves `created`; rows written before v2 may claim
//!   `created` from a parsed name and are re-checked against it.
//! - `rotation_id`: the rotation that created it, for `created` keys.
//! - `state`: `live`, `retiring` (old key in grace), `deleted`, `retired`
//!   (provider cannot delete; left for a human), `gone` (vanished from lists).
//! - `unknown_time` (v3): JSON `{field: raw value}` of times the provider
//!   listed that rekey cannot parse; the key's lineage reports `unknown_time`
//!   and is not rotated on a guess. NULL when every time parsed.
//! - `gone_at` (v5): when the key became `gone`: the first complete
//!   listing that missed it, or, for the next key of a rotation ended
//!   `next_key_missing`, its `rotations.listing_wait_since` (else the
//!   failure); cleared when a listing or `rekey recover` revives the key.
//!   Meaningful only while `state` is `gone`, and read as the later of it
//!   and `last_seen_at` (a key is never gone since before a listing last
//!   showed it; NULL for rows marked `gone` before v5, whose
//!   `last_seen_at` stands in). Not `last_seen_at`: a check that changes
//!   nothing writes no key row, so `last_seen_at` can be hours older than
//!   the listing that first missed the key, and "missing for 15 minutes"
//!   ([`crate::rotation::policy::PUBLISHED_KEY_GONE_AFTER`]) must count
//!   from that listing.
//!
//! ## rotations: one replacement of one lineage's current key
//! - `id`: 8 hex chars, also in the new key's name via `{rotation}`.
//! - `policy`, `lineage`, `provider`: whose key is replaced.
//! - `state`: `planned → created → published → retiring → completed`, or `failed`.
//! - `reason`, `message`: the planner decision that started it.
//! - `trigger`: `schedule`, `manual` (POST /rotate) or `bootstrap`.
//! - `revoke_old_immediately`: skip the grace period once published (leaked key).
//! - `old_key_id`, `old_key_name`: the current key being replaced (null on bootstrap).
//! - `attempt`: the latest create attempt number (see `attempts`).
//! - `new_key_name`, `new_key_id`, `new_key_created_at`, `new_key_expires_at`:
//!   the next key; the id may be resolved after create (OceanBase returns none).
//! - `sealed_secret`: AEAD-sealed secret fields (nonce ‖ ciphertext, AAD = id),
//!   held only from create until every sink acknowledged, then set to NULL
//!   (kept when a rotation fails after create, so the next check can resume
//!   publishing the key it already made instead of losing it).
//! - `fingerprint`: `sha256:…` of the secret fields, compared on read-back.
//! - `sinks`: JSON array of the sink names fixed at start.
//! - `failures`: failed steps so far; `max_attempts` of the policy bounds it.
//! - `next_attempt_at`: when the driver may act next (backoff, grace deadline).
//! - `grace_seconds`: the policy's grace period when the rotation started.
//! - `started_at`, `created_at`, `published_at`, `retire_at`, `finished_at`.
//! - `error`, `error_class` (`retryable`/`permanent`): the last failure.
//! - `outcome`: for completed rotations: `deleted`, `retired` or `no_old_key`;
//!   for an abandoned rotation whose next key was deleted, `next_key_deleted`;
//!   for one abandoned in grace (its old key kept, not deleted), `old_key_kept`;
//!   for one whose next key has a same-named twin (none deleted), `next_key_kept`.
//! - `prepared_at` (v3): when the provider's after-create step (Tencent: bind
//!   to usage plans) finished; set once, so a sink retrying never re-runs it.
//! - `listing_wait_since` (v3): since when the engine waits for an eventually
//!   consistent listing to show the new key (OceanBase returns no id); that
//!   wait is bounded by time, not by the failure budget.
//! - `old_disabled_at` (v3): when the old key was unbound and disabled
//!   before its delete (Tencent); set once, so a failing delete never
//!   redoes it.
//! - `error_class` may also be `next_key_missing` (the next key vanished in
//!   grace: the one way from `retiring` to `failed`) or `abandoned`.
//!
//! Index `rotations_one_active` makes "at most one rotation per lineage at a
//! time" a constraint, not a convention. The others keep start-up and every
//! check independent of how long the history is: `rotations_by_lineage`
//! (latest rotation per lineage), `rotations_by_outcome` (last success),
//! `rotations_active` and `rotations_resumable` (partial: only unfinished or
//! resumable rows), `attempts_unresolved` (partial).
//!
//! ## attempts: each create call of a rotation
//! - `rotation_id`, `attempt`: primary key.
//! - `name`: the unique key name this attempt asks for.
//! - `state`: `requested` (committed before the create call), `created`,
//!   `abandoned` (outcome unknown after a crash or error), `cleaned` (an
//!   abandoned attempt's key was found and deleted, or was never made).
//!   A `cleaned` attempt's name stays recognised for ever: a late create
//!   that shows up afterwards is still deleted, never adopted.
//! - `started_at`, `finished_at`, `error`.
//! - `absent_listings` (v2): complete listings that started after the
//!   attempt and did not show its name; `absent_since` (v2): the start of the
//!   first of them. An abandoned attempt becomes `cleaned` without its key
//!   being seen only after [`ORPHAN_ABSENT_LISTINGS`] such listings spanning
//!   [`ORPHAN_WINDOW`] (eventually consistent lists, DESIGN §3).
//!
//! Index `attempts_not_created` (v2, partial): the attempts whose names are
//! orphans to watch for (requested, abandoned, cleaned).
//!
//! ## sink_acks: per-sink publication of one rotation's new key
//! - `rotation_id`, `sink`: primary key.
//! - `state`: `pending`, `acked`, `failed` (last try failed; retried).
//! - `attempts`, `next_attempt_at`, `last_error`, `acked_at`.
//! - `detail`: what the sink reported (file path, Vault version).
//! - `fingerprint`: what the sink's read-back must return for the new key
//!   (sinks that transform the secret, like the file sink's env format,
//!   fingerprint what they store); compared before the old key is deleted.
//!
//! ## events: the notification outbox
//! - `seq`: delivery order.
//! - `id`: the stable `webhook-id` (`msg_…`), the same on every retry.
//! - `type`, `at`, `policy`, `rotation_id`, `data` (JSON; never a secret).
//!
//! ## deliveries: one row per notification target
//! - `target`: notify name. `cursor`: last event `seq` handled.
//! - `attempts`, `next_attempt_at`, `last_error`: retry state of the event
//!   after the cursor.
//!
//! ## dead_letters: events a target never accepted after every retry
//! - `target`, `event_seq`, `event_id`, `type`, `at`, `error`.
//!
//! ## policy_state: what the scheduler must not forget
//! - `policy`: primary key. `last_check_at`, `next_check_at`.
//! - `health`: the last computed health. `last_error`.
//! - `decisions`: JSON of the last plan per lineage (reason, message).
//!
//! ## sink_targets (v2): which policy and lineage last wrote each target
//! - `target`: primary key; the sink kind and the rendered target
//!   (`file:/etc/keys/app.env`, `vault:https://vault:8200/secret/maas/app`).
//! - `sink`, `policy`, `lineage`, `rotation_id`: the last writer.
//! - `written_at`.
//!
//! A sink never overwrites a target whose row names another policy or
//! lineage; targets acknowledged before v2 are claimed from `sink_acks` on
//! first use, so an upgrade does not lock itself out.
//!
//! ## conditions (v3): stuck conditions that hold now (DESIGN §4)
//! - `policy`, `lineage`, `condition` (e.g. `step_failing`): primary key.
//! - `since`: when it started to hold; its event was sent then, once.
//! - `message`: why, as shown in `status`.
//!
//! A row is deleted when its condition clears; the event goes out again
//! only if it comes back.
//!
//! ## expiring_notices: `key.expiring` sent, at most once per threshold
//! - `policy`, `key_id`, `threshold` (e.g. `7d`): primary key. `at`.
//!   `threshold = 'unrecognised'` marks the one `key.unrecognised` event
//!   sent for that key.

/// The schema version this build writes and understands.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// How long an abandoned create attempt's name is watched for before it is
/// marked `cleaned` without having been seen (eventually consistent lists:
/// OceanBase documents none, the emulator's `--list-delay` models minutes).
pub const ORPHAN_WINDOW: chrono::Duration = chrono::Duration::minutes(15);

/// How many complete listings that started after an abandoned attempt must
/// miss its name (across [`ORPHAN_WINDOW`]) before it is marked `cleaned`.
pub const ORPHAN_ABSENT_LISTINGS: u32 = 3;

/// Migration `n` takes the DB from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE keys (
    policy TEXT NOT NULL,
    key_id TEXT NOT NULL,
    name TEXT NOT NULL,
    lineage TEXT NOT NULL,
    provider TEXT NOT NULL,
    created_at TEXT,
    expires_at TEXT,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('created', 'adopted')),
    rotation_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('live', 'retiring', 'deleted', 'retired', 'gone')),
    PRIMARY KEY (policy, key_id)
);
CREATE INDEX keys_by_lineage ON keys (policy, lineage);

CREATE TABLE rotations (
    id TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    lineage TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('planned', 'created', 'published', 'retiring', 'completed', 'failed')),
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    trigger TEXT NOT NULL,
    revoke_old_immediately INTEGER NOT NULL DEFAULT 0,
    old_key_id TEXT,
    old_key_name TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    new_key_name TEXT,
    new_key_id TEXT,
    new_key_created_at TEXT,
    new_key_expires_at TEXT,
    sealed_secret BLOB,
    fingerprint TEXT,
    sinks TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    grace_seconds INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    created_at TEXT,
    published_at TEXT,
    retire_at TEXT,
    finished_at TEXT,
    error TEXT,
    error_class TEXT,
    outcome TEXT
);
CREATE UNIQUE INDEX rotations_one_active ON rotations (policy, lineage)
    WHERE state NOT IN ('completed', 'failed');
CREATE INDEX rotations_by_policy ON rotations (policy, started_at);
CREATE INDEX rotations_by_lineage ON rotations (policy, lineage, started_at);
CREATE INDEX rotations_by_outcome ON rotations (policy, state, finished_at);
CREATE INDEX rotations_active ON rotations (started_at)
    WHERE state NOT IN ('completed', 'failed');
CREATE INDEX rotations_resumable ON rotations (policy)
    WHERE state = 'failed' AND sealed_secret IS NOT NULL;

CREATE TABLE attempts (
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('requested', 'created', 'abandoned', 'cleaned')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT,
    PRIMARY KEY (rotation_id, attempt)
);
CREATE INDEX attempts_unresolved ON attempts (rotation_id)
    WHERE state IN ('requested', 'abandoned');

CREATE TABLE sink_acks (
    rotation_id TEXT NOT NULL REFERENCES rotations (id),
    sink TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'acked', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error TEXT,
    acked_at TEXT,
    detail TEXT,
    fingerprint TEXT,
    PRIMARY KEY (rotation_id, sink)
);

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    policy TEXT,
    rotation_id TEXT,
    data TEXT NOT NULL
);

CREATE TABLE deliveries (
    target TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error TEXT
);

CREATE TABLE dead_letters (
    target TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (target, event_seq)
);

CREATE TABLE policy_state (
    policy TEXT PRIMARY KEY,
    last_check_at TEXT,
    next_check_at TEXT,
    health TEXT,
    last_error TEXT,
    decisions TEXT
);

CREATE TABLE expiring_notices (
    policy TEXT NOT NULL,
    key_id TEXT NOT NULL,
    threshold TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (policy, key_id, threshold)
);
"#,
    r#"
CREATE TABLE keys_v2 (
    policy TEXT NOT NULL,
    key_id TEXT NOT NULL,
    name TEXT NOT NULL,
    lineage TEXT NOT NULL,
    provider TEXT NOT NULL,
    created_at TEXT,
    expires_at TEXT,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('created', 'adopted', 'orphan', 'unrecognised')),
    rotation_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('live', 'retiring', 'deleted', 'retired', 'gone')),
    PRIMARY KEY (policy, key_id)
);
INSERT INTO keys_v2 SELECT policy, key_id, name, lineage, provider, created_at, expires_at,
    first_seen_at, last_seen_at, origin, rotation_id, state FROM keys;
DROP TABLE keys;
ALTER TABLE keys_v2 RENAME TO keys;
CREATE INDEX keys_by_lineage ON keys (policy, lineage);
CREATE INDEX keys_by_id ON keys (key_id);
CREATE INDEX rotations_by_old_key ON rotations (policy, old_key_id);

ALTER TABLE attempts ADD COLUMN absent_listings INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN absent_since TEXT;
CREATE INDEX attempts_not_created ON attempts (rotation_id)
    WHERE state IN ('requested', 'abandoned', 'cleaned');

CREATE TABLE sink_targets (
    target TEXT PRIMARY KEY,
    sink TEXT NOT NULL,
    policy TEXT NOT NULL,
    lineage TEXT NOT NULL,
    rotation_id TEXT,
    written_at TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE rotations ADD COLUMN prepared_at TEXT;
ALTER TABLE rotations ADD COLUMN listing_wait_since TEXT;
ALTER TABLE rotations ADD COLUMN old_disabled_at TEXT;
ALTER TABLE keys ADD COLUMN unknown_time TEXT;
CREATE TABLE conditions (
    policy TEXT NOT NULL,
    lineage TEXT NOT NULL,
    condition TEXT NOT NULL,
    since TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (policy, lineage, condition)
);
"#,
    // v4 (issue 13, start-up): the planner's "keys rekey created" reads
    // only rotations that named a key, not the whole history.
    r#"
CREATE INDEX rotations_with_new_key ON rotations (policy, started_at)
    WHERE new_key_name IS NOT NULL;
"#,
    // v5 (liveness): when a key became `gone`.
    r#"
ALTER TABLE keys ADD COLUMN gone_at TEXT;
"#,
];

// ------------------------------------------------------------- PostgreSQL

/// The PostgreSQL schema version this build writes and understands.
pub const PG_VERSION: i64 = PG_MIGRATIONS.len() as i64;

/// The `pg_advisory_xact_lock` key held while migrating (ASCII "rekey"),
/// so nodes starting together migrate one after the other.
pub const PG_MIGRATION_LOCK: i64 = 0x72_65_6b_65_79;

/// PostgreSQL migrations; `n` takes the schema from version `n` to `n + 1`,
/// each in one transaction. The version is the one row of
/// `schema_version(version BIGINT)`.
///
/// Version 1 is the SQLite schema at its version 3, table for table and
/// column for column (the meanings above hold), with these portable types
/// and differences:
/// - timestamps stay TEXT (RFC 3339, milliseconds, `Z`); every TEXT column
///   is `COLLATE "C"`, so text sorts and compares bytewise as in SQLite
///   whatever the database's locale; the database's clock is `now()`, and
///   deadlines that decide a delete compare `CAST(col AS timestamptz)` with
///   it ([`crate::state::Store::retire_wait`]);
/// - integers are BIGINT (booleans such as `revoke_old_immediately` 0/1);
/// - `rotations.sealed_secret` is BYTEA;
/// - `rotations.rowid` is an identity column in insertion order (SQLite's
///   implicit `rowid`, which `history` and `policy_rotations` order by);
/// - `events.seq` is an identity column (`GENERATED BY DEFAULT`, so
///   `rekey migrate-state` copies the sequence numbers the delivery
///   cursors point at). Only the fenced leader appends events, one
///   transaction at a time, so sequence numbers commit in order.
///
/// Version 2 adds the index `rotations_with_new_key`, SQLite's version 4;
/// version 3 adds `keys.gone_at`, SQLite's version 5.
///
/// And two tables only a shared state has:
///
/// ## lease: who leads (one row, `name = 'leader'`)
/// - `holder`: the `[daemon] instance` holding it; NULL when free (never
///   held, or resigned).
/// - `fence`: incremented by every acquisition (by any holder, also one
///   that already holds it), never by a renewal; each write transaction of the leader
///   checks it under `FOR SHARE` ([`crate::state::StoreError::Fenced`]).
/// - `lease_until` (TIMESTAMPTZ): the holder leads until then, by the
///   database's clock; renewals push it forward.
/// - `config_digest`: the digest of the leader's configuration (what must
///   agree across nodes); a node with another digest refuses to lead.
/// - `seal_check`: a check value derived from the seal key (never the
///   key): a node whose key gives another value refuses to lead.
///
/// ## rotate_requests: `POST /rotate` received by a standby
/// - `id` (identity), `policy`, `lineage` (NULL: every lineage of the
///   policy), `options` (JSON text: `revoke_old_immediately`, …).
/// - `requested_by` (instance), `requested_at` (TIMESTAMPTZ, DB clock).
/// - `taken_at`, `taken_by`: when and by which leader it was taken
///   (`INSTANCE fence N`; a request taken under another fence and never
///   finished is taken again by the next leader);
///   `result`: what the leader made of it (JSON text), NULL until done.
pub const PG_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);
INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);

CREATE TABLE keys (
    policy TEXT COLLATE "C" NOT NULL,
    key_id TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    lineage TEXT COLLATE "C" NOT NULL,
    provider TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C",
    expires_at TEXT COLLATE "C",
    first_seen_at TEXT COLLATE "C" NOT NULL,
    last_seen_at TEXT COLLATE "C" NOT NULL,
    origin TEXT COLLATE "C" NOT NULL CHECK (origin IN ('created', 'adopted', 'orphan', 'unrecognised')),
    rotation_id TEXT COLLATE "C",
    state TEXT COLLATE "C" NOT NULL CHECK (state IN ('live', 'retiring', 'deleted', 'retired', 'gone')),
    unknown_time TEXT COLLATE "C",
    PRIMARY KEY (policy, key_id)
);
CREATE INDEX keys_by_lineage ON keys (policy, lineage);
CREATE INDEX keys_by_id ON keys (key_id);

CREATE TABLE rotations (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT COLLATE "C" PRIMARY KEY,
    policy TEXT COLLATE "C" NOT NULL,
    lineage TEXT COLLATE "C" NOT NULL,
    provider TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL CHECK (state IN ('planned', 'created', 'published', 'retiring', 'completed', 'failed')),
    reason TEXT COLLATE "C" NOT NULL,
    message TEXT COLLATE "C" NOT NULL,
    trigger TEXT COLLATE "C" NOT NULL,
    revoke_old_immediately BIGINT NOT NULL DEFAULT 0,
    old_key_id TEXT COLLATE "C",
    old_key_name TEXT COLLATE "C",
    attempt BIGINT NOT NULL DEFAULT 0,
    new_key_name TEXT COLLATE "C",
    new_key_id TEXT COLLATE "C",
    new_key_created_at TEXT COLLATE "C",
    new_key_expires_at TEXT COLLATE "C",
    sealed_secret BYTEA,
    fingerprint TEXT COLLATE "C",
    sinks TEXT COLLATE "C" NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT COLLATE "C",
    grace_seconds BIGINT NOT NULL,
    started_at TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C",
    published_at TEXT COLLATE "C",
    retire_at TEXT COLLATE "C",
    finished_at TEXT COLLATE "C",
    error TEXT COLLATE "C",
    error_class TEXT COLLATE "C",
    outcome TEXT COLLATE "C",
    prepared_at TEXT COLLATE "C",
    listing_wait_since TEXT COLLATE "C",
    old_disabled_at TEXT COLLATE "C"
);
CREATE UNIQUE INDEX rotations_one_active ON rotations (policy, lineage)
    WHERE state NOT IN ('completed', 'failed');
CREATE INDEX rotations_by_policy ON rotations (policy, started_at);
CREATE INDEX rotations_by_lineage ON rotations (policy, lineage, started_at);
CREATE INDEX rotations_by_outcome ON rotations (policy, state, finished_at);
CREATE INDEX rotations_active ON rotations (started_at)
    WHERE state NOT IN ('completed', 'failed');
CREATE INDEX rotations_resumable ON rotations (policy)
    WHERE state = 'failed' AND sealed_secret IS NOT NULL;
CREATE INDEX rotations_by_old_key ON rotations (policy, old_key_id);

CREATE TABLE attempts (
    rotation_id TEXT COLLATE "C" NOT NULL REFERENCES rotations (id),
    attempt BIGINT NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL CHECK (state IN ('requested', 'created', 'abandoned', 'cleaned')),
    started_at TEXT COLLATE "C" NOT NULL,
    finished_at TEXT COLLATE "C",
    error TEXT COLLATE "C",
    absent_listings BIGINT NOT NULL DEFAULT 0,
    absent_since TEXT COLLATE "C",
    PRIMARY KEY (rotation_id, attempt)
);
CREATE INDEX attempts_unresolved ON attempts (rotation_id)
    WHERE state IN ('requested', 'abandoned');
CREATE INDEX attempts_not_created ON attempts (rotation_id)
    WHERE state IN ('requested', 'abandoned', 'cleaned');

CREATE TABLE sink_acks (
    rotation_id TEXT COLLATE "C" NOT NULL REFERENCES rotations (id),
    sink TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'acked', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT COLLATE "C",
    last_error TEXT COLLATE "C",
    acked_at TEXT COLLATE "C",
    detail TEXT COLLATE "C",
    fingerprint TEXT COLLATE "C",
    PRIMARY KEY (rotation_id, sink)
);

CREATE TABLE events (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    type TEXT COLLATE "C" NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    policy TEXT COLLATE "C",
    rotation_id TEXT COLLATE "C",
    data TEXT COLLATE "C" NOT NULL
);

CREATE TABLE deliveries (
    target TEXT COLLATE "C" PRIMARY KEY,
    cursor BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT COLLATE "C",
    last_error TEXT COLLATE "C"
);

CREATE TABLE dead_letters (
    target TEXT COLLATE "C" NOT NULL,
    event_seq BIGINT NOT NULL,
    event_id TEXT COLLATE "C" NOT NULL,
    type TEXT COLLATE "C" NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    error TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (target, event_seq)
);

CREATE TABLE policy_state (
    policy TEXT COLLATE "C" PRIMARY KEY,
    last_check_at TEXT COLLATE "C",
    next_check_at TEXT COLLATE "C",
    health TEXT COLLATE "C",
    last_error TEXT COLLATE "C",
    decisions TEXT COLLATE "C"
);

CREATE TABLE expiring_notices (
    policy TEXT COLLATE "C" NOT NULL,
    key_id TEXT COLLATE "C" NOT NULL,
    threshold TEXT COLLATE "C" NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (policy, key_id, threshold)
);

CREATE TABLE sink_targets (
    target TEXT COLLATE "C" PRIMARY KEY,
    sink TEXT COLLATE "C" NOT NULL,
    policy TEXT COLLATE "C" NOT NULL,
    lineage TEXT COLLATE "C" NOT NULL,
    rotation_id TEXT COLLATE "C",
    written_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE conditions (
    policy TEXT COLLATE "C" NOT NULL,
    lineage TEXT COLLATE "C" NOT NULL,
    condition TEXT COLLATE "C" NOT NULL,
    since TEXT COLLATE "C" NOT NULL,
    message TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (policy, lineage, condition)
);

CREATE TABLE lease (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT COLLATE "C",
    fence BIGINT NOT NULL DEFAULT 0,
    lease_until TIMESTAMPTZ,
    config_digest TEXT COLLATE "C",
    seal_check TEXT COLLATE "C"
);
INSERT INTO lease (name, holder, fence, lease_until, config_digest, seal_check)
    VALUES ('leader', NULL, 0, NULL, NULL, NULL);

CREATE TABLE rotate_requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    policy TEXT COLLATE "C" NOT NULL,
    lineage TEXT COLLATE "C",
    options TEXT COLLATE "C" NOT NULL,
    requested_by TEXT COLLATE "C" NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    taken_at TIMESTAMPTZ,
    taken_by TEXT COLLATE "C",
    result TEXT COLLATE "C"
);
CREATE INDEX rotate_requests_open ON rotate_requests (id) WHERE taken_at IS NULL;
"#,
    // v2: SQLite's v4 index (the planner's "keys rekey created" reads only
    // rotations that named a key, not the whole history).
    r#"
CREATE INDEX rotations_with_new_key ON rotations (policy, started_at)
    WHERE new_key_name IS NOT NULL;
"#,
    // v3: SQLite's v5 column (when a key became `gone`).
    r#"
ALTER TABLE keys ADD COLUMN gone_at TEXT COLLATE "C";
"#,
];
