//! Log lines said at most once a period.

/// Whether something said at most once every `secs` seconds may be said now (`last`
/// holds when it was said, Unix seconds; 0 never).
pub fn now_and_then(last: &std::sync::atomic::AtomicU64, secs: u64) -> bool {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    let before = last.load(Ordering::Relaxed);
    (before == 0 || now >= before + secs)
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
