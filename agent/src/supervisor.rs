//! The container supervisor (in progress).

/// Run the supervisor.
pub fn run(_state_dir: &std::path::Path) -> Result<(), String> {
    Err("the supervisor is not built yet".into())
}
