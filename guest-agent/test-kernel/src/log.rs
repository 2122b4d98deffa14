//! The kernel log: a ring of fixed-size records (sequence, timestamp, CPU, text), the
//! test kernel's `printk`. Messages may also go to the console.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use ambulance_guest_agent::Console;

use crate::sync::{lock, lock_id};

/// Text bytes per record.
pub const LOG_TEXT: usize = 232;
/// Records in the ring.
pub const LOG_CAPACITY: usize = 256;
/// `LogRing::magic`.
pub const LOG_MAGIC: u64 = 0x676f_6c6b_7562_6d61; // "ambuklog"
/// `LogRecord::seq` while a record is being written.
pub const SEQ_WRITING: u64 = u64::MAX;

/// One log record.
#[repr(C)]
pub struct LogRecord {
    /// Sequence number; [`SEQ_WRITING`] while being written.
    pub seq: u64,
    pub timestamp_ns: u64,
    pub cpu: u32,
    /// Bytes of `text` used.
    pub len: u32,
    pub text: [u8; LOG_TEXT],
}

/// The ring: record `seq` lives in slot `seq % LOG_CAPACITY`.
#[repr(C)]
pub struct LogRing {
    pub magic: u64,
    /// Sequence number of the next record.
    pub next_seq: AtomicU64,
    pub capacity: u32,
    pub record_size: u32,
    pub records: [LogRecord; LOG_CAPACITY],
}

const EMPTY: LogRecord = LogRecord {
    seq: 0,
    timestamp_ns: 0,
    cpu: 0,
    len: 0,
    text: [0; LOG_TEXT],
};

pub static mut LOG: LogRing = LogRing {
    magic: LOG_MAGIC,
    next_seq: AtomicU64::new(0),
    capacity: LOG_CAPACITY as u32,
    record_size: core::mem::size_of::<LogRecord>() as u32,
    records: [EMPTY; LOG_CAPACITY],
};

/// A fixed buffer that truncates what does not fit.
pub struct FixedBuf<const N: usize> {
    pub buf: [u8; N],
    pub len: usize,
}

impl<const N: usize> FixedBuf<N> {
    pub const fn new() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Appends a record to the ring (takes the log lock).
pub fn log_record(cpu: u32, text: &[u8]) {
    let l = lock(lock_id::LOG);
    l.lock(cpu);
    write_record(cpu, text);
    l.unlock(cpu);
}

/// Appends a record without taking the lock (panic path, when the lock may be held by a
/// stopped CPU).
pub fn write_record(cpu: u32, text: &[u8]) {
    // SAFETY: writers are serialized by the log lock (or the panic path runs alone);
    // the host only reads.
    let ring = unsafe { &mut *core::ptr::addr_of_mut!(LOG) };
    let seq = ring.next_seq.load(Ordering::Relaxed);
    let r = &mut ring.records[(seq % LOG_CAPACITY as u64) as usize];
    // SAFETY: `r` is a valid record; volatile so that the "being written" marker is stored first.
    unsafe { core::ptr::write_volatile(&mut r.seq, SEQ_WRITING) };
    r.timestamp_ns = crate::arch::now_ns();
    r.cpu = cpu;
    let n = text.len().min(LOG_TEXT);
    r.text = [0; LOG_TEXT];
    r.text[..n].copy_from_slice(&text[..n]);
    r.len = n as u32;
    // SAFETY: as above; the record is complete once its sequence number is in place.
    unsafe { core::ptr::write_volatile(&mut r.seq, seq) };
    ring.next_seq.store(seq + 1, Ordering::Release);
}

/// Formats a message into the log ring and, if `console`, onto the console too.
pub fn log(cpu: u32, console: bool, args: fmt::Arguments<'_>) {
    let mut buf = FixedBuf::<LOG_TEXT>::new();
    let _ = buf.write_fmt(args);
    if console {
        let mut line = FixedBuf::<256>::new();
        let _ = line.write_fmt(args);
        Console.write_bytes(line.as_bytes());
        Console.write_bytes(b"\n");
    }
    log_record(cpu, buf.as_bytes());
}

/// Logs to the ring and the console.
#[macro_export]
macro_rules! kprint {
    ($cpu:expr, $($arg:tt)*) => { $crate::log::log($cpu, true, format_args!($($arg)*)) };
}

/// Logs to the ring only.
#[macro_export]
macro_rules! klog {
    ($cpu:expr, $($arg:tt)*) => { $crate::log::log($cpu, false, format_args!($($arg)*)) };
}

/// Writes to the console only.
pub fn console(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
}
