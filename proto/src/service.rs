//! Running under systemd (`Type=notify`, `WatchdogSec=`): readiness once a daemon
//! serves, and a watchdog fed while it runs, over the sd_notify protocol (sd-notify).
//! Without `NOTIFY_SOCKET` both do nothing.

use sd_notify::NotifyState;

/// Tell the service manager the daemon is up (`READY=1`).
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// Feed the watchdog once (`WATCHDOG=1`).
pub fn alive() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// When the service manager asked for a watchdog (`WATCHDOG_USEC`), feed it from a
/// task on this runtime every half period: a runtime that stops running tasks stops
/// feeding it, and the manager restarts the daemon.
pub fn spawn_watchdog() {
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                alive();
            }
        });
    }
}
