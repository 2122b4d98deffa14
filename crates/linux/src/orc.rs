//! The kernel's ORC unwind tables, read from guest memory, and the unwinder that walks a
//! stack with them — no debug info needed.
//!
//! `objtool` gives every instruction range of the kernel image an ORC entry saying how to
//! find the caller's stack pointer (the CFA) and frame pointer from the registers at that
//! point; the kernel keeps them in two parallel sorted arrays it uses for its own
//! backtraces: `.orc_unwind_ip` (`s32` offsets, each relative to its own slot, to the
//! first instruction an entry covers; `__start_orc_unwind_ip`..`__stop_orc_unwind_ip`)
//! and `.orc_unwind` (six-byte `struct orc_entry`; `__start_orc_unwind`..
//! `__stop_orc_unwind`), both located through kallsyms. The entry for an address is the
//! last one whose IP is at or below it.
//!
//! An entry is `{ s16 sp_offset; s16 bp_offset; u16 flags }`, and the flags changed twice
//! (the numbering of versions is drgn's):
//!
//! | version | kernels | bits 0–3 | 4–7 | 8–… |
//! |---|---|---|---|---|
//! | 1 | < 6.3 | sp_reg | bp_reg | type (2 bits: call, regs, regs-partial), end |
//! | 2 | 6.3 | sp_reg | bp_reg | type (2 bits), signal, end |
//! | 3 | ≥ 6.4 | sp_reg | bp_reg | type (3 bits: undefined, end of stack, call, regs, regs-partial), signal |
//!
//! [`OrcEntry::decode`] turns each into version 3's terms. The unwinder ([`unwind`])
//! follows the kernel's own (`arch/x86/kernel/unwind_orc.c`): look the entry up at the
//! return address minus one (at the address itself after an exception frame, where the
//! instruction has not run), compute the CFA from `sp`, `bp`, or a register saved in a
//! `pt_regs`, then the caller's `ip`/`sp` — from the return address below the CFA for a
//! call frame, from the `pt_regs` (full or the hardware's iret frame) at the CFA for an
//! exception frame — and the caller's `bp`. Where ORC has no entry (code it does not
//! cover), the frame-pointer rule stands in, as in the kernel. Every step reads guest
//! memory through checked arithmetic; the walk stops at a user-mode frame, the end of
//! the stack, an undefined entry, an unreadable word, a stack that goes the wrong way,
//! or [`MAX_FRAMES`].

use std::ops::Range;

use crate::{Error, Result};

/// Most frames one unwind returns.
pub const MAX_FRAMES: usize = 128;
/// Most ORC entries accepted (Linux 6.x has ~50 000 for vmlinux).
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Bytes copied per read of the tables.
const CHUNK: u64 = 1 << 16;

/// `struct pt_regs` offsets (x86-64): the ones the unwinder needs.
pub mod pt_regs {
    /// `r13`.
    pub const R13: u64 = 16;
    /// `bp`.
    pub const BP: u64 = 32;
    /// `r10`.
    pub const R10: u64 = 56;
    /// `dx`.
    pub const DX: u64 = 96;
    /// `di`.
    pub const DI: u64 = 112;
    /// `ip` (the start of the hardware's iret frame).
    pub const IP: u64 = 128;
    /// `cs`.
    pub const CS: u64 = 136;
    /// `sp`.
    pub const SP: u64 = 152;
    /// `sizeof(struct pt_regs)`.
    pub const SIZE: u64 = 168;
    /// Register names in `pt_regs` order.
    pub const NAMES: [&str; 21] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
    ];
}

/// Which layout the entries' flags have (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrcVersion {
    /// Linux < 6.3.
    V1,
    /// Linux 6.3.
    V2,
    /// Linux ≥ 6.4.
    V3,
}

impl OrcVersion {
    /// The layout a kernel release (`uname -r`, e.g. `6.1.0-57-cloud-amd64`) uses;
    /// `None` when the release does not start with `MAJOR.MINOR`.
    pub fn for_release(release: &str) -> Option<OrcVersion> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some(match (major, minor) {
            (m, _) if m < 6 => OrcVersion::V1,
            (6, n) if n < 3 => OrcVersion::V1,
            (6, 3) => OrcVersion::V2,
            _ => OrcVersion::V3,
        })
    }
}

/// What an entry says a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrcType {
    /// No information: an unwind reaching it is unreliable and stops.
    Undefined,
    /// The bottom of a stack (a kernel thread's first frame, the entry code).
    EndOfStack,
    /// A called function: the return address is just below the CFA.
    Call,
    /// An exception or interrupt frame: a whole `pt_regs` at the CFA.
    Regs,
    /// The hardware's iret frame only, ending at the CFA.
    RegsPartial,
}

/// Registers an entry can base the CFA or `bp` on.
pub mod reg {
    /// Undefined.
    pub const UNDEFINED: u8 = 0;
    /// The CFA (for `bp`).
    pub const PREV_SP: u8 = 1;
    /// `dx`, from a `pt_regs`.
    pub const DX: u8 = 2;
    /// `di`, from a `pt_regs`.
    pub const DI: u8 = 3;
    /// `bp`.
    pub const BP: u8 = 4;
    /// `sp`.
    pub const SP: u8 = 5;
    /// `r10`, from a `pt_regs`.
    pub const R10: u8 = 6;
    /// `r13`, from a `pt_regs`.
    pub const R13: u8 = 7;
    /// `*(bp + offset)`.
    pub const BP_INDIRECT: u8 = 8;
    /// `*sp + offset`.
    pub const SP_INDIRECT: u8 = 9;
}

/// One ORC entry, in version 3's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrcEntry {
    /// Offset added to the CFA's base register.
    pub sp_offset: i16,
    /// Offset of the saved `bp` from its base.
    pub bp_offset: i16,
    /// The CFA's base register ([`reg`]).
    pub sp_reg: u8,
    /// The saved `bp`'s base ([`reg`]).
    pub bp_reg: u8,
    /// What the frame is.
    pub kind: OrcType,
    /// Whether the address is looked up as is (after an exception) rather than minus
    /// one, for the next frame.
    pub signal: bool,
}

impl OrcEntry {
    /// The entry the kernel uses where ORC has none: a frame-pointer frame.
    pub const FRAME_POINTER: OrcEntry = OrcEntry {
        sp_offset: 16,
        bp_offset: -16,
        sp_reg: reg::BP,
        bp_reg: reg::PREV_SP,
        kind: OrcType::Call,
        signal: false,
    };

    /// Decodes a six-byte `struct orc_entry` of `version`.
    pub fn decode(b: [u8; 6], version: OrcVersion) -> OrcEntry {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let flags = u16::from_le_bytes([b[4], b[5]]);
        let sp_reg = (flags & 0xf) as u8;
        let bp_reg = ((flags >> 4) & 0xf) as u8;
        let old_type = |t: u16| match t {
            0 => OrcType::Call,
            1 => OrcType::Regs,
            2 => OrcType::RegsPartial,
            _ => OrcType::Undefined,
        };
        let (kind, signal) = match version {
            OrcVersion::V1 | OrcVersion::V2 => {
                let end_bit = if version == OrcVersion::V1 { 10 } else { 11 };
                let end = flags & (1 << end_bit) != 0;
                let kind = if end {
                    OrcType::EndOfStack
                } else if sp_reg == reg::UNDEFINED {
                    OrcType::Undefined
                } else {
                    old_type((flags >> 8) & 3)
                };
                // Version 1 had no signal bit: exception frames were its only signals.
                let signal = if version == OrcVersion::V1 {
                    matches!(kind, OrcType::Regs | OrcType::RegsPartial)
                } else {
                    flags & (1 << 10) != 0
                };
                (kind, signal)
            }
            OrcVersion::V3 => {
                let kind = match (flags >> 8) & 7 {
                    0 => OrcType::Undefined,
                    1 => OrcType::EndOfStack,
                    2 => OrcType::Call,
                    3 => OrcType::Regs,
                    4 => OrcType::RegsPartial,
                    _ => OrcType::Undefined,
                };
                (kind, flags & (1 << 11) != 0)
            }
        };
        OrcEntry {
            sp_offset,
            bp_offset,
            sp_reg,
            bp_reg,
            kind,
            signal,
        }
    }
}

/// Where the tables are and what they cover, as kallsyms gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrcLocation {
    /// `__start_orc_unwind_ip`..`__stop_orc_unwind_ip`.
    pub ip: Range<u64>,
    /// `__start_orc_unwind`..`__stop_orc_unwind`.
    pub entries: Range<u64>,
    /// Kernel text the tables describe (`_stext`..`_etext`, and the init text while it
    /// exists); addresses elsewhere (modules, BPF) get no entry.
    pub text: Vec<Range<u64>>,
}

/// The kernel's ORC tables, copied out of guest memory once.
#[derive(Clone, Debug)]
pub struct OrcTable {
    version: OrcVersion,
    ips: Vec<u64>,
    entries: Vec<[u8; 6]>,
    text: Vec<Range<u64>>,
}

impl OrcTable {
    /// Reads the tables at `at` through `read` (guest-virtual reads). Refuses tables of
    /// mismatched or implausible sizes; sorts them if they are not sorted.
    pub fn read(
        at: &OrcLocation,
        version: OrcVersion,
        read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<OrcTable> {
        let bad = |reason: String| Error::Orc { reason };
        let ip_bytes = at.ip.end.checked_sub(at.ip.start).ok_or_else(|| {
            bad(format!(
                "__stop_orc_unwind_ip {:#x} is below its start",
                at.ip.end
            ))
        })?;
        let entry_bytes = at
            .entries
            .end
            .checked_sub(at.entries.start)
            .ok_or_else(|| {
                bad(format!(
                    "__stop_orc_unwind {:#x} is below its start",
                    at.entries.end
                ))
            })?;
        if ip_bytes % 4 != 0 || entry_bytes % 6 != 0 || ip_bytes / 4 != entry_bytes / 6 {
            return Err(bad(format!(
                "{ip_bytes} bytes of IPs and {entry_bytes} bytes of entries do not pair up"
            )));
        }
        let n = ip_bytes / 4;
        if n == 0 || n > MAX_ENTRIES {
            return Err(bad(format!("{n} entries (at most {MAX_ENTRIES} accepted)")));
        }
        // Read in chunks straight into the tables kept: a kernel has a few hundred
        // thousand entries, and every copy of them cost more than the reads.
        let copy = |start: u64, out: &mut [u8]| -> Result<()> {
            let mut done = 0usize;
            while done < out.len() {
                let step = (CHUNK as usize).min(out.len() - done);
                let va = start
                    .checked_add(done as u64)
                    .ok_or_else(|| bad(format!("table at {start:#x} overflows")))?;
                read(va, &mut out[done..done + step])?;
                done += step;
            }
            Ok(())
        };
        let n = n as usize;
        let mut rel = vec![[0u8; 4]; n];
        copy(at.ip.start, rel.as_flattened_mut())?;
        let mut entries = vec![[0u8; 6]; n];
        copy(at.entries.start, entries.as_flattened_mut())?;
        // Each IP is relative to its own slot in `.orc_unwind_ip`.
        let mut ips: Vec<u64> = rel
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let slot = at.ip.start.wrapping_add(4 * i as u64);
                slot.wrapping_add_signed(i64::from(i32::from_le_bytes(*r)))
            })
            .collect();
        drop(rel);
        if !ips.windows(2).all(|w| w[0] <= w[1]) {
            let mut pairs: Vec<(u64, [u8; 6])> = ips.into_iter().zip(entries).collect();
            pairs.sort_by_key(|p| p.0);
            (ips, entries) = pairs.into_iter().unzip();
        }
        Ok(OrcTable {
            version,
            ips,
            entries,
            text: at.text.clone(),
        })
    }

    /// A table from decoded parts (for tests and other sources of ORC).
    pub fn from_parts(
        version: OrcVersion,
        mut pairs: Vec<(u64, [u8; 6])>,
        text: Vec<Range<u64>>,
    ) -> OrcTable {
        pairs.sort_by_key(|p| p.0);
        let (ips, entries) = pairs.into_iter().unzip();
        OrcTable {
            version,
            ips,
            entries,
            text,
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// The entry covering `ip`: the last at or below it, for text the tables describe.
    pub fn find(&self, ip: u64) -> Option<OrcEntry> {
        if !self.text.iter().any(|t| t.contains(&ip)) {
            return None;
        }
        let i = self.ips.partition_point(|&a| a <= ip).checked_sub(1)?;
        Some(OrcEntry::decode(self.entries[i], self.version))
    }
}

/// Guest memory as the unwinder reads it.
pub trait StackMemory {
    /// The 8-byte word at `addr`, or `None` when it cannot be read.
    fn read_u64(&self, addr: u64) -> Option<u64>;
}

/// The registers an unwind starts from (a CPU's, or an exception frame's), in
/// [`pt_regs`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers(pub [u64; 21]);

impl Registers {
    /// `ip`.
    pub fn ip(&self) -> u64 {
        self.0[16]
    }
    /// `sp`.
    pub fn sp(&self) -> u64 {
        self.0[19]
    }
    /// `bp`.
    pub fn bp(&self) -> u64 {
        self.0[4]
    }
    /// `cs`.
    pub fn cs(&self) -> u64 {
        self.0[17]
    }
}

/// Where the unwinder may read a `pt_regs` register from.
#[derive(Clone, Copy, Debug)]
enum RegsAt {
    /// Registers held aside (a CPU's).
    Held(Registers),
    /// A full `pt_regs` on the stack.
    Full(u64),
    /// An iret frame on the stack: only `ip`, `cs`, `flags`, `sp`, `ss` are valid; the
    /// `pt_regs` it ends begins at this address.
    Partial(u64),
}

/// How a frame was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSource {
    /// The registers the unwind started from.
    Registers,
    /// ORC, through a call.
    Orc,
    /// ORC, through an exception frame (`pt_regs`).
    OrcRegs,
    /// The frame-pointer rule, where ORC has no entry.
    FramePointer,
}

/// One frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The instruction address (a return address for call frames).
    pub pc: u64,
    /// The stack pointer in that frame.
    pub sp: u64,
    /// How it was found.
    pub source: FrameSource,
    /// The full `pt_regs` this frame's registers were read from, when it was reached
    /// through an exception or interrupt frame that saved them all.
    pub regs: Option<u64>,
}

/// Why an unwind stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnwindEnd {
    /// It reached the user-mode registers of a system call or interrupt.
    UserMode,
    /// ORC marks the end of the stack (a kernel thread's first frame).
    EndOfStack,
    /// ORC has an undefined entry for this address.
    Undefined(u64),
    /// A word at this address could not be read.
    Unreadable(u64),
    /// The next frame's stack pointer went backwards on the same stack.
    WrongDirection(u64),
    /// The next frame's address is not kernel code.
    NotText(u64),
    /// An entry needs a register a call frame does not keep.
    MissingRegister(u64),
    /// [`MAX_FRAMES`] frames.
    Limit,
}

impl UnwindEnd {
    /// For people.
    pub fn describe(&self) -> String {
        match self {
            UnwindEnd::UserMode => "complete: reached user mode".into(),
            UnwindEnd::EndOfStack => "complete: end of the stack".into(),
            UnwindEnd::Undefined(a) => format!("no ORC information for {a:#x}"),
            UnwindEnd::Unreadable(a) => format!("stack word at {a:#x} unreadable"),
            UnwindEnd::WrongDirection(a) => {
                format!("stack pointer {a:#x} goes the wrong way; stopped")
            }
            UnwindEnd::NotText(a) => format!("return address {a:#x} is not kernel code"),
            UnwindEnd::MissingRegister(a) => {
                format!("the entry for {a:#x} needs a register that was not saved")
            }
            UnwindEnd::Limit => format!("stopped after {MAX_FRAMES} frames"),
        }
    }

    /// Whether the unwind reached the bottom of the stack.
    pub fn is_complete(&self) -> bool {
        matches!(self, UnwindEnd::UserMode | UnwindEnd::EndOfStack)
    }
}

/// An unwound stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwind {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Why it stopped.
    pub end: UnwindEnd,
}

/// Where an unwind starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// A CPU's registers: `ip` is the next instruction to run.
    Registers(Registers),
    /// A sleeping task's saved frame: `ip` a return address.
    Saved {
        /// Return address.
        ip: u64,
        /// Stack pointer above the saved frame.
        sp: u64,
        /// Saved frame pointer.
        bp: u64,
        /// Whether `ip` is a signal frame's (`ret_from_fork`): looked up as is.
        signal: bool,
    },
}

/// Unwinds from `start`, with `find` giving the ORC entry for an address (`None` where
/// ORC has none: the frame-pointer rule is used). `is_text` says whether an address is
/// kernel code; `stacks` are the stacks known to the caller (a move to a lower address
/// within one of them, or within one 16 KiB-aligned window otherwise, is the wrong
/// direction).
pub fn unwind(
    find: &dyn Fn(u64) -> Option<OrcEntry>,
    mem: &dyn StackMemory,
    start: Start,
    is_text: &dyn Fn(u64) -> bool,
    stacks: &[Range<u64>],
) -> Unwind {
    let (mut ip, mut sp, mut bp, mut signal, mut regs) = match start {
        Start::Registers(r) => (r.ip(), r.sp(), r.bp(), true, Some(RegsAt::Held(r))),
        Start::Saved { ip, sp, bp, signal } => (ip, sp, bp, signal, None),
    };
    let mut prev_full: Option<RegsAt> = None;
    let mut frames = vec![Frame {
        pc: ip,
        sp,
        source: match start {
            Start::Registers(_) => FrameSource::Registers,
            Start::Saved { .. } => FrameSource::Orc,
        },
        regs: None,
    }];
    let read_reg = |r: Option<RegsAt>, prev: Option<RegsAt>, off: u64| -> Option<u64> {
        let from = |at: RegsAt| match at {
            RegsAt::Held(h) => h.0.get((off / 8) as usize).copied(),
            RegsAt::Full(a) => mem.read_u64(a.checked_add(off)?),
            RegsAt::Partial(a) if off >= pt_regs::IP => mem.read_u64(a.checked_add(off)?),
            RegsAt::Partial(_) => None,
        };
        match r? {
            RegsAt::Partial(_) if off < pt_regs::IP => prev.and_then(from),
            at => from(at),
        }
    };
    let same_stack = |a: u64, b: u64| match stacks.iter().find(|s| s.contains(&a)) {
        Some(s) => s.contains(&b),
        None => a >> 14 == b >> 14,
    };
    let end = loop {
        if frames.len() >= MAX_FRAMES {
            break UnwindEnd::Limit;
        }
        // A frame of user-mode registers ends the kernel stack.
        if let Some(cs) = read_reg(regs, prev_full, pt_regs::CS) {
            if regs.is_some() && cs & 3 == 3 {
                break UnwindEnd::UserMode;
            }
        }
        let lookup = if signal { ip } else { ip.wrapping_sub(1) };
        let (orc, source) = match find(lookup) {
            Some(e) => (e, FrameSource::Orc),
            None => (OrcEntry::FRAME_POINTER, FrameSource::FramePointer),
        };
        match orc.kind {
            OrcType::Undefined => break UnwindEnd::Undefined(ip),
            OrcType::EndOfStack => break UnwindEnd::EndOfStack,
            _ => {}
        }
        signal = orc.signal;
        let off = i64::from(orc.sp_offset);
        let (base, indirect) = match orc.sp_reg {
            reg::SP => (Some(sp.wrapping_add_signed(off)), false),
            reg::BP => (Some(bp.wrapping_add_signed(off)), false),
            reg::SP_INDIRECT => (Some(sp), true),
            reg::BP_INDIRECT => (Some(bp.wrapping_add_signed(off)), true),
            reg::R10 => (read_reg(regs, prev_full, pt_regs::R10), false),
            reg::R13 => (read_reg(regs, prev_full, pt_regs::R13), false),
            reg::DI => (read_reg(regs, prev_full, pt_regs::DI), false),
            reg::DX => (read_reg(regs, prev_full, pt_regs::DX), false),
            _ => break UnwindEnd::Undefined(ip),
        };
        let Some(mut cfa) = base else {
            break UnwindEnd::MissingRegister(ip);
        };
        if indirect {
            match mem.read_u64(cfa) {
                Some(v) => cfa = v,
                None => break UnwindEnd::Unreadable(cfa),
            }
            if orc.sp_reg == reg::SP_INDIRECT {
                cfa = cfa.wrapping_add_signed(off);
            }
        }
        let prev_sp = sp;
        let crossed = match orc.kind {
            OrcType::Call => {
                let slot = cfa.wrapping_sub(8);
                match mem.read_u64(slot) {
                    Some(ret) => ip = ret,
                    None => break UnwindEnd::Unreadable(slot),
                }
                sp = cfa;
                regs = None;
                prev_full = None;
                false
            }
            OrcType::Regs => {
                let (Some(new_ip), Some(new_sp)) = (
                    cfa.checked_add(pt_regs::IP).and_then(|a| mem.read_u64(a)),
                    cfa.checked_add(pt_regs::SP).and_then(|a| mem.read_u64(a)),
                ) else {
                    break UnwindEnd::Unreadable(cfa);
                };
                ip = new_ip;
                sp = new_sp;
                regs = Some(RegsAt::Full(cfa));
                prev_full = None;
                true
            }
            OrcType::RegsPartial => {
                let Some(base) = cfa.checked_sub(pt_regs::IP) else {
                    break UnwindEnd::Unreadable(cfa);
                };
                let (Some(new_ip), Some(new_sp)) = (
                    mem.read_u64(cfa),
                    cfa.checked_add(pt_regs::SP - pt_regs::IP)
                        .and_then(|a| mem.read_u64(a)),
                ) else {
                    break UnwindEnd::Unreadable(cfa);
                };
                ip = new_ip;
                sp = new_sp;
                if let Some(r @ (RegsAt::Full(_) | RegsAt::Held(_))) = regs {
                    prev_full = Some(r);
                }
                regs = Some(RegsAt::Partial(base));
                true
            }
            OrcType::Undefined | OrcType::EndOfStack => unreachable!("handled above"),
        };
        let boff = i64::from(orc.bp_offset);
        match orc.bp_reg {
            reg::UNDEFINED => {
                if let Some(v) = read_reg(regs, prev_full, pt_regs::BP) {
                    bp = v;
                }
            }
            reg::PREV_SP => {
                let at = cfa.wrapping_add_signed(boff);
                match mem.read_u64(at) {
                    Some(v) => bp = v,
                    None => break UnwindEnd::Unreadable(at),
                }
            }
            reg::BP => {
                let at = bp.wrapping_add_signed(boff);
                match mem.read_u64(at) {
                    Some(v) => bp = v,
                    None => break UnwindEnd::Unreadable(at),
                }
            }
            _ => break UnwindEnd::Undefined(ip),
        }
        // User-mode registers: the kernel stack ends here, not at a new frame.
        if crossed {
            if let Some(cs) = read_reg(regs, prev_full, pt_regs::CS) {
                if cs & 3 == 3 {
                    break UnwindEnd::UserMode;
                }
            }
        }
        if sp <= prev_sp && same_stack(sp, prev_sp) {
            break UnwindEnd::WrongDirection(sp);
        }
        if !is_text(ip) {
            break UnwindEnd::NotText(ip);
        }
        frames.push(Frame {
            pc: ip,
            sp,
            source: if crossed {
                FrameSource::OrcRegs
            } else {
                source
            },
            regs: match regs {
                Some(RegsAt::Full(a)) if crossed => Some(a),
                _ => None,
            },
        });
    };
    Unwind { frames, end }
}

#[cfg(test)]
// The tables' text is a list of ranges; one range in it is what these tests mean.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);

    impl StackMemory for Mem {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            self.0.get(&addr).copied()
        }
    }

    fn v3(
        sp_reg: u8,
        sp_offset: i16,
        bp_reg: u8,
        bp_offset: i16,
        kind: u16,
        signal: bool,
    ) -> [u8; 6] {
        let flags =
            u16::from(sp_reg) | u16::from(bp_reg) << 4 | kind << 8 | u16::from(signal) << 11;
        let mut b = [0u8; 6];
        b[0..2].copy_from_slice(&sp_offset.to_le_bytes());
        b[2..4].copy_from_slice(&bp_offset.to_le_bytes());
        b[4..6].copy_from_slice(&flags.to_le_bytes());
        b
    }

    #[test]
    fn versions_of_releases() {
        assert_eq!(
            OrcVersion::for_release("6.1.0-57-cloud-amd64"),
            Some(OrcVersion::V1)
        );
        assert_eq!(
            OrcVersion::for_release("5.10.0-30-amd64"),
            Some(OrcVersion::V1)
        );
        assert_eq!(OrcVersion::for_release("6.3.13"), Some(OrcVersion::V2));
        assert_eq!(
            OrcVersion::for_release("6.12.57+deb13-amd64"),
            Some(OrcVersion::V3)
        );
        assert_eq!(OrcVersion::for_release("7.0"), Some(OrcVersion::V3));
        assert_eq!(OrcVersion::for_release("linux"), None);
    }

    #[test]
    fn decodes_every_version() {
        // Version 1: call frame, sp+16, bp undefined.
        let flags: u16 = 5;
        let mut b = [16, 0, 0, 0, 0, 0];
        b[4..6].copy_from_slice(&flags.to_le_bytes());
        let e = OrcEntry::decode(b, OrcVersion::V1);
        assert_eq!(
            (e.kind, e.sp_reg, e.sp_offset, e.signal),
            (OrcType::Call, reg::SP, 16, false)
        );
        // Version 1: regs (type 1) is a signal frame; the end bit ends the stack.
        b[4..6].copy_from_slice(&(5u16 | 1 << 8).to_le_bytes());
        let e = OrcEntry::decode(b, OrcVersion::V1);
        assert_eq!((e.kind, e.signal), (OrcType::Regs, true));
        b[4..6].copy_from_slice(&(1u16 << 10).to_le_bytes());
        assert_eq!(
            OrcEntry::decode(b, OrcVersion::V1).kind,
            OrcType::EndOfStack
        );
        b[4..6].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(OrcEntry::decode(b, OrcVersion::V1).kind, OrcType::Undefined);
        // Version 2: signal bit 10, end bit 11.
        b[4..6].copy_from_slice(&(5u16 | 1 << 10).to_le_bytes());
        let e = OrcEntry::decode(b, OrcVersion::V2);
        assert_eq!((e.kind, e.signal), (OrcType::Call, true));
        b[4..6].copy_from_slice(&(1u16 << 11).to_le_bytes());
        assert_eq!(
            OrcEntry::decode(b, OrcVersion::V2).kind,
            OrcType::EndOfStack
        );
        // Version 3.
        let e = OrcEntry::decode(v3(reg::SP, 8, reg::PREV_SP, -16, 3, true), OrcVersion::V3);
        assert_eq!(
            (e.kind, e.sp_offset, e.bp_reg, e.bp_offset, e.signal),
            (OrcType::Regs, 8, reg::PREV_SP, -16, true)
        );
        assert_eq!(
            OrcEntry::decode(v3(0, 0, 0, 0, 1, false), OrcVersion::V3).kind,
            OrcType::EndOfStack
        );
        assert_eq!(
            OrcEntry::decode(v3(0, 0, 0, 0, 7, false), OrcVersion::V3).kind,
            OrcType::Undefined
        );
    }

    #[test]
    fn reads_relative_ips_and_finds_the_last_entry_at_or_below() {
        // Three entries at 0x1000, 0x1010, 0x1020 of text, IP table at 0x5000.
        let mut mem: HashMap<u64, u8> = HashMap::new();
        let ip_start = 0x5000u64;
        for (i, target) in [0x1000u64, 0x1010, 0x1020].iter().enumerate() {
            let slot = ip_start + 4 * i as u64;
            let rel = (*target as i64 - slot as i64) as i32;
            for (k, byte) in rel.to_le_bytes().iter().enumerate() {
                mem.insert(slot + k as u64, *byte);
            }
        }
        let entries = [
            v3(reg::SP, 8, 0, 0, 2, false),
            v3(reg::SP, 16, 0, 0, 2, false),
            v3(0, 0, 0, 0, 0, false),
        ];
        for (i, e) in entries.iter().enumerate() {
            for (k, byte) in e.iter().enumerate() {
                mem.insert(0x6000 + 6 * i as u64 + k as u64, *byte);
            }
        }
        let read = |va: u64, buf: &mut [u8]| -> Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *mem.get(&(va + i as u64)).ok_or(Error::Orc {
                    reason: format!("{va:#x}"),
                })?;
            }
            Ok(())
        };
        let at = OrcLocation {
            ip: 0x5000..0x500c,
            entries: 0x6000..0x6012,
            text: vec![0x1000..0x2000],
        };
        let t = OrcTable::read(&at, OrcVersion::V3, &read).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.find(0x1000).unwrap().sp_offset, 8);
        assert_eq!(t.find(0x100f).unwrap().sp_offset, 8);
        assert_eq!(t.find(0x1015).unwrap().sp_offset, 16);
        assert_eq!(t.find(0x1fff).unwrap().kind, OrcType::Undefined);
        assert_eq!(t.find(0xfff), None, "outside the text");
        assert_eq!(t.find(0x3000), None, "outside the text");
        // Mismatched sizes and unreadable tables are refused.
        let mut bad = at.clone();
        bad.entries = 0x6000..0x600c;
        assert!(OrcTable::read(&bad, OrcVersion::V3, &read).is_err());
        let mut bad = at.clone();
        bad.ip = Range {
            start: 0x500c,
            end: 0x5000,
        };
        assert!(OrcTable::read(&bad, OrcVersion::V3, &read).is_err());
        let mut bad = at;
        bad.ip = 0x7000..0x700c;
        bad.entries = 0x6000..0x6012;
        assert!(OrcTable::read(&bad, OrcVersion::V3, &read).is_err());
    }

    /// A stack built by hand: f (sp+16 CFA) called from g (sp+8), called from an
    /// interrupt entry whose pt_regs hold a user-mode frame.
    #[test]
    fn unwinds_calls_and_stops_at_user_regs() {
        let text = 0xffff_ffff_8100_0000u64;
        let (f, g, entry) = (text + 0x100, text + 0x200, text + 0x300);
        let table = OrcTable::from_parts(
            OrcVersion::V3,
            vec![
                (f, v3(reg::SP, 16, reg::PREV_SP, -16, 2, false)),
                (g, v3(reg::SP, 8, reg::UNDEFINED, 0, 2, false)),
                (entry, v3(reg::SP, 0, reg::UNDEFINED, 0, 3, true)),
                (text + 0x400, v3(0, 0, 0, 0, 0, false)),
            ],
            vec![text..text + 0x1000],
        );
        let stack = 0xffff_c900_0000_0000u64;
        let mut m = HashMap::new();
        // In f at sp = stack: saved bp at CFA-16, return into g at CFA-8.
        m.insert(stack, 0xbbbb);
        m.insert(stack + 8, g + 5);
        // In g at sp = stack+16: return into entry at CFA-8 = stack+16.
        m.insert(stack + 16, entry + 7);
        // pt_regs at stack+24: user cs.
        let regs = stack + 24;
        m.insert(regs + pt_regs::IP, 0x40_1000);
        m.insert(regs + pt_regs::CS, 0x33);
        m.insert(regs + pt_regs::SP, 0x7fff_0000);
        m.insert(regs + pt_regs::BP, 0);
        let mut r = Registers::default();
        r.0[16] = f + 3;
        r.0[19] = stack;
        r.0[17] = 0x10;
        let is_text = |a: u64| (text..text + 0x1000).contains(&a);
        let u = unwind(
            &|ip| table.find(ip),
            &Mem(m.clone()),
            Start::Registers(r),
            &is_text,
            &[],
        );
        let pcs: Vec<u64> = u.frames.iter().map(|f| f.pc).collect();
        assert_eq!(pcs, [f + 3, g + 5, entry + 7]);
        assert_eq!(u.end, UnwindEnd::UserMode);
        assert_eq!(u.frames[0].source, FrameSource::Registers);
        assert_eq!(u.frames[1].source, FrameSource::Orc);

        // A loop (a return address pointing back down the stack) is cut off.
        let mut looped = m.clone();
        looped.insert(stack + 16, f + 3);
        let u = unwind(
            &|ip| table.find(ip),
            &Mem(looped),
            Start::Registers(r),
            &is_text,
            &[],
        );
        assert!(u.frames.len() < MAX_FRAMES);
        assert!(!u.end.is_complete());

        // An unreadable word ends the unwind, saying where.
        let mut holed = m;
        holed.remove(&(stack + 16));
        let u = unwind(
            &|ip| table.find(ip),
            &Mem(holed),
            Start::Registers(r),
            &is_text,
            &[],
        );
        assert_eq!(u.end, UnwindEnd::Unreadable(stack + 16));
        assert_eq!(u.frames.len(), 2);
    }

    /// An exception frame in the kernel: the unwind crosses it and goes on with the
    /// interrupted code's registers, looked up at the address itself.
    #[test]
    fn crosses_kernel_pt_regs_and_falls_back_to_frame_pointers() {
        let text = 0xffff_ffff_8100_0000u64;
        let (handler, interrupted) = (text + 0x100, text + 0x200);
        let table = OrcTable::from_parts(
            OrcVersion::V1,
            vec![
                // The handler's frame: pt_regs right above the return slot (type regs).
                (handler, {
                    let mut b = [8, 0, 0, 0, 0, 0];
                    b[4..6].copy_from_slice(&(5u16 | 1 << 8).to_le_bytes());
                    b
                }),
                // The interrupted function: bp-based CFA, looked up at its own address.
                (interrupted, {
                    let mut b = [16, 0, 0xf0, 0xff, 0, 0];
                    b[4..6].copy_from_slice(&(4u16 | 1 << 4).to_le_bytes());
                    b
                }),
                (text + 0x300, [0; 6]),
            ],
            vec![text..text + 0x300],
        );
        let stack = 0xffff_c900_0001_0000u64;
        let mut m = HashMap::new();
        let regs = stack + 8;
        m.insert(regs + pt_regs::IP, interrupted);
        m.insert(regs + pt_regs::CS, 0x10);
        m.insert(regs + pt_regs::SP, stack + 0x400);
        m.insert(regs + pt_regs::BP, stack + 0x500);
        // Frame at bp: saved bp then return address into code ORC does not cover.
        let outside = text + 0x800;
        m.insert(stack + 0x500, stack + 0x600);
        m.insert(stack + 0x508, outside);
        // Frame-pointer rule for `outside`: next return address at bp+8.
        m.insert(stack + 0x600, 0);
        m.insert(stack + 0x608, 0x1234);
        let mut r = Registers::default();
        r.0[16] = handler + 1;
        r.0[19] = stack;
        let is_text = |a: u64| (text..text + 0x1000).contains(&a);
        let u = unwind(
            &|ip| table.find(ip),
            &Mem(m),
            Start::Registers(r),
            &is_text,
            &[],
        );
        let got: Vec<(u64, FrameSource)> = u.frames.iter().map(|f| (f.pc, f.source)).collect();
        assert_eq!(
            got,
            [
                (handler + 1, FrameSource::Registers),
                (interrupted, FrameSource::OrcRegs),
                (outside, FrameSource::Orc),
            ]
        );
        assert_eq!(
            u.end,
            UnwindEnd::NotText(0x1234),
            "the frame-pointer step ran"
        );
        assert_eq!(u.frames[1].regs, Some(regs), "where the pt_regs are");
        assert_eq!(u.frames[2].regs, None);
    }

    /// Garbage never panics and never loops beyond the limit.
    #[test]
    fn garbage_stacks_are_bounded() {
        let text = 0xffff_ffff_8100_0000u64;
        let table = OrcTable::from_parts(
            OrcVersion::V3,
            (0..64u64)
                .map(|i| {
                    (
                        text + i * 16,
                        v3(
                            (i % 10) as u8,
                            (i as i16) * 8 - 64,
                            (i % 5) as u8,
                            -8,
                            (i % 6) as u16,
                            i % 2 == 0,
                        ),
                    )
                })
                .collect(),
            vec![text..text + 0x400],
        );
        // Every word reads as a text address or a stack address.
        struct Wild;
        impl StackMemory for Wild {
            fn read_u64(&self, addr: u64) -> Option<u64> {
                Some(if addr.is_multiple_of(16) {
                    0xffff_ffff_8100_0000 + (addr % 0x400)
                } else {
                    addr.wrapping_add(0x40)
                })
            }
        }
        for seed in 0..200u64 {
            let mut r = Registers::default();
            r.0[16] = text + seed * 7 % 0x400;
            r.0[19] = 0xffff_c900_0000_0000 + seed * 8;
            r.0[4] = r.0[19] + 0x100;
            let u = unwind(
                &|ip| table.find(ip),
                &Wild,
                Start::Registers(r),
                &|_| true,
                &[],
            );
            assert!(u.frames.len() <= MAX_FRAMES);
        }
    }
}
