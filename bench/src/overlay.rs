//! overlay (to come).

use crate::Ctx;
use crate::report::Section;

/// Run it.
pub fn run(_ctx: &Ctx) -> Result<Section, String> {
    Err("not built yet".into())
}
