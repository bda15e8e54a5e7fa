//! The seccomp filter every container runs under: an allow-list equivalent to
//! Docker's default profile for a container without CAP_SYS_ADMIN (the calls it allows
//! unconditionally, `ptrace` and its kin, `chroot` for CAP_SYS_CHROOT, `clone` and
//! `unshare` without namespace flags, `socket` but AF_VSOCK, `personality` with
//! Docker's five values); `clone3` answers ENOSYS so that glibc falls back to `clone`;
//! everything else (keyctl, bpf, perf_event_open, userfaultfd, mount, kexec, modules,
//! io_uring, setns, ...) answers EPERM; a call of another architecture's ABI kills the
//! process.
//!
//! The filter is classic BPF written here for the architecture this binary is built
//! for (x86_64, aarch64, armv7), the numbers coming from the libc crate's tables for
//! that target, plus the few its ARM tables lack (the 32-bit `*_time64` calls glibc
//! tries first, the ARM private calls). [`program`] is pure; [`run`] interprets it on
//! a `seccomp_data`, which is how the tests check every architecture's program (qemu
//! cannot load one); [`load`] installs it for real.

use std::io;

/// Allowed on every architecture Grove builds for.
const COMMON: &[(&str, libc::c_long)] = &[
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("adjtimex", libc::SYS_adjtimex),
    ("bind", libc::SYS_bind),
    ("brk", libc::SYS_brk),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("chdir", libc::SYS_chdir),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range),
    ("connect", libc::SYS_connect),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("eventfd2", libc::SYS_eventfd2),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("fallocate", libc::SYS_fallocate),
    ("fanotify_mark", libc::SYS_fanotify_mark),
    ("fchdir", libc::SYS_fchdir),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("fcntl", libc::SYS_fcntl),
    ("fdatasync", libc::SYS_fdatasync),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("flock", libc::SYS_flock),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("fstat", libc::SYS_fstat),
    ("fstatfs", libc::SYS_fstatfs),
    ("fsync", libc::SYS_fsync),
    ("ftruncate", libc::SYS_ftruncate),
    ("futex", libc::SYS_futex),
    ("futex_waitv", libc::SYS_futex_waitv),
    ("getcpu", libc::SYS_getcpu),
    ("getcwd", libc::SYS_getcwd),
    ("getdents64", libc::SYS_getdents64),
    ("getegid", libc::SYS_getegid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getgroups", libc::SYS_getgroups),
    ("getitimer", libc::SYS_getitimer),
    ("getpeername", libc::SYS_getpeername),
    ("getpgid", libc::SYS_getpgid),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("getpriority", libc::SYS_getpriority),
    ("getrandom", libc::SYS_getrandom),
    ("getresgid", libc::SYS_getresgid),
    ("getresuid", libc::SYS_getresuid),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("getrusage", libc::SYS_getrusage),
    ("getsid", libc::SYS_getsid),
    ("getsockname", libc::SYS_getsockname),
    ("getsockopt", libc::SYS_getsockopt),
    ("gettid", libc::SYS_gettid),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getuid", libc::SYS_getuid),
    ("getxattr", libc::SYS_getxattr),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("io_cancel", libc::SYS_io_cancel),
    ("ioctl", libc::SYS_ioctl),
    ("io_destroy", libc::SYS_io_destroy),
    ("io_getevents", libc::SYS_io_getevents),
    ("ioprio_get", libc::SYS_ioprio_get),
    ("ioprio_set", libc::SYS_ioprio_set),
    ("io_setup", libc::SYS_io_setup),
    ("io_submit", libc::SYS_io_submit),
    ("kill", libc::SYS_kill),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("linkat", libc::SYS_linkat),
    ("listen", libc::SYS_listen),
    ("listxattr", libc::SYS_listxattr),
    ("llistxattr", libc::SYS_llistxattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("lseek", libc::SYS_lseek),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("madvise", libc::SYS_madvise),
    ("membarrier", libc::SYS_membarrier),
    ("memfd_create", libc::SYS_memfd_create),
    ("memfd_secret", libc::SYS_memfd_secret),
    ("mincore", libc::SYS_mincore),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknodat", libc::SYS_mknodat),
    ("mlock", libc::SYS_mlock),
    ("mlock2", libc::SYS_mlock2),
    ("mlockall", libc::SYS_mlockall),
    ("mprotect", libc::SYS_mprotect),
    ("mq_getsetattr", libc::SYS_mq_getsetattr),
    ("mq_notify", libc::SYS_mq_notify),
    ("mq_open", libc::SYS_mq_open),
    ("mq_timedreceive", libc::SYS_mq_timedreceive),
    ("mq_timedsend", libc::SYS_mq_timedsend),
    ("mq_unlink", libc::SYS_mq_unlink),
    ("mremap", libc::SYS_mremap),
    ("msgctl", libc::SYS_msgctl),
    ("msgget", libc::SYS_msgget),
    ("msgrcv", libc::SYS_msgrcv),
    ("msgsnd", libc::SYS_msgsnd),
    ("msync", libc::SYS_msync),
    ("munlock", libc::SYS_munlock),
    ("munlockall", libc::SYS_munlockall),
    ("munmap", libc::SYS_munmap),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nanosleep", libc::SYS_nanosleep),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("pipe2", libc::SYS_pipe2),
    ("pkey_alloc", libc::SYS_pkey_alloc),
    ("pkey_free", libc::SYS_pkey_free),
    ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("ppoll", libc::SYS_ppoll),
    ("prctl", libc::SYS_prctl),
    ("pread64", libc::SYS_pread64),
    ("preadv", libc::SYS_preadv),
    ("preadv2", libc::SYS_preadv2),
    ("prlimit64", libc::SYS_prlimit64),
    ("process_mrelease", libc::SYS_process_mrelease),
    ("pselect6", libc::SYS_pselect6),
    ("pwrite64", libc::SYS_pwrite64),
    ("pwritev", libc::SYS_pwritev),
    ("pwritev2", libc::SYS_pwritev2),
    ("read", libc::SYS_read),
    ("readahead", libc::SYS_readahead),
    ("readlinkat", libc::SYS_readlinkat),
    ("readv", libc::SYS_readv),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("remap_file_pages", libc::SYS_remap_file_pages),
    ("removexattr", libc::SYS_removexattr),
    ("renameat2", libc::SYS_renameat2),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigpending", libc::SYS_rt_sigpending),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_getattr", libc::SYS_sched_getattr),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
    ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_setattr", libc::SYS_sched_setattr),
    ("sched_setparam", libc::SYS_sched_setparam),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_yield", libc::SYS_sched_yield),
    ("seccomp", libc::SYS_seccomp),
    ("semctl", libc::SYS_semctl),
    ("semget", libc::SYS_semget),
    ("semop", libc::SYS_semop),
    ("semtimedop", libc::SYS_semtimedop),
    ("sendfile", libc::SYS_sendfile),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendto", libc::SYS_sendto),
    ("setfsgid", libc::SYS_setfsgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgid", libc::SYS_setgid),
    ("setgroups", libc::SYS_setgroups),
    ("setitimer", libc::SYS_setitimer),
    ("setpgid", libc::SYS_setpgid),
    ("setpriority", libc::SYS_setpriority),
    ("setregid", libc::SYS_setregid),
    ("setresgid", libc::SYS_setresgid),
    ("setresuid", libc::SYS_setresuid),
    ("setreuid", libc::SYS_setreuid),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("setsid", libc::SYS_setsid),
    ("setsockopt", libc::SYS_setsockopt),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("setuid", libc::SYS_setuid),
    ("setxattr", libc::SYS_setxattr),
    ("shmat", libc::SYS_shmat),
    ("shmctl", libc::SYS_shmctl),
    ("shmdt", libc::SYS_shmdt),
    ("shmget", libc::SYS_shmget),
    ("shutdown", libc::SYS_shutdown),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("signalfd4", libc::SYS_signalfd4),
    ("socketpair", libc::SYS_socketpair),
    ("splice", libc::SYS_splice),
    ("statfs", libc::SYS_statfs),
    ("statx", libc::SYS_statx),
    ("symlinkat", libc::SYS_symlinkat),
    ("sync", libc::SYS_sync),
    ("syncfs", libc::SYS_syncfs),
    ("sysinfo", libc::SYS_sysinfo),
    ("tee", libc::SYS_tee),
    ("tgkill", libc::SYS_tgkill),
    ("timer_create", libc::SYS_timer_create),
    ("timer_delete", libc::SYS_timer_delete),
    ("timer_getoverrun", libc::SYS_timer_getoverrun),
    ("timer_gettime", libc::SYS_timer_gettime),
    ("timer_settime", libc::SYS_timer_settime),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("times", libc::SYS_times),
    ("tkill", libc::SYS_tkill),
    ("truncate", libc::SYS_truncate),
    ("umask", libc::SYS_umask),
    ("uname", libc::SYS_uname),
    ("unlinkat", libc::SYS_unlinkat),
    ("utimensat", libc::SYS_utimensat),
    ("vmsplice", libc::SYS_vmsplice),
    ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("chroot", libc::SYS_chroot),
];

/// Allowed on x86_64 besides.
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, libc::c_long)] = &[
    ("access", libc::SYS_access),
    ("alarm", libc::SYS_alarm),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("creat", libc::SYS_creat),
    ("dup2", libc::SYS_dup2),
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_ctl_old", libc::SYS_epoll_ctl_old),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_wait_old", libc::SYS_epoll_wait_old),
    ("eventfd", libc::SYS_eventfd),
    ("fadvise64", libc::SYS_fadvise64),
    ("fork", libc::SYS_fork),
    ("futimesat", libc::SYS_futimesat),
    ("getdents", libc::SYS_getdents),
    ("getpgrp", libc::SYS_getpgrp),
    ("getrlimit", libc::SYS_getrlimit),
    ("get_thread_area", libc::SYS_get_thread_area),
    ("inotify_init", libc::SYS_inotify_init),
    ("lchown", libc::SYS_lchown),
    ("link", libc::SYS_link),
    ("lstat", libc::SYS_lstat),
    ("mkdir", libc::SYS_mkdir),
    ("mknod", libc::SYS_mknod),
    ("mmap", libc::SYS_mmap),
    ("newfstatat", libc::SYS_newfstatat),
    ("open", libc::SYS_open),
    ("pause", libc::SYS_pause),
    ("pipe", libc::SYS_pipe),
    ("poll", libc::SYS_poll),
    ("readlink", libc::SYS_readlink),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("rmdir", libc::SYS_rmdir),
    ("select", libc::SYS_select),
    ("setrlimit", libc::SYS_setrlimit),
    ("set_thread_area", libc::SYS_set_thread_area),
    ("signalfd", libc::SYS_signalfd),
    ("stat", libc::SYS_stat),
    ("symlink", libc::SYS_symlink),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("time", libc::SYS_time),
    ("unlink", libc::SYS_unlink),
    ("utime", libc::SYS_utime),
    ("utimes", libc::SYS_utimes),
    ("vfork", libc::SYS_vfork),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("modify_ldt", libc::SYS_modify_ldt),
    ("io_pgetevents", 333),
];

/// Allowed on aarch64 besides.
#[cfg(target_arch = "aarch64")]
const ARCH: &[(&str, libc::c_long)] = &[
    ("fadvise64", libc::SYS_fadvise64),
    ("mmap", libc::SYS_mmap),
    ("newfstatat", libc::SYS_newfstatat),
    ("io_pgetevents", 292),
];

/// Allowed on 32-bit ARM besides: its own calls, the `*_time64` calls (the same
/// numbers on every 32-bit architecture; glibc tries them first and falls back only
/// on ENOSYS) and the ARM private calls glibc and JITs use.
#[cfg(target_arch = "arm")]
const ARCH: &[(&str, libc::c_long)] = &[
    ("access", libc::SYS_access),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("chown32", libc::SYS_chown32),
    ("creat", libc::SYS_creat),
    ("dup2", libc::SYS_dup2),
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("eventfd", libc::SYS_eventfd),
    ("fchown32", libc::SYS_fchown32),
    ("fcntl64", libc::SYS_fcntl64),
    ("fork", libc::SYS_fork),
    ("fstat64", libc::SYS_fstat64),
    ("fstatat64", libc::SYS_fstatat64),
    ("fstatfs64", libc::SYS_fstatfs64),
    ("ftruncate64", libc::SYS_ftruncate64),
    ("futimesat", libc::SYS_futimesat),
    ("getdents", libc::SYS_getdents),
    ("getegid32", libc::SYS_getegid32),
    ("geteuid32", libc::SYS_geteuid32),
    ("getgid32", libc::SYS_getgid32),
    ("getgroups32", libc::SYS_getgroups32),
    ("getpgrp", libc::SYS_getpgrp),
    ("getresgid32", libc::SYS_getresgid32),
    ("getresuid32", libc::SYS_getresuid32),
    ("getuid32", libc::SYS_getuid32),
    ("inotify_init", libc::SYS_inotify_init),
    ("lchown", libc::SYS_lchown),
    ("lchown32", libc::SYS_lchown32),
    ("link", libc::SYS_link),
    ("_llseek", libc::SYS__llseek),
    ("lstat", libc::SYS_lstat),
    ("lstat64", libc::SYS_lstat64),
    ("mkdir", libc::SYS_mkdir),
    ("mknod", libc::SYS_mknod),
    ("mmap2", libc::SYS_mmap2),
    ("_newselect", libc::SYS__newselect),
    ("open", libc::SYS_open),
    ("pause", libc::SYS_pause),
    ("pipe", libc::SYS_pipe),
    ("poll", libc::SYS_poll),
    ("readlink", libc::SYS_readlink),
    ("recv", libc::SYS_recv),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("rmdir", libc::SYS_rmdir),
    ("send", libc::SYS_send),
    ("sendfile64", libc::SYS_sendfile64),
    ("setfsgid32", libc::SYS_setfsgid32),
    ("setfsuid32", libc::SYS_setfsuid32),
    ("setgid32", libc::SYS_setgid32),
    ("setgroups32", libc::SYS_setgroups32),
    ("setregid32", libc::SYS_setregid32),
    ("setresgid32", libc::SYS_setresgid32),
    ("setresuid32", libc::SYS_setresuid32),
    ("setreuid32", libc::SYS_setreuid32),
    ("setrlimit", libc::SYS_setrlimit),
    ("setuid32", libc::SYS_setuid32),
    ("signalfd", libc::SYS_signalfd),
    ("sigprocmask", libc::SYS_sigprocmask),
    ("sigreturn", libc::SYS_sigreturn),
    ("stat", libc::SYS_stat),
    ("stat64", libc::SYS_stat64),
    ("statfs64", libc::SYS_statfs64),
    ("symlink", libc::SYS_symlink),
    ("truncate64", libc::SYS_truncate64),
    ("ugetrlimit", libc::SYS_ugetrlimit),
    ("unlink", libc::SYS_unlink),
    ("utimes", libc::SYS_utimes),
    ("vfork", libc::SYS_vfork),
    ("arm_fadvise64_64", libc::SYS_arm_fadvise64_64),
    ("arm_sync_file_range", libc::SYS_arm_sync_file_range),
    ("clock_gettime64", 403),
    ("clock_adjtime64", 405),
    ("clock_getres_time64", 406),
    ("clock_nanosleep_time64", 407),
    ("timer_gettime64", 408),
    ("timer_settime64", 409),
    ("timerfd_gettime64", 410),
    ("timerfd_settime64", 411),
    ("utimensat_time64", 412),
    ("pselect6_time64", 413),
    ("ppoll_time64", 414),
    ("io_pgetevents_time64", 416),
    ("recvmmsg_time64", 417),
    ("mq_timedsend_time64", 418),
    ("mq_timedreceive_time64", 419),
    ("semtimedop_time64", 420),
    ("rt_sigtimedwait_time64", 421),
    ("futex_time64", 422),
    ("sched_rr_get_interval_time64", 423),
    ("breakpoint", 0x0f_0001),
    ("cacheflush", 0x0f_0002),
    ("set_tls", 0x0f_0005),
];

/// The `AUDIT_ARCH_*` value of this build's architecture.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E;
/// The `AUDIT_ARCH_*` value of this build's architecture.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7;
/// The `AUDIT_ARCH_*` value of this build's architecture.
#[cfg(target_arch = "arm")]
pub const AUDIT_ARCH: u32 = 0x4000_0028;

/// `CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET` (Docker's
/// mask for `clone`).
pub const NAMESPACE_FLAGS: u32 = 0x7E02_0000;
/// The same and `CLONE_NEWTIME` (for `unshare`; in `clone` that bit is the signal).
pub const UNSHARE_FLAGS: u32 = NAMESPACE_FLAGS | 0x80;
/// The values of `personality` Docker allows: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE
/// with and without PER_LINUX32, and the query.
pub const PERSONALITIES: [u32; 5] = [0, 8, 0x2_0000, 0x2_0008, 0xFFFF_FFFF];
/// `AF_VSOCK`, which `socket` may not open.
pub const AF_VSOCK: u32 = 40;

/// Calls allowed unconditionally, as (name, number) for this architecture.
pub fn allowed() -> impl Iterator<Item = (&'static str, libc::c_long)> {
    COMMON.iter().chain(ARCH.iter()).copied()
}

/// What the filter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call runs.
    Allow,
    /// The call fails with this errno.
    Errno(u16),
    /// The process is killed.
    Kill,
}

const RET_ALLOW: u32 = 0x7FFF_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

impl Verdict {
    fn ret(self) -> u32 {
        match self {
            Self::Allow => RET_ALLOW,
            Self::Errno(e) => RET_ERRNO | u32::from(e),
            Self::Kill => RET_KILL_PROCESS,
        }
    }

    fn of(ret: u32) -> Self {
        match ret & 0xFFFF_0000 {
            RET_ALLOW => Self::Allow,
            RET_ERRNO => Self::Errno(u16::try_from(ret & 0xFFFF).unwrap_or(u16::MAX)),
            _ => Self::Kill,
        }
    }
}

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`: nr, arch, instruction pointer, args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (every target here is little-endian).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_hi(i: u32) -> u32 {
    20 + 8 * i
}

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret(v: Verdict) -> libc::sock_filter {
    op(RET_K, 0, 0, v.ret())
}

fn nr_u32(nr: libc::c_long) -> u32 {
    u32::try_from(nr).unwrap_or(u32::MAX)
}

/// The accumulator holds the call number: `code` runs when it is `nr`, else it is
/// skipped. `code` must end every path in a return.
fn when(prog: &mut Vec<libc::sock_filter>, nr: libc::c_long, code: &[libc::sock_filter]) {
    let skip = u8::try_from(code.len()).expect("a short block");
    prog.push(op(JEQ_K, 0, skip, nr_u32(nr)));
    prog.extend_from_slice(code);
}

/// Allow when argument `arg`'s low word has none of `mask`'s bits, else EPERM.
fn none_of(arg: u32, mask: u32) -> Vec<libc::sock_filter> {
    vec![
        op(LD_W_ABS, 0, 0, arg_lo(arg)),
        op(AND_K, 0, 0, mask),
        op(JEQ_K, 0, 1, 0),
        ret(Verdict::Allow),
        ret(Verdict::Errno(EPERM)),
    ]
}

const EPERM: u16 = 1;
const ENOSYS: u16 = 38;

/// The filter's program for this architecture.
pub fn program() -> Vec<libc::sock_filter> {
    let mut p = vec![
        op(LD_W_ABS, 0, 0, OFF_ARCH),
        op(JEQ_K, 1, 0, AUDIT_ARCH),
        ret(Verdict::Kill),
        op(LD_W_ABS, 0, 0, OFF_NR),
    ];
    for (_, nr) in allowed() {
        when(&mut p, nr, &[ret(Verdict::Allow)]);
    }
    // Threads and processes, but no namespaces.
    when(&mut p, libc::SYS_clone, &none_of(0, NAMESPACE_FLAGS));
    when(&mut p, libc::SYS_unshare, &none_of(0, UNSHARE_FLAGS));
    when(&mut p, libc::SYS_clone3, &[ret(Verdict::Errno(ENOSYS))]);
    when(
        &mut p,
        libc::SYS_socket,
        &[
            op(LD_W_ABS, 0, 0, arg_lo(0)),
            op(JEQ_K, 0, 1, AF_VSOCK),
            ret(Verdict::Errno(EPERM)),
            ret(Verdict::Allow),
        ],
    );
    let mut per = vec![
        op(LD_W_ABS, 0, 0, arg_hi(0)),
        op(JEQ_K, 1, 0, 0),
        ret(Verdict::Errno(EPERM)),
        op(LD_W_ABS, 0, 0, arg_lo(0)),
    ];
    for (i, v) in PERSONALITIES.iter().enumerate() {
        // To the allow after the remaining comparisons and the EPERM.
        let to_allow = u8::try_from(PERSONALITIES.len() - i).unwrap_or(0);
        per.push(op(JEQ_K, to_allow, 0, *v));
    }
    per.push(ret(Verdict::Errno(EPERM)));
    per.push(ret(Verdict::Allow));
    when(&mut p, libc::SYS_personality, &per);
    p.push(ret(Verdict::Errno(EPERM)));
    p
}

/// What `prog` answers for call `nr` of architecture `arch` with `args`: a classic-BPF
/// interpreter of the opcodes [`program`] uses, so that every architecture's program
/// is checked where it cannot be loaded.
pub fn run(prog: &[libc::sock_filter], arch: u32, nr: i32, args: [u64; 6]) -> Verdict {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    while let Some(ins) = prog.get(pc) {
        pc += 1;
        match ins.code {
            LD_W_ABS => {
                let at = ins.k as usize;
                let Some(w) = data.get(at..at + 4) else {
                    return Verdict::Kill;
                };
                acc = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
            AND_K => acc &= ins.k,
            JEQ_K => pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
            RET_K => return Verdict::of(ins.k),
            _ => return Verdict::Kill,
        }
    }
    Verdict::Kill
}

/// Install the filter on this thread (the caller has set `no_new_privs`).
pub fn load() -> io::Result<()> {
    let prog = program();
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::other("filter too long"))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points to `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const fprog,
            0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("seccomp filter: {e}")))
    }
}

#[cfg(test)]
mod tests;
