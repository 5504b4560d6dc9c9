//! `rekey migrate-state`: copy a SQLite state into an empty PostgreSQL
//! state (DESIGN §8, "Moving a SQLite state").
//!
//! The copy runs in ONE PostgreSQL transaction: every table, row for row
//! and column for column (the PostgreSQL schema has the same columns), the
//! outbox sequence numbers kept as they were (delivery cursors point at
//! them), then the row counts of both sides compared before the commit. A
//! target that holds any row, or whose lease was ever taken, is refused:
//! this never merges two states. The seal key is not in either database;
//! the caller says what to do with it.

use super::backend::{Tx, Value, p};
use super::{Db, Store, StoreError, lock};

/// The tables copied, parents before children (foreign keys).
pub const TABLES: &[&str] = &[
    "rotations",
    "attempts",
    "sink_acks",
    "keys",
    "events",
    "deliveries",
    "dead_letters",
    "policy_state",
    "expiring_notices",
    "sink_targets",
    "conditions",
];

/// What a copy moved: rows per table, in [`TABLES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
}

impl CopyReport {
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

fn count(tx: &dyn Tx, table: &str) -> Result<u64, StoreError> {
    Ok(tx
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), p![])?
        .get::<i64>(0)? as u64)
}

impl Store {
    /// Copy this SQLite state into `target`, an empty PostgreSQL state,
    /// in one transaction (see the module doc). Errors: this store is not
    /// SQLite or `target` not PostgreSQL ([`StoreError::Unsupported`]); the
    /// target is not empty or the counts differ after the copy
    /// ([`StoreError::Conflict`], nothing committed); any database error.
    pub fn copy_into(&self, target: &Store) -> Result<CopyReport, StoreError> {
        let Db::Sqlite(src) = &self.db else {
            return Err(StoreError::Unsupported(
                "copying a state (the source must be a SQLite file)",
            ));
        };
        let Db::Postgres(dst, ..) = &target.db else {
            return Err(StoreError::Unsupported("copying a state into a database"));
        };
        let src = lock(src);
        let dst = lock(dst);
        let tx = dst.begin()?;
        // Nobody may lead (or write) the target while it is filled.
        let lease = tx.query_row(
            "SELECT fence, holder FROM lease WHERE name = 'leader' FOR UPDATE",
            p![],
        )?;
        let (fence, holder): (i64, Option<String>) = (lease.get(0)?, lease.get(1)?);
        if fence != 0 || holder.is_some() {
            return Err(StoreError::Conflict(format!(
                "the target state has been led already (fence {fence}); migrate-state only fills a fresh database"
            )));
        }
        for t in TABLES {
            let n = count(&tx, t)?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "the target state is not empty (table {t} has {n} row(s)); migrate-state only fills a fresh database"
                )));
            }
        }
        let mut report = CopyReport { tables: Vec::new() };
        for t in TABLES {
            let cols: Vec<String> = src
                .query_all(
                    &format!("SELECT name FROM pragma_table_info('{t}') ORDER BY cid"),
                    p![],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<_, _>>()?;
            let list = cols.join(", ");
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let insert = format!("INSERT INTO {t} ({list}) VALUES ({})", marks.join(", "));
            // SQLite's rowid order is insertion order; the PostgreSQL
            // identity `rotations.rowid` is assigned in the same order.
            let rows = src.query_all(&format!("SELECT {list} FROM {t} ORDER BY rowid"), p![])?;
            for r in &rows {
                tx.execute(&insert, &r.0)?;
            }
            let want = count(&*src, t)?;
            let got = count(&tx, t)?;
            if got != want || got != rows.len() as u64 {
                return Err(StoreError::Conflict(format!(
                    "table {t}: {want} row(s) in the source but {got} copied; nothing was committed"
                )));
            }
            report.tables.push((t, got));
        }
        // New events continue after the copied sequence numbers.
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'seq'),
                COALESCE((SELECT MAX(seq) FROM events), 1), (SELECT MAX(seq) FROM events) IS NOT NULL)",
            &[] as &[Value],
        )?;
        tx.commit()?;
        Ok(report)
    }
}
