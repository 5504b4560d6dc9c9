//! Leadership of a shared (PostgreSQL) state: the lease row and the
//! rotate requests a standby records for the leader (DESIGN §8).
//!
//! Each lease operation is ONE statement judged by the database's clock,
//! never a node's: acquire, renew and resign are single
//! `UPDATE … RETURNING`s on the row `lease.name = 'leader'`. They read
//! `clock_timestamp()`, not `now()`: `now()` is when the transaction
//! began, and an acquisition that waited on the row lock (a deposed
//! leader's transition holds it `FOR SHARE`) would otherwise judge the
//! lease by, and stamp it from, the moment it started waiting — a lease
//! born already expired, taken over at once by the next waiting standby.
//! Every acquisition increments `fence`; a renewal does not. No client-side timeout wraps them (a
//! cancelled statement may still commit); the session's
//! `statement_timeout` bounds them on the server.
//!
//! On a SQLite store each of these returns [`StoreError::Unsupported`]:
//! one host has one writer, and the daemon never calls them there.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::backend::{Tx, p};
use super::{Store, StoreError, opt_ts};

/// A held lease: the fence this holder writes under, and until when it
/// holds it by the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub fence: i64,
    pub until: DateTime<Utc>,
}

/// The lease row as it is now, with the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// `None`: free (never held, or resigned).
    pub holder: Option<String>,
    pub fence: i64,
    pub lease_until: Option<DateTime<Utc>>,
    pub config_digest: Option<String>,
    /// `now()` of the database when read: compare `lease_until` with this,
    /// not with a node's clock.
    pub db_now: DateTime<Utc>,
}

impl LeaseRow {
    /// Held by someone whose lease has not expired (by the DB clock).
    pub fn is_held(&self) -> bool {
        self.holder.is_some() && self.lease_until.is_some_and(|t| t > self.db_now)
    }
}

/// One recorded `POST /rotate` (see `rotate_requests` in the schema).
#[derive(Debug, Clone, PartialEq)]
pub struct RotateRequest {
    pub id: i64,
    pub policy: String,
    pub lineage: Option<String>,
    /// The request's options as JSON (e.g. `{"revoke_old_immediately":true}`).
    pub options: serde_json::Value,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub taken_at: Option<DateTime<Utc>>,
    pub taken_by: Option<String>,
    /// What the leader made of it (JSON), once finished.
    pub result: Option<serde_json::Value>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lease_of(r: &super::Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        fence: r.get(0)?,
        until: opt_ts(r.get(1)?).unwrap_or_default(),
    })
}

const REQUEST_COLS: &str =
    "id, policy, lineage, options, requested_by, requested_at, taken_at, taken_by, result";

fn request_of(r: &super::Row) -> Result<RotateRequest, StoreError> {
    Ok(RotateRequest {
        id: r.get(0)?,
        policy: r.get(1)?,
        lineage: r.get(2)?,
        options: serde_json::from_str(&r.get::<String>(3)?).unwrap_or(serde_json::Value::Null),
        requested_by: r.get(4)?,
        requested_at: opt_ts(r.get(5)?).unwrap_or_default(),
        taken_at: opt_ts(r.get(6)?),
        taken_by: r.get(7)?,
        result: r
            .get::<Option<String>>(8)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl Store {
    /// Run one statement outside a transaction on the PostgreSQL store.
    fn lease_stmt<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let c = self.pg().ok_or(StoreError::Unsupported(what))?;
        f(&c.autocommit())
    }

    /// Take the lease for `holder` for `ttl` (from the database's clock)
    /// and record `config_digest`. Succeeds only when the lease is free or
    /// expired, and every acquisition increments the fence; `None` while
    /// any lease is still running — `holder`'s own included, so two
    /// processes that share an instance name (a cloned host, a restart
    /// before the old lease ran out) can never both hold one fence: the
    /// second waits for the lease to expire. A holder keeps its lease with
    /// [`Store::lease_renew`]. Call [`Store::set_fence`] with the returned
    /// fence before any write.
    pub fn lease_acquire(
        &self,
        holder: &str,
        ttl: Duration,
        config_digest: &str,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_stmt("lease_acquire", |tx| {
            tx.query_opt(
                "UPDATE lease SET
                    fence = fence + 1,
                    holder = ?1,
                    lease_until = clock_timestamp() + CAST(?2 AS BIGINT) * interval '1 millisecond',
                    config_digest = ?3
                 WHERE name = 'leader'
                   AND (holder IS NULL OR lease_until IS NULL OR lease_until <= clock_timestamp())
                 RETURNING fence, lease_until",
                p![holder, millis(ttl), config_digest],
            )?
            .as_ref()
            .map(lease_of)
            .transpose()
        })
    }

    /// Extend `holder`'s lease under `fence` by `ttl` from the database's
    /// `now()`. `None` = lost: expired (even if nobody took it since: an
    /// expired lease is re-taken with [`Store::lease_acquire`], which
    /// increments the fence), resigned, or another holder or fence.
    pub fn lease_renew(
        &self,
        holder: &str,
        fence: i64,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_stmt("lease_renew", |tx| {
            tx.query_opt(
                "UPDATE lease SET lease_until = clock_timestamp() + CAST(?3 AS BIGINT) * interval '1 millisecond'
                 WHERE name = 'leader' AND holder = ?1 AND fence = ?2 AND lease_until > clock_timestamp()
                 RETURNING fence, lease_until",
                p![holder, fence, millis(ttl)],
            )?
            .as_ref()
            .map(lease_of)
            .transpose()
        })
    }

    /// Give the lease up (graceful stop): free the row if `holder` still
    /// holds it under `fence`, and `NOTIFY rekey_lease` in the same
    /// statement so standbys wake at once. Returns whether it was held.
    pub fn lease_resign(&self, holder: &str, fence: i64) -> Result<bool, StoreError> {
        self.lease_stmt("lease_resign", |tx| {
            Ok(tx
                .query_opt(
                    "WITH r AS (
                        UPDATE lease SET holder = NULL, lease_until = NULL
                        WHERE name = 'leader' AND holder = ?1 AND fence = ?2
                        RETURNING fence)
                     SELECT r.fence FROM r, LATERAL pg_notify('rekey_lease', CAST(r.fence AS TEXT))",
                    p![holder, fence],
                )?
                .is_some())
        })
    }

    /// The lease row and the database's clock (`clock_timestamp()`).
    pub fn lease_info(&self) -> Result<LeaseRow, StoreError> {
        self.lease_stmt("lease_info", |tx| {
            let r = tx.query_row(
                "SELECT holder, fence, lease_until, config_digest, clock_timestamp() FROM lease WHERE name = 'leader'",
                p![],
            )?;
            Ok(LeaseRow {
                holder: r.get(0)?,
                fence: r.get(1)?,
                lease_until: opt_ts(r.get(2)?),
                config_digest: r.get(3)?,
                db_now: opt_ts(r.get(4)?).unwrap_or_default(),
            })
        })
    }

    /// Block up to `timeout` for a `NOTIFY rekey_lease` (a leader resigned)
    /// received since the previous call, on a dedicated LISTEN connection
    /// opened by the first call. `true` = woken (a notification, or the
    /// listen connection was lost and will be reopened): look at the lease
    /// now; `false` = the timeout passed. It blocks the calling thread: call
    /// it from `spawn_blocking`, not from an async task.
    pub fn listen_lease(&self, timeout: Duration) -> Result<bool, StoreError> {
        let c = self.pg().ok_or(StoreError::Unsupported("listen_lease"))?;
        // Do not hold the store's lock while waiting: transitions go on.
        let waiter = c.listener()?;
        drop(c);
        Ok(waiter.wait(timeout))
    }

    /// The database's clock (`now()`).
    pub fn db_now(&self) -> Result<DateTime<Utc>, StoreError> {
        self.lease_stmt("db_now", |tx| {
            Ok(opt_ts(tx.query_row("SELECT now()", p![])?.get(0)?).unwrap_or_default())
        })
    }

    /// The seal key's check value recorded in the lease row (never the key).
    pub fn seal_check(&self) -> Result<Option<String>, StoreError> {
        self.lease_stmt("seal_check", |tx| {
            tx.query_row("SELECT seal_check FROM lease WHERE name = 'leader'", p![])?
                .get(0)
        })
    }

    /// Record the seal key's check value (a fenced write once a fence is
    /// set; the first leader records it, later ones compare). Writes no
    /// ledger table: it moves no [`Store::ledger_generation`].
    pub fn set_seal_check(&self, check: &str) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Err(StoreError::Unsupported("set_seal_check"));
        }
        self.tx_quiet(|tx| {
            tx.execute(
                "UPDATE lease SET seal_check = ?1 WHERE name = 'leader'",
                p![check],
            )?;
            Ok(())
        })
    }

    /// Record a `POST /rotate` a standby received, for the leader to carry
    /// out (never fenced: a standby writes it). Returns the request id.
    pub fn request_rotation(
        &self,
        policy: &str,
        lineage: Option<&str>,
        options: &serde_json::Value,
        requested_by: &str,
    ) -> Result<i64, StoreError> {
        if !self.is_postgres() {
            return Err(StoreError::Unsupported("request_rotation"));
        }
        self.tx_unfenced(|tx| {
            tx.query_row(
                "INSERT INTO rotate_requests (policy, lineage, options, requested_by) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                p![policy, lineage, options.to_string(), requested_by],
            )?
            .get(0)
        })
    }

    /// The leader takes every request not yet taken, oldest first (a fenced
    /// write: a deposed leader takes none), and every request an earlier
    /// leader took but never finished (it died between taking and
    /// finishing: without this the request was lost). `taken_by` is
    /// `INSTANCE fence N`, so "earlier" is any other taker: only the
    /// current fence's holder gets here. Carrying a request out twice is
    /// harmless: a manual rotation of a lineage already rotating resumes it.
    /// Writes no ledger table (the leader's loop takes requests on every
    /// turn: a ledger write would make every settled status stale each
    /// time), so it moves no [`Store::ledger_generation`].
    pub fn take_rotation_requests(&self) -> Result<Vec<RotateRequest>, StoreError> {
        let instance = self
            .instance()
            .ok_or(StoreError::Unsupported("take_rotation_requests"))?;
        let by = match self.fence() {
            Some(f) => format!("{instance} fence {f}"),
            None => instance,
        };
        self.tx_quiet(|tx| {
            let mut out = tx
                .query_all(
                    &format!(
                        "UPDATE rotate_requests SET taken_at = now(), taken_by = ?1
                         WHERE taken_at IS NULL OR (result IS NULL AND taken_by IS DISTINCT FROM ?1)
                         RETURNING {REQUEST_COLS}"
                    ),
                    p![by],
                )?
                .iter()
                .map(request_of)
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
    }

    /// Record what became of a taken request (fenced; no ledger table).
    pub fn finish_rotation_request(
        &self,
        id: i64,
        result: &serde_json::Value,
    ) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Err(StoreError::Unsupported("finish_rotation_request"));
        }
        self.tx_quiet(|tx| {
            tx.execute(
                "UPDATE rotate_requests SET result = ?2 WHERE id = ?1",
                p![id, result.to_string()],
            )?;
            Ok(())
        })
    }

    /// One request as it is now (the standby that recorded it polls this
    /// for the leader's result).
    pub fn rotation_request(&self, id: i64) -> Result<Option<RotateRequest>, StoreError> {
        self.lease_stmt("rotation_request", |tx| {
            tx.query_opt(
                &format!("SELECT {REQUEST_COLS} FROM rotate_requests WHERE id = ?1"),
                p![id],
            )?
            .as_ref()
            .map(request_of)
            .transpose()
        })
    }
}
