//! The diagnosis worker's jail, modelled on Firecracker's jailer and seccomp filters.
//!
//! A worker parses memory a hostile guest wrote; a parser bug could hand the guest code
//! execution in the worker. The jail makes that worth nothing: once the worker has what it
//! needs open (its socket, the guest RAM descriptor, the kernel's debug info, the rules,
//! the core it will write), and before it reads a byte of guest memory, [`confine`]
//!
//! 1. unshares what the host allows of a user, mount, network and PID namespace (each
//!    may be refused: a host can forbid unprivileged user namespaces). In the mount
//!    namespace the root becomes an empty, read-only tmpfs: no host path resolves. In the
//!    PID namespace the worker forks once; the child, PID 1 of the new namespace, does the
//!    diagnosis and sees no other process, and the parent waits for it and ends the way it
//!    ended (exit status or signal), so the daemon sees one process as before;
//! 2. makes itself undumpable (no core dump of guest memory on a crash, no `ptrace` by
//!    other processes of the same user), sets `no_new_privs`;
//! 3. installs a seccomp filter ([`filter`]) that allows only the system calls diagnosis
//!    makes, and kills the whole process (`SECCOMP_RET_KILL_PROCESS`) on any other: a
//!    violation is loud, the daemon reports the worker "killed by signal SIGSYS".
//!
//! What was applied and what the host refused goes into the report's `tool.sandbox`.
//!
//! The allow-list was collected by running real workers under `strace -f` (test-kernel
//! guests with debug info, rules and a core; a Linux guest through the daemon), not
//! guessed; `tests/jail.rs` runs every escape the issue lists against the real worker.

use std::os::fd::RawFd;

use ambulance_report::SandboxInfo;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

#[cfg(debug_assertions)]
pub mod escape;

/// Test hook, honoured only by debug builds (what `cargo test` builds and runs — the real
/// worker binary, its real jail): after confining itself the worker tries the escape this
/// names (one of [`ESCAPES`], with `:PID` the process to aim at, e.g. the daemon) instead
/// of diagnosing, and answers with what happened, if it still lives (see `escape`).
pub const ESCAPE_ENV: &str = "AMBULANCE_WORKER_TEST_ESCAPE";

/// The escapes a jailed worker can be told to try ([`ESCAPE_ENV`]), and whether the
/// filter kills it for trying (`true`) or the attempt is harmless and allowed (`false`:
/// a private, copy-on-write mapping of guest RAM).
pub const ESCAPES: &[(&str, bool)] = &[
    ("reopen-ram-rdwr", true),
    ("mprotect-ram-writable", true),
    ("mmap-ram-shared-writable", true),
    ("mmap-ram-private-writable", false),
    ("write-ram-fd", true),
    ("truncate-ram-fd", true),
    ("madvise-remove-ram", true),
    ("ptrace-attach", true),
    ("process-vm-writev", true),
    ("process-vm-readv", true),
    ("kill-other", true),
    ("execve", true),
    ("fork", true),
    ("socket", true),
    ("open-file", true),
    ("create-file", true),
];

/// Where the empty root is mounted before `pivot_root` makes it `/`: the first of these
/// directories that takes the mount (`/proc` is there on every Linux host). Either is
/// only a mount point in the worker's own mount namespace; the host's is not touched.
const ROOT_MOUNT_POINTS: [&str; 2] = ["/tmp", "/proc"];

/// Exit statuses 128 + N of the PID-1 child mean "ended by signal N" (see
/// [`on_fatal_signal`]).
const SIGNAL_EXIT_BASE: i32 = 128;

/// The descriptors the jailed worker may write to.
pub struct Outputs {
    /// Its socket to the daemon.
    pub socket: RawFd,
    /// The core file it writes, if asked for one.
    pub core: Option<RawFd>,
}

/// Confines the calling process (the worker, single-threaded, with every file it needs
/// already open) as the module says. Returns in the process that is to diagnose — with a
/// PID namespace, that is a new child; the original process then never returns (it waits
/// for the child and exits as it did). Fails only if the seccomp filter cannot be
/// installed: the worker then must not read guest memory.
pub fn confine(outputs: &Outputs) -> Result<SandboxInfo, String> {
    let mut info = SandboxInfo::default();
    let pid_namespace = unshare_namespaces(&mut info);
    if pid_namespace {
        become_pid_one(&mut info)?;
    }
    match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => info.applied.push("undumpable".into()),
        Err(e) => info.refused.push(format!("undumpable: {e}")),
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    info.applied.push("no_new_privs".into());
    let program = filter(outputs, nix::unistd::getpid().as_raw())
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    seccompiler::apply_filter(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    info.applied.push("seccomp".into());
    Ok(info)
}

// ---------------------------------------------------------------------------------------
// Namespaces.

/// Unshares user, mount, network and PID namespaces, each as far as the host allows;
/// whether a PID namespace was made (the caller must then fork into it).
fn unshare_namespaces(info: &mut SandboxInfo) -> bool {
    use nix::sched::{unshare, CloneFlags};
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    match unshare(CloneFlags::CLONE_NEWUSER) {
        Ok(()) => {
            // Map ourselves onto ourselves: we keep our identity, and the capabilities
            // we hold in the new namespace reach no host file we did not own already.
            let maps = [
                ("/proc/self/setgroups", "deny".to_string()),
                ("/proc/self/uid_map", format!("{uid} {uid} 1")),
                ("/proc/self/gid_map", format!("{gid} {gid} 1")),
            ];
            for (path, text) in maps {
                if let Err(e) = std::fs::write(path, text) {
                    info.refused.push(format!("user_namespace: {path}: {e}"));
                }
            }
            info.applied.push("user_namespace".into());
        }
        Err(e) => info.refused.push(format!("user_namespace: {e}")),
    }
    match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => match empty_root() {
            Ok(()) => info.applied.push("mount_namespace".into()),
            Err(e) => info
                .refused
                .push(format!("mount_namespace: cannot make the root empty: {e}")),
        },
        Err(e) => info.refused.push(format!("mount_namespace: {e}")),
    }
    // No interfaces but a loopback that is down: the worker's one connection is the
    // socket it already holds.
    match unshare(CloneFlags::CLONE_NEWNET) {
        Ok(()) => info.applied.push("network_namespace".into()),
        Err(e) => info.refused.push(format!("network_namespace: {e}")),
    }
    match unshare(CloneFlags::CLONE_NEWPID) {
        Ok(()) => true,
        Err(e) => {
            info.refused.push(format!("pid_namespace: {e}"));
            false
        }
    }
}

/// In a new mount namespace: makes an empty, read-only tmpfs the root and lets go of the
/// host's tree, so no path names a host file any more.
fn empty_root() -> Result<(), String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let none: Option<&str> = None;
    // Nothing we do here may propagate back to the host's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making / private: {e}"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut why = Vec::new();
    let point = ROOT_MOUNT_POINTS.into_iter().find(|p| {
        match mount(
            Some("tmpfs"),
            *p,
            Some("tmpfs"),
            flags,
            Some("size=4k,mode=0555"),
        ) {
            Ok(()) => true,
            Err(e) => {
                why.push(format!("mounting a tmpfs on {p}: {e}"));
                false
            }
        }
    });
    let point = point.ok_or_else(|| why.join("; "))?;
    nix::unistd::chdir(point).map_err(|e| format!("entering {point}: {e}"))?;
    // The new root over the old one at ".", then the old one detached: only the tmpfs is
    // left.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("entering the new root: {e}"))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        none,
    )
    .map_err(|e| format!("making the new root read-only: {e}"))?;
    Ok(())
}

/// After `unshare(CLONE_NEWPID)`: forks. The child — PID 1 of the new namespace — returns
/// and goes on to diagnose; the parent waits for it and ends as it ended.
fn become_pid_one(info: &mut SandboxInfo) -> Result<(), String> {
    use nix::unistd::{fork, ForkResult};
    // The parent holds the write end for as long as it lives; the child sees the pipe
    // hang up if the parent died before the child asked to die with it.
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    // SAFETY: the worker is single-threaded here (it starts no thread before diagnosing,
    // and diagnosis starts none), so the child may run any code after `fork`.
    match unsafe { fork() } {
        Err(e) => {
            info.refused.push(format!("pid_namespace: fork: {e}"));
            Ok(())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            wait_and_end_alike(child, alive_w)
        }
        Ok(ForkResult::Child) => {
            drop(alive_w);
            // The daemon only knows (and kills, at its timeout) the parent: die with it.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&alive_r),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(0) > 0 {
                // The parent is gone already (hang-up): nobody waits for our answer.
                std::process::exit(1);
            }
            drop(alive_r);
            handle_fatal_signals_as_pid_one()?;
            info.applied.push("pid_namespace".into());
            Ok(())
        }
    }
}

/// PID 1 of a namespace is immune to signals it has no handler for — even the kernel's
/// `SIGXCPU` at the CPU-time limit and its own `SIGABRT` (`abort`, an allocation failure
/// under `RLIMIT_AS`). So the child handles them by exiting with 128 + the signal, which
/// the parent turns back into the signal. (`SIGKILL`, faults such as `SIGSEGV`, and
/// seccomp's `SIGSYS` reach PID 1 regardless, and end the child by signal directly.)
fn handle_fatal_signals_as_pid_one() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGXCPU,
        Signal::SIGABRT,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGALRM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only calls `_exit`, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("cannot handle {sig} as PID 1: {e}"))?;
    }
    Ok(())
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(SIGNAL_EXIT_BASE + sig) }
}

/// The parent of the PID-1 child: lets go of every descriptor but standard error (the
/// child answers the daemon) and `alive` (the child looks at it once, right after the
/// fork), waits for the child, and ends the same way.
fn wait_and_end_alike(child: nix::unistd::Pid, alive: std::os::fd::OwnedFd) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::fd::AsRawFd;
    let keep = alive.as_raw_fd() as libc::c_uint;
    // SAFETY: this process never returns to the code that owns these descriptors (this
    // function diverges and ends the process without unwinding or dropping them), so no
    // owner can use or close them again; `alive`, which this function owns, is kept.
    unsafe {
        libc::close(0);
        libc::close(1);
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                if code > SIGNAL_EXIT_BASE {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(code - SIGNAL_EXIT_BASE) {
                        end_by_signal(sig);
                    }
                }
                std::process::exit(code)
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => end_by_signal(sig),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(1),
        }
    }
}

/// Ends this process by `sig`, as its default action does (without a core dump).
fn end_by_signal(sig: nix::sys::signal::Signal) -> ! {
    use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow};
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = nix::sys::signal::raise(sig);
    // A signal whose default is to be ignored: say it in the status.
    std::process::exit(SIGNAL_EXIT_BASE + sig as i32)
}

// ---------------------------------------------------------------------------------------
// The seccomp filter.

/// The filter: the system calls a jailed worker makes, each with the arguments it makes
/// them with where that matters; anything else kills the process. `pid` is the worker's
/// own (it may signal only itself).
///
/// The list is what `strace -f` showed real workers do after this point — test-kernel
/// guests with debug info, rules and a core; Debian's kernel under QEMU through the
/// daemon (kallsyms, BTF, printk); the daemon's own tests (errors, the test delay, killed
/// workers) — plus the few calls the runtime makes only on paths those runs did not take,
/// each said below. Everything a diagnosis reads is in memory already: the guest's RAM
/// and the debug info are mappings, so there is no `read`, `pread`, `open`, `stat`.
///
/// Why the memory rules keep guest RAM unwritable. The guest RAM descriptor is
/// `O_RDONLY`, so the kernel already refuses it a shared writable mapping (`EACCES`) and
/// clears `VM_MAYWRITE` on its shared read-only mappings, so no `mprotect` makes one
/// writable; a private mapping of it is copy-on-write and never reaches the file; `write`
/// on it fails (`EBADF`); and the VMM's memfd is sealed against future writes. What could
/// break that is a *new* descriptor of the same file opened for writing — reopening
/// `/proc/self/fd/N` `O_RDWR` works on a memfd — and the filter forbids every way to get
/// one (`open`, `openat`, `openat2`, `creat`, `socket`… are not allowed; nor is there a
/// `/proc` in the empty root). On top, the rules hold whatever the descriptor's mode:
///
/// * `mmap` is allowed private (copy-on-write: the heap, large allocations), or shared
///   only without `PROT_WRITE` (the guest RAM, read-only) — a shared writable mapping of
///   anything is refused; never with `PROT_EXEC` (no new code after set-up);
/// * `mprotect` only to `PROT_NONE` or `PROT_READ`: it can take rights away, never add
///   write or execute (nothing in diagnosis changes protections; the allocator may make
///   guard pages); `pkey_mprotect`, `madvise` (whose `MADV_REMOVE` punches holes in a
///   shared file), `fallocate`, `ftruncate` not at all;
/// * `lseek` only to find holes (`SEEK_DATA`, `SEEK_HOLE`);
/// * `write` only to standard output and error, the daemon's socket and the core;
///   `sendto` (how the standard library writes a socket) only to the socket;
/// * `recvfrom` (how it reads one) only from the socket: after answering, the worker
///   waits there until the daemon, having read its peak memory, closes it.
pub fn filter(outputs: &Outputs, pid: i32) -> Result<BpfProgram, seccompiler::Error> {
    use libc::*;
    use seccompiler::BackendError;
    let arg = |index: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
    };
    let is = |index: u8, value: u64| -> Result<Vec<SeccompRule>, BackendError> {
        Ok(vec![SeccompRule::new(vec![arg(
            index,
            SeccompCmpOp::Eq,
            value,
        )?])?])
    };
    let prot_without = |bits: c_int| arg(2, SeccompCmpOp::MaskedEq(bits as u64), 0);

    let mut writers = vec![1, 2, outputs.socket];
    writers.extend(outputs.core);
    let to_writers = writers
        .iter()
        .map(|fd| SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, *fd as u64)?]))
        .collect::<Result<Vec<_>, _>>()?;

    let rules: Vec<(i64, Vec<SeccompRule>)> = vec![
        // The answer to the daemon, the core, messages on standard error.
        (SYS_write, to_writers.clone()),
        (SYS_writev, to_writers),
        (SYS_sendto, is(0, outputs.socket as u64)?),
        // The daemon's closing of the socket, awaited after the answer.
        (SYS_recvfrom, is(0, outputs.socket as u64)?),
        (SYS_fsync, vec![]),
        (SYS_close, vec![]),
        // Debug builds of the standard library check a descriptor is open before closing
        // it.
        (SYS_fcntl, is(1, F_GETFD as u64)?),
        // Memory: the heap and large allocations, the guest RAM mapped read-only.
        (SYS_brk, vec![]),
        (
            SYS_mmap,
            vec![
                SeccompRule::new(vec![
                    arg(
                        3,
                        SeccompCmpOp::MaskedEq(MAP_TYPE as u64),
                        MAP_PRIVATE as u64,
                    )?,
                    prot_without(PROT_EXEC)?,
                ])?,
                SeccompRule::new(vec![prot_without(PROT_WRITE | PROT_EXEC)?])?,
            ],
        ),
        (
            SYS_mprotect,
            vec![SeccompRule::new(vec![prot_without(
                PROT_WRITE | PROT_EXEC,
            )?])?],
        ),
        (SYS_munmap, vec![]),
        (SYS_mremap, vec![]),
        // Where the guest RAM file's holes are, so that passes over all of RAM (the
        // core) skip them rather than allocate them: `SEEK_DATA`/`SEEK_HOLE` only, which
        // read nothing and change nothing but the descriptor's offset.
        (
            SYS_lseek,
            vec![
                SeccompRule::new(vec![arg(2, SeccompCmpOp::Eq, SEEK_DATA as u64)?])?,
                SeccompRule::new(vec![arg(2, SeccompCmpOp::Eq, SEEK_HOLE as u64)?])?,
            ],
        ),
        // Not in the traces, but made on paths they did not take: the clock where the
        // vDSO falls back to the system call (a clock source it cannot read), the test
        // delay's sleep, hash maps' random keys when none was made before, a lock that
        // waits.
        (SYS_clock_gettime, vec![]),
        (SYS_gettimeofday, vec![]),
        (SYS_clock_nanosleep, vec![]),
        (SYS_nanosleep, vec![]),
        (SYS_getrandom, vec![]),
        (SYS_futex, vec![]),
        // Signals: the standard library's stack-overflow handler restores the default and
        // returns; `abort` (an allocation failure) unblocks and raises SIGABRT — at this
        // process only.
        (SYS_rt_sigreturn, vec![]),
        (SYS_rt_sigprocmask, vec![]),
        (SYS_rt_sigaction, vec![]),
        (SYS_sigaltstack, vec![]),
        (SYS_getpid, vec![]),
        (SYS_gettid, vec![]),
        (SYS_tgkill, is(0, pid as u64)?),
        // The end.
        (SYS_exit, vec![]),
        (SYS_exit_group, vec![]),
    ];
    SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(seccompiler::Error::Backend)?,
    )
    .map_err(seccompiler::Error::Backend)?
    .try_into()
    .map_err(seccompiler::Error::Backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};

    /// Runs `body` in a forked child under the filter (built here, before the fork: the
    /// child of a multi-threaded test must not allocate); how the child ended.
    fn under_filter(body: impl FnOnce() -> i32) -> WaitStatus {
        let program = filter(
            &Outputs {
                socket: 2,
                core: None,
            },
            0,
        )
        .unwrap();
        // SAFETY: the child only makes system calls (no allocation, no locks) and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match seccompiler::apply_filter(&program) {
                    Ok(()) => body(),
                    Err(_) => 99,
                };
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    fn killed(status: WaitStatus) -> bool {
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _))
    }

    #[test]
    fn what_diagnosis_does_is_allowed() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let status = under_filter(|| {
            // SAFETY: fresh mappings, unmapped again; a zero-length write.
            unsafe {
                let anon = libc::mmap(
                    std::ptr::null_mut(),
                    1 << 20,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                let shared = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                if anon == libc::MAP_FAILED || shared == libc::MAP_FAILED {
                    return 1;
                }
                if libc::mprotect(anon, 4096, libc::PROT_READ) != 0 {
                    return 2;
                }
                libc::munmap(anon, 1 << 20);
                libc::munmap(shared, 4096);
                if libc::write(2, [0u8].as_ptr().cast(), 0) != 0 {
                    return 3;
                }
                // Waiting on the daemon's socket (here standard error, not a socket:
                // the call fails, but is made).
                libc::recv(2, std::ptr::null_mut(), 0, libc::MSG_DONTWAIT);
            }
            0
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn escapes_kill() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let map = |prot, flags, fd| {
            // SAFETY: a fresh mapping request.
            unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, fd, 0) as usize as i32 }
        };
        let parent = std::process::id() as i32;
        type Attempt = Box<dyn FnOnce() -> i32>;
        let cases: Vec<(&str, Attempt)> = vec![
            (
                "openat",
                // SAFETY: a NUL-terminated path.
                Box::new(|| unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY) }),
            ),
            (
                "mmap shared writable",
                Box::new(move || {
                    map(
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                        -1,
                    )
                }),
            ),
            (
                "mmap executable",
                Box::new(move || map(libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE, fd)),
            ),
            (
                "mprotect writable",
                Box::new(move || {
                    let p =
                        map(libc::PROT_READ, libc::MAP_SHARED, fd) as usize as *mut libc::c_void;
                    // SAFETY: a protection change request on whatever `p` is.
                    unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE) }
                }),
            ),
            (
                "write elsewhere",
                // SAFETY: a zero-length write.
                Box::new(move || unsafe { libc::write(fd, [0u8].as_ptr().cast(), 0) as i32 }),
            ),
            (
                "read elsewhere",
                // SAFETY: a zero-length read.
                Box::new(move || unsafe { libc::read(fd, std::ptr::null_mut(), 0) as i32 }),
            ),
            (
                "receive elsewhere",
                // SAFETY: a zero-length receive.
                Box::new(move || unsafe {
                    libc::recv(fd, std::ptr::null_mut(), 0, libc::MSG_DONTWAIT) as i32
                }),
            ),
            (
                "socket",
                // SAFETY: a plain system call.
                Box::new(|| unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) }),
            ),
            (
                "signal another process",
                // SAFETY: signal 0 to this test's process, which only checks.
                Box::new(move || unsafe { libc::kill(parent, 0) }),
            ),
        ];
        for (what, body) in cases {
            let status = under_filter(body);
            assert!(killed(status), "{what}: {status:?}");
        }
    }
}
