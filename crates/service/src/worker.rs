//! The diagnosis worker: a separate process (`ambulance worker`, the daemon's own binary
//! re-executed) that gets the frozen guest's RAM as an `O_RDONLY` descriptor over
//! `SCM_RIGHTS`, maps it read-only, diagnoses and answers with the report.
//!
//! The messages and their framing are `ambulance_worker_protocol`'s. On the Unix stream
//! socket that is the worker's standard input, the daemon sends the RAM descriptor (which
//! the worker refuses unless it is `O_RDONLY`) and then a [`Request`]; the worker answers
//! with a [`Reply`] and then waits for the daemon to close the socket (meanwhile the
//! daemon reads its peak memory, see [`peak_rss`]) and exits.
//!
//! The worker limits itself before reading anything (`RLIMIT_AS`: the guest RAM plus a
//! budget; `RLIMIT_CPU`), and the daemon enforces a wall-clock timeout, killing the worker
//! when it passes. Whatever happens to the worker — a crash, a kill, a hang — the daemon
//! gets an error saying what, never a hang of its own.
//!
//! The worker runs in two halves. Set-up opens everything it will need — the request,
//! the kernel's debug info, the rules, the core file it writes — and then it confines
//! itself ([`crate::jail`]: namespaces, `no_new_privs`, a seccomp filter that allows no
//! `open` and kills on anything unexpected). Only then does it map and read guest memory.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_diagnose::core::CoreOutput;
use ambulance_diagnose::{diagnose_ram, Options, Subject};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_ram::GuestRam;
use ambulance_report::{Phase, Report};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use ambulance_worker_protocol::{read_frame, write_frame};
pub use ambulance_worker_protocol::{Reply, Request};

/// Test hook: the worker sleeps this many milliseconds after receiving its request and
/// before diagnosing (so a test can kill it mid-diagnosis).
pub const DELAY_ENV: &str = "AMBULANCE_WORKER_TEST_DELAY_MS";

/// The limits a worker runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Address space on top of the guest RAM.
    pub address_space_bytes: u64,
    /// RLIMIT_CPU.
    pub cpu_seconds: u64,
    /// Wall clock.
    pub timeout: Duration,
}

// ---------------------------------------------------------------------------------------
// Daemon side.

/// Runs one diagnosis in a worker process: `program worker …`, the guest's RAM passed as
/// its read-only descriptor. `on_spawn` gets the worker's pid. Returns the report, or why
/// there is none. The worker's answer is untrusted: a report for another id than the one
/// asked for is refused.
pub fn run(
    program: &Path,
    limits: &Limits,
    request: &Request,
    ram: &GuestRam,
    on_spawn: impl FnOnce(u32),
) -> Result<Report, String> {
    run_with_env(program, limits, request, ram, &[], on_spawn)
}

/// [`run`], with `env` added to the worker's environment (tests: [`DELAY_ENV`],
/// [`crate::jail::ESCAPE_ENV`]).
pub fn run_with_env(
    program: &Path,
    limits: &Limits,
    request: &Request,
    ram: &GuestRam,
    env: &[(&str, &str)],
    on_spawn: impl FnOnce(u32),
) -> Result<Report, String> {
    let report = spawn_and_talk(program, limits, request, ram.file(), env, on_spawn)?;
    if report.id != request.subject.report_id {
        return Err(format!(
            "the worker answered with a report for id {:?}, not {}",
            report.id.as_str(),
            request.subject.report_id
        ));
    }
    Ok(report)
}

/// The diagnosis's own budget inside the daemon's wall-clock `timeout`: a tenth of it,
/// between 100 ms and 2 s, is kept for starting the worker, encoding the report and
/// sending it back, so a diagnosis that runs out of time still ends in a (partial) report
/// rather than a killed worker.
pub fn budget(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
    timeout.saturating_sub(margin)
}

fn spawn_and_talk(
    program: &Path,
    limits: &Limits,
    request: &Request,
    memory: &File,
    env: &[(&str, &str)],
    on_spawn: impl FnOnce(u32),
) -> Result<Report, String> {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let (mut ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot create the worker's socket: {e}"))?;
    let ram: u64 = request.regions.iter().map(|r| r.size).sum();
    let mut child = Command::new(program)
        .arg("worker")
        .arg("--address-space")
        .arg(ram.saturating_add(limits.address_space_bytes).to_string())
        .arg("--cpu-seconds")
        .arg(limits.cpu_seconds.to_string())
        .arg("--budget-ms")
        .arg(budget(limits.timeout).as_millis().to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the worker {}: {e}", program.display()))?;
    on_spawn(child.id());
    let result = talk(&mut ours, request, memory, deadline, started);
    // The worker waits for the socket to close after answering: measure it while it lives.
    let peak = result.as_ref().ok().and_then(|_| peak_rss(child.id()));
    drop(ours);
    match result {
        Ok(mut report) => {
            let reaped = reap(&child);
            if let Some((status, _)) = reaped.as_ref().filter(|(s, _)| !s.success()) {
                // The answer stands; what it did after is the jail's or the worker's bug.
                tracing::warn!(
                    report = %report.id,
                    "the worker ended badly after answering ({status}){}",
                    if peak.is_none() { "; its peak memory could not be read" } else { "" }
                );
            }
            // Ours to say, whatever the worker wrote there.
            report.tool.cost = reaped.map(|(_, usage)| cost(&usage, peak, started.elapsed()));
            Ok(report)
        }
        Err(Talk::TimedOut) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the worker did not finish within {} ms and was killed",
                limits.timeout.as_millis()
            ))
        }
        Err(Talk::Worker(msg)) => {
            let _ = child.wait();
            Err(msg)
        }
        Err(Talk::Io(e)) => {
            // The worker went away (or broke the protocol): say how it ended.
            let status = wait_until(&mut child, deadline);
            Err(match status {
                Some(s) => match (s.code(), s.signal()) {
                    (_, Some(sig)) => {
                        format!("the worker was killed by signal {}", signal_name(sig))
                    }
                    (Some(code), _) => {
                        format!("the worker exited with status {code} without a report ({e})")
                    }
                    _ => format!("the worker ended without a report ({e})"),
                },
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    format!("the worker stopped answering ({e}) and was killed")
                }
            })
        }
    }
}

enum Talk {
    TimedOut,
    Worker(String),
    Io(std::io::Error),
}

fn talk(
    s: &mut UnixStream,
    request: &Request,
    memory: &File,
    deadline: Instant,
    started: Instant,
) -> Result<Report, Talk> {
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            Err(Talk::TimedOut)
        } else {
            Ok(l)
        }
    };
    s.set_write_timeout(Some(left()?)).map_err(Talk::Io)?;
    let fds = [memory.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(b"M")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| Talk::Io(e.into()))?;
    let mut request = request.clone();
    request.timeline.push(Phase {
        name: "worker_start".into(),
        duration_us: started.elapsed().as_micros() as u64,
    });
    let body = serde_json::to_vec(&request)
        .map_err(|e| Talk::Worker(format!("cannot encode the request: {e}")))?;
    write_frame(s, &body).map_err(Talk::Io)?;
    s.set_read_timeout(Some(left()?)).map_err(Talk::Io)?;
    let reply = match read_frame(s) {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Talk::TimedOut)
        }
        Err(e) => return Err(Talk::Io(e)),
    };
    match serde_json::from_slice::<Reply>(&reply) {
        Ok(Reply::Report(r)) => Ok(*r),
        Ok(Reply::Error(e)) => Err(Talk::Worker(e)),
        Err(e) => Err(Talk::Worker(format!(
            "the worker's reply is not valid: {e}"
        ))),
    }
}

/// Waits for the worker to end and reaps it, with the resources it and its reaped
/// descendants (the PID-1 child of its namespace) used; `None` if it cannot be reaped.
fn reap(child: &Child) -> Option<(std::process::ExitStatus, libc::rusage)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid for writes of their types, and `pid` is
        // our own child, not reaped yet (nothing else waits for it).
        let r = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if r == pid {
            // SAFETY: wait4 succeeded and filled `usage`; all-zero was valid besides.
            let usage = unsafe { usage.assume_init() };
            return Some((std::process::ExitStatus::from_raw(status), usage));
        }
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Most processes [`peak_rss`] looks at: the worker and the PID-1 child it forks (its
/// seccomp filter forbids any other).
const MAX_WORKER_PROCESSES: usize = 4;

/// The peak resident memory (bytes) of the worker `pid` and its descendants — the PID-1
/// child that diagnoses inside a PID namespace — while they live: the largest `VmHWM` in
/// their `/proc/<pid>/status`. `None` when the worker's own cannot be read.
///
/// Not `wait4`'s `ru_maxrss`: a process started by `posix_spawn` (a vfork) shares the
/// daemon's memory until it executes, and Linux folds that memory's peak into the new
/// program's `ru_maxrss` at `execve`. So `ru_maxrss` says at least the daemon's own peak,
/// which grows with the RAM of the guests whose memory the VMM maps; `VmHWM` belongs to
/// the worker's own address space, which starts afresh at `execve`.
fn peak_rss(pid: u32) -> Option<u64> {
    let hwm = |pid: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
        let kib: u64 = kib.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib.saturating_mul(1024))
    };
    let mut peak = hwm(pid)?;
    let mut todo = vec![pid];
    let mut looked = 1;
    while let Some(p) = todo.pop() {
        let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if looked == MAX_WORKER_PROCESSES {
                return Some(peak);
            }
            looked += 1;
            peak = peak.max(hwm(child).unwrap_or(0));
            todo.push(child);
        }
    }
    Some(peak)
}

/// A diagnosis's cost from its worker's resource usage, peak memory ([`peak_rss`]; else
/// `ru_maxrss`, which may say the daemon's) and wall-clock time.
fn cost(u: &libc::rusage, peak: Option<u64>, wall: Duration) -> ambulance_report::DiagnosisCost {
    let us = |t: libc::timeval| {
        (t.tv_sec.max(0) as u64)
            .saturating_mul(1_000_000)
            .saturating_add(t.tv_usec.max(0) as u64)
    };
    ambulance_report::DiagnosisCost {
        // ru_maxrss is in KiB on Linux.
        peak_rss_bytes: peak.unwrap_or_else(|| (u.ru_maxrss.max(0) as u64).saturating_mul(1024)),
        user_cpu_us: us(u.ru_utime),
        system_cpu_us: us(u.ru_stime),
        wall_us: wall.as_micros() as u64,
    }
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    // The socket closed, so the worker is ending: give it a moment to be reaped.
    let until = deadline.min(Instant::now() + Duration::from_secs(2));
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(nix::sys::signal::Signal::SIGXCPU) => "SIGXCPU (CPU-time limit reached)".into(),
        Ok(nix::sys::signal::Signal::SIGSYS) => {
            "SIGSYS (a seccomp violation: the worker made a system call its jail forbids)".into()
        }
        Ok(s) => s.as_str().to_string(),
        Err(_) => sig.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Worker side.

/// The worker process: `ambulance worker --address-space BYTES --cpu-seconds N
/// [--budget-ms MS]`, with the daemon's socket as standard input. With a budget, the
/// diagnosis stops every phase that long after the worker started and reports what it
/// did (see [`budget`]).
pub fn main(address_space: u64, cpu_seconds: u64, budget_ms: Option<u64>) -> ExitCode {
    let deadline = budget_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    match worker(address_space, cpu_seconds, deadline) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambulance worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn worker(address_space: u64, cpu_seconds: u64, deadline: Option<Instant>) -> Result<(), String> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_AS, address_space, address_space)
        .map_err(|e| format!("cannot limit the address space to {address_space} bytes: {e}"))?;
    setrlimit(
        Resource::RLIMIT_CPU,
        cpu_seconds,
        cpu_seconds.saturating_add(1),
    )
    .map_err(|e| format!("cannot limit CPU time to {cpu_seconds} s: {e}"))?;
    // A backtrace would open the worker's own binary to symbolize it, which the jail
    // forbids (and kills for): say what panicked, without one.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ambulance worker: {info} (no backtrace: the worker may not open files)");
    }));
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot use standard input: {e}"))?;
    let mut s = UnixStream::from(stdin);
    let memory = receive_fd(&s)?;
    let request = read_frame(&mut s).map_err(|e| format!("cannot read the request: {e}"))?;
    let reply = match serde_json::from_slice::<Request>(&request) {
        Ok(request) => match set_up(request, memory, deadline).and_then(|job| jailed(&s, job)) {
            Ok(r) => Reply::Report(Box::new(r)),
            Err(e) => Reply::Error(e),
        },
        Err(e) => Reply::Error(format!("the request is not valid: {e}")),
    };
    let body = serde_json::to_vec(&reply).map_err(|e| format!("cannot encode the reply: {e}"))?;
    write_frame(&mut s, &body).map_err(|e| format!("cannot send the reply: {e}"))?;
    // Live on until the daemon closes the socket: it reads this process's peak memory
    // meanwhile, which it cannot once the process is gone (see `peak_rss`).
    let _ = s.read(&mut [0u8; 1]);
    Ok(())
}

fn receive_fd(s: &UnixStream) -> Result<File, String> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("cannot receive the guest RAM descriptor: {e}"))?;
    let mut received: Option<OwnedFd> = None;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("bad control message: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel has just installed `fd` in this process's descriptor
                // table for this message; nothing else refers to it, so we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    let fd = received.ok_or("the daemon sent no guest RAM descriptor")?;
    Ok(File::from(fd))
}

/// Everything a diagnosis needs, open before the worker confines itself.
struct Job {
    subject: Subject,
    ram: GuestRam,
    options: Options,
    core: Option<(File, PathBuf)>,
    timeline: Vec<Phase>,
}

/// The first half: checks the RAM descriptor and opens every file the diagnosis will
/// use. Reads no guest memory.
fn set_up(request: Request, memory: File, deadline: Option<Instant>) -> Result<Job, String> {
    let ram = GuestRam::new(memory, request.regions).map_err(|e| e.to_string())?;
    let mut timeline = request.timeline;
    let t = Instant::now();
    let debuginfo = request
        .debuginfo
        .as_deref()
        .map(|p| {
            DebugInfo::open(p)
                .map(Arc::new)
                .map_err(|e| format!("cannot read the kernel's debug info {}: {e}", p.display()))
        })
        .transpose()?;
    let rules = request
        .rules
        .as_deref()
        .map(ambulance_validate::rules::RuleSet::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    timeline.push(Phase {
        name: "load_debuginfo".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    let core = request
        .core_path
        .map(|path| match File::create(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) => Err(format!(
                "cannot create the core file {}: {e}",
                path.display()
            )),
        })
        .transpose()?;
    Ok(Job {
        subject: request.subject,
        ram,
        options: {
            let options = Options {
                debuginfo,
                rules,
                config: Default::default(),
            };
            match deadline {
                Some(at) => options.with_deadline(at),
                None => options,
            }
        },
        core,
        timeline,
    })
}

/// The second half: confines the worker, then diagnoses.
fn jailed(s: &UnixStream, mut job: Job) -> Result<Report, String> {
    let t = Instant::now();
    let sandbox = crate::jail::confine(&crate::jail::Outputs {
        socket: s.as_raw_fd(),
        core: job.core.as_ref().map(|(f, _)| f.as_raw_fd()),
    })?;
    job.timeline.push(Phase {
        name: "jail".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    #[cfg(debug_assertions)]
    if let Some(outcome) = crate::jail::escape::attempt_from_env(job.ram.file()) {
        return Err(outcome);
    }
    if let Some(ms) = std::env::var(DELAY_ENV).ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let Job {
        subject,
        ram,
        options,
        core,
        timeline,
    } = job;
    let (core_file, core_path) = core.unzip();
    let core = core_file
        .zip(core_path.as_deref())
        .map(|(file, path)| CoreOutput::Opened { file, path });
    let report = diagnose_ram(&ram, &subject, &options, timeline, core);
    // The worker exits after this one diagnosis: the debug info's tables (a vmlinux's
    // symbols, type index and line tables, hundreds of thousands of allocations) go back
    // with the process, faster than freed one by one.
    std::mem::forget(options);
    let mut report = report.map_err(|e| e.to_string())?;
    report.tool.sandbox = Some(sandbox);
    Ok(report)
}
