//! The test worker mode (debug builds only): a confined worker tries one escape and says
//! what happened — if the filter let it live. Where an attempt gets a way to write guest
//! RAM, it writes through it, so that a jail that failed shows in the RAM's hash as well
//! as in the answer.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::ESCAPE_ENV;

/// A byte pattern no guest holds at offset 0 by chance.
const MARK: &[u8; 8] = b"ESCAPED!";

/// Runs the escape [`ESCAPE_ENV`] names, if it is set; its outcome as the worker's answer.
pub fn attempt_from_env(ram: &File) -> Option<String> {
    let spec = std::env::var(ESCAPE_ENV).ok()?;
    let (name, target) = match spec.split_once(':') {
        Some((n, pid)) => (n.to_string(), pid.parse::<i32>().ok()),
        None => (spec.clone(), None),
    };
    // A process to aim at that is not this one: the daemon's (the test's) when given.
    let target = target.unwrap_or(1);
    let outcome = attempt(&name, ram, target);
    Some(format!("escape {name}: {outcome}"))
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// `Ok` with a description if the call "worked", else the error.
fn check(rc: libc::c_long, what: &str) -> Result<libc::c_long, String> {
    if rc < 0 {
        Err(format!("refused ({what}: {})", errno()))
    } else {
        Ok(rc)
    }
}

fn attempt(name: &str, ram: &File, target: i32) -> String {
    let fd = ram.as_raw_fd();
    let result: Result<String, String> = match name {
        "reopen-ram-rdwr" => reopen(fd),
        "mprotect-ram-writable" => mprotect_writable(fd),
        "mmap-ram-shared-writable" => map(fd, libc::MAP_SHARED),
        "mmap-ram-private-writable" => map(fd, libc::MAP_PRIVATE),
        "write-ram-fd" => {
            // SAFETY: writes 8 bytes from a valid buffer to a descriptor we hold.
            let rc = unsafe { libc::pwrite(fd, MARK.as_ptr().cast(), MARK.len(), 0) };
            check(rc as libc::c_long, "pwrite").map(|_| "SUCCEEDED: wrote guest RAM".into())
        }
        "truncate-ram-fd" => {
            // SAFETY: a plain system call on a descriptor we hold.
            let rc = unsafe { libc::ftruncate(fd, 0) };
            check(rc.into(), "ftruncate").map(|_| "SUCCEEDED: truncated guest RAM".into())
        }
        "madvise-remove-ram" => madvise_remove(fd),
        "ptrace-attach" => {
            // SAFETY: a plain system call; attaching changes nothing in this process.
            let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, target, 0, 0) };
            check(rc, "ptrace").map(|_| format!("SUCCEEDED: attached to {target}"))
        }
        "process-vm-writev" | "process-vm-readv" => process_vm(name, target),
        "kill-other" => {
            // SAFETY: signal 0 only checks that the process could be signalled.
            let rc = unsafe { libc::kill(target, 0) };
            check(rc.into(), "kill").map(|_| format!("SUCCEEDED: may signal {target}"))
        }
        "execve" => {
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and argument arrays that outlive the call.
            let rc = unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            check(rc.into(), "execve").map(|_| "SUCCEEDED: executed /bin/sh".into())
        }
        "fork" => {
            // SAFETY: a raw fork (the clone system call); a child, if one is made, only
            // exits.
            let rc = unsafe { libc::syscall(libc::SYS_fork) };
            if rc == 0 {
                // SAFETY: the child ends at once.
                unsafe { libc::_exit(0) }
            }
            check(rc, "fork").map(|pid| format!("SUCCEEDED: forked {pid}"))
        }
        "socket" => {
            // SAFETY: a plain system call.
            let rc = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            check(rc.into(), "socket").map(|_| "SUCCEEDED: opened a socket".into())
        }
        "open-file" => {
            // SAFETY: a NUL-terminated path.
            let rc = unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
            check(rc.into(), "open").map(|_| "SUCCEEDED: opened /etc/passwd".into())
        }
        "create-file" => {
            // SAFETY: a NUL-terminated path.
            let rc = unsafe { libc::creat(c"/tmp/ambulance-escaped".as_ptr(), 0o600) };
            check(rc.into(), "creat").map(|_| "SUCCEEDED: created a file".into())
        }
        other => Err(format!("no such escape {other:?}")),
    };
    match result {
        Ok(s) | Err(s) => s,
    }
}

/// Reopens the RAM descriptor read-write through `/proc/self/fd`, and writes through it.
fn reopen(fd: i32) -> Result<String, String> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: a NUL-terminated path.
    let rw = check(
        unsafe { libc::open(path.as_ptr(), libc::O_RDWR) }.into(),
        "open O_RDWR",
    )? as i32;
    // SAFETY: writes 8 bytes from a valid buffer to the descriptor just opened.
    let rc = unsafe { libc::pwrite(rw, MARK.as_ptr().cast(), MARK.len(), 0) };
    check(rc as libc::c_long, "reopened, but pwrite").map(|_| "SUCCEEDED: wrote guest RAM".into())
}

/// Maps the first page of guest RAM read-only, as the diagnosis does, then asks for it to
/// be writable, and writes.
fn mprotect_writable(fd: i32) -> Result<String, String> {
    let p = map_page(fd, libc::PROT_READ, libc::MAP_SHARED)?;
    // SAFETY: `p` is a page-sized mapping of ours.
    let rc = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    check(rc.into(), "mprotect")?;
    write_mark(p);
    Ok("SUCCEEDED: made a guest RAM mapping writable and wrote it".into())
}

/// Maps the first page of guest RAM writable (`flags`: shared or private) and writes it.
fn map(fd: i32, flags: libc::c_int) -> Result<String, String> {
    let p = map_page(fd, libc::PROT_READ | libc::PROT_WRITE, flags)?;
    write_mark(p);
    Ok(if flags == libc::MAP_PRIVATE {
        "mapped copy-on-write and wrote the private copy".into()
    } else {
        "SUCCEEDED: mapped guest RAM shared and writable, and wrote it".into()
    })
}

/// Maps guest RAM read-only and asks the kernel to punch a hole in it through the mapping.
fn madvise_remove(fd: i32) -> Result<String, String> {
    let p = map_page(fd, libc::PROT_READ, libc::MAP_SHARED)?;
    // SAFETY: `p` is a page-sized mapping of ours.
    let rc = unsafe { libc::madvise(p, 4096, libc::MADV_REMOVE) };
    check(rc.into(), "madvise MADV_REMOVE").map(|_| "SUCCEEDED: punched a hole in guest RAM".into())
}

fn map_page(fd: i32, prot: libc::c_int, flags: libc::c_int) -> Result<*mut libc::c_void, String> {
    // SAFETY: asks for a new mapping; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        Err(format!("refused (mmap: {})", errno()))
    } else {
        Ok(p)
    }
}

fn write_mark(p: *mut libc::c_void) {
    // SAFETY: `p` is a writable mapping of at least one page.
    unsafe { std::ptr::copy_nonoverlapping(MARK.as_ptr(), p.cast::<u8>(), MARK.len()) }
}

/// Reads or writes 8 bytes of `target`'s memory at an address it surely maps (its stack is
/// not known; the attempt is what counts: the filter decides on the system call alone).
fn process_vm(name: &str, target: i32) -> Result<String, String> {
    let mut buf = *MARK;
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: 0x40_0000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec points at `buf`, which outlives the call; the remote one is
    // in the other process, which the kernel checks.
    let rc = unsafe {
        if name == "process-vm-writev" {
            libc::process_vm_writev(target, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(target, &local, 1, &remote, 1, 0)
        }
    };
    check(rc as libc::c_long, name).map(|_| format!("SUCCEEDED: {name} on {target}"))
}
