//! Small shared pieces, by concern: hex and join tokens (`text`), places (`geo`), who a
//! request speaks for (`peers`), files that hold keys (`files`), rate-limited log
//! lines (`logging`). Everything is re-exported here.

mod files;
mod geo;
mod logging;
mod peers;
mod text;

pub use files::{private_database, private_dir, replace_private};
pub use geo::{distance_km, parse_location};
pub use logging::now_and_then;
pub use peers::{MAX_KEY_GENERATION, key_generation, peer_kid, peer_of_kid, speaks_for};
pub use text::{format_join_token, hex, parse_join_token, unhex};
