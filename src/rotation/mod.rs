//! Rotation: the planner (`policy`), the engine that drives each rotation
//! through its states (`engine`), crash recovery (`recovery`), the health
//! rule (`health`) and what the engine publishes (`report`, its per-key
//! tables held compactly in `compact`).

pub mod compact;
pub mod engine;
pub mod gate;
pub mod health;
pub mod policy;
pub mod recovery;
pub mod report;

#[cfg(test)]
mod engine_tests;
