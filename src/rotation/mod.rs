//! Rotation: the planner (`policy`), the engine that drives each rotation
//! through its states (`engine`), and crash recovery (`recovery`).

pub mod engine;
pub mod policy;
pub mod recovery;

#[cfg(test)]
mod engine_tests;
