//! Crash recovery: what a start finds unfinished, and how it resumes.
//!
//! Every transition is committed before the next side effect, so resuming is
//! just driving each unfinished rotation from its last committed state:
//!
//! - `planned` with an attempt left `requested`/`abandoned`: the create's
//!   outcome is unknown. The engine lists the provider for the attempt's
//!   unique name; a key found there was created but its secret was never
//!   captured, so it is deleted; then the next attempt (next name) runs.
//! - `created`: the secret is sealed in the DB; publishing resumes with the
//!   sinks not yet acknowledged (acknowledged ones are not redone).
//! - `retiring`: the grace deadline is in the DB; the old key is deleted
//!   when it passes (after read-back), however long the daemon was down.
//!
//! rekey deletes only old keys of published rotations and keys of its own
//! abandoned attempts, never a key it does not recognise.

use crate::state::{RotationRow, Store, StoreError};

/// Unfinished rotations, logged so an operator sees what a restart resumes.
pub fn unfinished(store: &Store) -> Result<Vec<RotationRow>, StoreError> {
    let rows = store.active_rotations()?;
    for r in &rows {
        let open_attempt = store
            .attempts(&r.id)?
            .into_iter()
            .find(|a| a.state == "requested" || a.state == "abandoned");
        match open_attempt {
            Some(a) => {
                tracing::warn!(policy = %r.policy, lineage = %r.lineage, rotation = %r.id, attempt = a.attempt, name = %a.name, "resuming rotation: create attempt outcome unknown; will list the provider, delete any key of that name, and create again")
            }
            None => {
                tracing::info!(policy = %r.policy, lineage = %r.lineage, rotation = %r.id, state = r.state.as_str(), "resuming rotation from its last committed state")
            }
        }
    }
    Ok(rows)
}
