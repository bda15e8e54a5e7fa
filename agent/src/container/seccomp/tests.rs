use super::*;

fn call(nr: libc::c_long, args: [u64; 6]) -> Verdict {
    run(&program(), AUDIT_ARCH, i32::try_from(nr).unwrap(), args)
}

#[test]
fn this_architectures_program_refuses_the_dangerous_calls_and_allows_the_rest() {
    let prog = program();
    assert!(prog.len() < 4096, "{} instructions", prog.len());
    for nr in [
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_io_uring_setup,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
    ] {
        assert_eq!(call(nr, [0; 6]), Verdict::Errno(1), "call {nr}");
    }
    let newuser = 0x1000_0000;
    let sigchld = 17;
    assert_eq!(
        call(libc::SYS_clone, [newuser | sigchld, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(libc::SYS_clone, [0x2_0000, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(libc::SYS_clone, [0x003d_0f00, 0, 0, 0, 0, 0]),
        Verdict::Allow,
        "a thread"
    );
    assert_eq!(
        call(libc::SYS_clone, [sigchld, 0, 0, 0, 0, 0]),
        Verdict::Allow
    );
    assert_eq!(
        call(libc::SYS_unshare, [newuser, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(libc::SYS_unshare, [0x80, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(libc::SYS_unshare, [0x400, 0, 0, 0, 0, 0]),
        Verdict::Allow,
        "CLONE_FILES"
    );
    assert_eq!(call(libc::SYS_clone3, [0; 6]), Verdict::Errno(38));
    assert_eq!(
        call(libc::SYS_socket, [40, 1, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(call(libc::SYS_socket, [2, 2, 0, 0, 0, 0]), Verdict::Allow);
    for v in PERSONALITIES {
        assert_eq!(
            call(libc::SYS_personality, [u64::from(v), 0, 0, 0, 0, 0]),
            Verdict::Allow
        );
    }
    assert_eq!(
        call(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    assert_eq!(
        call(libc::SYS_personality, [1 << 32, 0, 0, 0, 0, 0]),
        Verdict::Errno(1)
    );
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_execve,
        libc::SYS_exit_group,
        libc::SYS_ptrace,
    ] {
        assert_eq!(call(nr, [0; 6]), Verdict::Allow, "call {nr}");
    }
    // A number no kernel knows, and another architecture's ABI.
    assert_eq!(call(9999, [0; 6]), Verdict::Errno(1));
    assert_eq!(run(&prog, 0x4000_0003, 0, [0; 6]), Verdict::Kill);
    // x32's numbers (bit 30) on x86_64 are no call allowed here.
    assert_eq!(
        run(&prog, AUDIT_ARCH, 0x4000_0000, [0; 6]),
        Verdict::Errno(1)
    );
}

#[test]
fn every_allowed_call_is_named_once() {
    let mut seen = std::collections::HashSet::new();
    for (name, nr) in allowed() {
        assert!(seen.insert(nr), "{name} ({nr}) twice");
    }
    assert!(seen.len() > 240, "{} calls", seen.len());
}

/// Loaded for real in a child process: keyctl fails with EPERM, clone3 with
/// ENOSYS, and getpid still works.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_filter_loads_and_refuses_keyctl_for_real() {
    // SAFETY: the child makes system calls only and leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return 10;
                }
                if load().is_err() {
                    return 11;
                }
                // SAFETY: raw system calls with integer arguments.
                let k = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
                let ke = io::Error::last_os_error().raw_os_error();
                // SAFETY: as above.
                let c = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
                let ce = io::Error::last_os_error().raw_os_error();
                // SAFETY: as above.
                let pid = unsafe { libc::syscall(libc::SYS_getpid) };
                if k != -1 || ke != Some(libc::EPERM) {
                    return 12;
                }
                if c != -1 || ce != Some(libc::ENOSYS) {
                    return 13;
                }
                if pid <= 0 {
                    return 14;
                }
                0
            })();
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let s = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(s, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
}
