//! The init every container runs as its PID 1, as Docker's `--init` does: the
//! container's first process forks right before the exec, the child becomes the
//! workload and the parent stays behind as init. Init passes every signal it is sent on
//! to the workload (the kernel drops a default-action SIGTERM sent to a PID namespace's
//! PID 1, so a workload that is PID 1 itself would ignore a stop), reaps the orphans
//! that come to it, and exits as the workload exits (its code, or 128 + the signal that
//! ended it); the PID namespace, and everything left in it, ends with it.
//!
//! Init runs with every restriction of the workload (user, capabilities, seccomp,
//! `no_new_privs`, cgroup) and is not dumpable, so the workload cannot read its memory
//! (a copy of the supervisor's). It is part of Grove's binary: no file in the image.

use std::ptr;

/// The signals init takes (to pass on, and SIGCHLD to reap): all but the two nobody
/// can take and those that report a fault of init's own.
fn taken() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set it is given.
    let mut set = unsafe {
        libc::sigfillset(set.as_mut_ptr());
        set.assume_init()
    };
    for sig in [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGSYS,
    ] {
        // SAFETY: a valid set and a valid signal number.
        unsafe { libc::sigdelset(&mut set, sig) };
    }
    set
}

/// Block the signals init takes, before the fork: one sent between the fork and init's
/// first wait stays pending instead of being lost.
pub fn hold() -> Result<(), String> {
    let set = taken();
    // SAFETY: a valid set; the old mask is not wanted.
    let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, ptr::null_mut()) };
    if r != 0 {
        return Err(format!("sigprocmask: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// In the workload's process, before its exec: signals as a new process has them —
/// none blocked, every one at its default action (the supervisor's runtime ignores
/// SIGPIPE, and an ignored signal would stay ignored across the exec).
pub fn release() -> Result<(), String> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition to the default; numbers the kernel
            // keeps for itself fail harmlessly.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; then a valid set for sigprocmask.
    let r = unsafe {
        libc::sigemptyset(none.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), ptr::null_mut())
    };
    if r != 0 {
        return Err(format!("sigprocmask: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How a process ended, as a shell reports it: its code, or 128 + its signal.
fn code_of(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// Reap every child that ended; the workload's end, if it was among them.
fn reap(workload: libc::pid_t) -> Option<i32> {
    let mut ended = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to a status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        if pid == workload {
            ended = code_of(status).or(ended);
        }
    }
}

/// Be init for `workload` (blocked signals held by [`hold`]): pass signals on, reap,
/// and exit as the workload does.
pub fn serve(workload: libc::pid_t) -> ! {
    // SAFETY: prctl with integer arguments and a NUL-terminated name.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"init".as_ptr(), 0, 0, 0);
    }
    let set = taken();
    loop {
        // SAFETY: a valid set; the signal's details are not wanted.
        let sig = unsafe { libc::sigwaitinfo(&set, ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(workload) {
                // SAFETY: ends this process at once, running nothing of the parent's
                // (buffers, atexit handlers) that the fork copied.
                unsafe { libc::_exit(code) };
            }
        } else {
            // SAFETY: kill with a PID and a signal number.
            unsafe { libc::kill(workload, sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_ends_with_its_code_or_128_plus_its_signal() {
        // Status words as wait(2) encodes them.
        assert_eq!(code_of(7 << 8), Some(7));
        assert_eq!(code_of(0), Some(0));
        assert_eq!(code_of(libc::SIGKILL), Some(137));
        assert_eq!(code_of(libc::SIGTERM), Some(143));
        // Stopped (0x7f): not an end.
        assert_eq!(code_of(0x137f), None);
    }

    #[test]
    fn init_takes_every_signal_but_kill_stop_and_its_own_faults() {
        let set = taken();
        // SAFETY: sigismember on a valid set.
        let has = |s| unsafe { libc::sigismember(&set, s) } == 1;
        for s in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGUSR1,
        ] {
            assert!(has(s), "signal {s}");
        }
        for s in [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV] {
            assert!(!has(s), "signal {s}");
        }
    }
}
