//! The printk ring buffer (Linux ≥ 5.10), read from guest memory as dmesg records.
//!
//! The lockless ring (`kernel/printk/printk_ringbuffer.{c,h}`) has three parts, all
//! located and laid out through VMCOREINFO alone (`SYMBOL(prb)`, a pointer to the
//! `struct printk_ringbuffer`, and the `printk_ringbuffer`, `prb_desc_ring`, `prb_desc`,
//! `prb_data_blk_lpos`, `printk_info` and `prb_data_ring` `SIZE`/`OFFSET` entries):
//!
//! * a descriptor ring of `1 << count_bits` `struct prb_desc { state_var;
//!   text_blk_lpos { begin, next } }`. `state_var` holds the descriptor's id in its low
//!   62 bits and its state in the top two (reserved, committed, finalized, reusable).
//!   Ids grow by one per record; id `i` lives at index `i & (count - 1)`;
//! * a parallel array of `struct printk_info` (sequence number, timestamp, text length,
//!   facility, level, caller id);
//! * a data ring of `1 << size_bits` bytes of blocks, each an `unsigned long` id then the
//!   text. Logical positions (`lpos`) grow without wrapping; a block that would straddle
//!   the ring's end is placed at its start instead. Odd positions mark a record without
//!   a block ("data-less": empty text, or text that could not be stored).
//!
//! [`read_log`] walks the descriptors from `tail_id` to `head_id` the way the kernel's
//! reader, makedumpfile and crash do, keeps those that are committed or finalized, and
//! reads each one's text. The ring's header is read as [`Object`]s over VMCOREINFO's
//! layouts, every member found once; the three arrays are copied with a few large reads
//! and decoded in memory at the offsets those layouts give. The walk is bounded by the
//! descriptor count, the node limit and the time budget. Anything inconsistent skips the
//! record and is counted, never trusted. Memory that cannot be read (a page missing from
//! a dump cut short) costs the records whose descriptor, `printk_info` or text lies in
//! it, not the log: only a header, or arrays wholly unreadable, fail the read.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ambulance_introspect::object::{MemberLayout, Object};
use ambulance_introspect::program::Program;
use ambulance_introspect::types::{TypeId, TypeSource};
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;

use crate::{Error, Result};

/// Largest descriptor ring accepted, as a power of two.
pub const MAX_COUNT_BITS: u32 = 24;
/// Largest data ring accepted, as a power of two (1 GiB).
pub const MAX_SIZE_BITS: u32 = 30;
/// Largest `struct prb_desc` accepted (24 bytes in Linux 6.1).
const MAX_DESC_SIZE: u64 = 256;
/// Largest `struct printk_info` accepted (88 bytes in Linux 6.1).
const MAX_INFO_SIZE: u64 = 1024;
/// Most bytes of descriptors and `printk_info` records copied.
const MAX_ARRAY_BYTES: u64 = 512 << 20;
/// Descriptors walked between looks at the clock.
const CLOCK_EVERY: u64 = 1024;

/// `state_var`: the id bits and the state shift.
const ID_MASK: u64 = (1 << 62) - 1;
const STATE_SHIFT: u32 = 62;
const DESC_RESERVED: u64 = 0;
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;
/// `lpos` of a data-less record with empty text (`NO_LPOS` in Linux 6.1).
const NO_LPOS: u64 = 3;

/// One printk record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintkRecord {
    /// Sequence number.
    pub seq: u64,
    /// Nanoseconds since boot (`local_clock()`), as dmesg shows them.
    pub timestamp_ns: u64,
    /// Log level (0 = emergency … 7 = debug).
    pub level: u8,
    /// Syslog facility (0 = kernel).
    pub facility: u8,
    /// Who printed it: a task id, or `0x80000000 | cpu` in interrupt context.
    pub caller_id: u32,
    /// The text, without a trailing newline; it may hold several lines. Invalid UTF-8
    /// is replaced.
    pub text: String,
}

/// The records read from the ring, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// Committed and finalized records, in sequence order.
    pub records: Vec<PrintkRecord>,
    /// Descriptors skipped: being written (reserved), already recycled (reusable),
    /// overwritten (id mismatch), or whose text could not be read.
    pub dropped: u64,
    /// What was inconsistent or cut short, one line per kind of problem.
    pub problems: Vec<String>,
}

fn err(reason: String) -> Error {
    Error::Printk { reason }
}

/// The ring's structures as VMCOREINFO lays them out: the header's members, read as
/// [`Object`]s, and the offsets and sizes of the records, which are copied in bulk and
/// decoded in memory. Every member is found once.
struct Layout {
    prb: u64,
    types: Arc<dyn TypeSource>,
    ringbuffer: TypeId,
    desc_ring: MemberLayout,
    text_data_ring: MemberLayout,
    count_bits: MemberLayout,
    descs: MemberLayout,
    infos: MemberLayout,
    head_id: MemberLayout,
    tail_id: MemberLayout,
    size_bits: MemberLayout,
    data: MemberLayout,
    desc_size: u64,
    state_var: u64,
    lpos_begin: u64,
    lpos_next: u64,
    info_size: u64,
    seq: u64,
    ts_nsec: u64,
    text_len: u64,
    caller_id: u64,
}

impl Layout {
    fn from_vmcoreinfo(v: &Vmcoreinfo) -> Result<Layout> {
        let types = v.types();
        let member = |ty: &str, path: &str| {
            types
                .find(ty)
                .and_then(|id| MemberLayout::resolve(types.clone(), id, path))
                .map_err(|_| err(format!("VMCOREINFO has no OFFSET({ty}.{path})")))
        };
        let off = |ty: &str, path: &str| member(ty, path).map(|m| m.offset());
        let size = |ty: &str| {
            types
                .find(ty)
                .and_then(|id| types.get(id))
                .ok()
                .and_then(|t| t.size)
                .ok_or_else(|| err(format!("VMCOREINFO has no SIZE({ty})")))
        };
        let text_blk_lpos = off("prb_desc", "text_blk_lpos")?;
        let l = Layout {
            prb: v
                .symbol("prb")
                .ok_or_else(|| err("VMCOREINFO has no SYMBOL(prb)".into()))?,
            desc_ring: member("printk_ringbuffer", "desc_ring")?,
            text_data_ring: member("printk_ringbuffer", "text_data_ring")?,
            count_bits: member("prb_desc_ring", "count_bits")?,
            descs: member("prb_desc_ring", "descs")?,
            infos: member("prb_desc_ring", "infos")?,
            head_id: member("prb_desc_ring", "head_id")?,
            tail_id: member("prb_desc_ring", "tail_id")?,
            desc_size: size("prb_desc")?,
            state_var: off("prb_desc", "state_var")?,
            lpos_begin: text_blk_lpos.saturating_add(off("prb_data_blk_lpos", "begin")?),
            lpos_next: text_blk_lpos.saturating_add(off("prb_data_blk_lpos", "next")?),
            info_size: size("printk_info")?,
            seq: off("printk_info", "seq")?,
            ts_nsec: off("printk_info", "ts_nsec")?,
            text_len: off("printk_info", "text_len")?,
            caller_id: off("printk_info", "caller_id")?,
            size_bits: member("prb_data_ring", "size_bits")?,
            data: member("prb_data_ring", "data")?,
            ringbuffer: types
                .find("printk_ringbuffer")
                .map_err(|_| err("VMCOREINFO has no printk_ringbuffer".into()))?,
            types,
        };
        let fits = |what: &str, at: u64, width: u64, size: u64, max: u64| {
            if size == 0 || size > max {
                return Err(err(format!(
                    "VMCOREINFO SIZE of {what}'s struct is {size} (1..={max} accepted)"
                )));
            }
            if at.saturating_add(width) > size {
                return Err(err(format!(
                    "VMCOREINFO puts {what} at offset {at}, past the {size}-byte struct"
                )));
            }
            Ok(())
        };
        let (d, i) = (l.desc_size, l.info_size);
        fits("prb_desc.state_var", l.state_var, 8, d, MAX_DESC_SIZE)?;
        fits(
            "prb_desc.text_blk_lpos.begin",
            l.lpos_begin,
            8,
            d,
            MAX_DESC_SIZE,
        )?;
        fits(
            "prb_desc.text_blk_lpos.next",
            l.lpos_next,
            8,
            d,
            MAX_DESC_SIZE,
        )?;
        fits("printk_info.seq", l.seq, 8, i, MAX_INFO_SIZE)?;
        fits("printk_info.ts_nsec", l.ts_nsec, 8, i, MAX_INFO_SIZE)?;
        // text_len (u16), then the facility byte and the flags:5/level:3 byte.
        fits("printk_info.text_len", l.text_len, 4, i, MAX_INFO_SIZE)?;
        fits("printk_info.caller_id", l.caller_id, 4, i, MAX_INFO_SIZE)?;
        Ok(l)
    }
}

fn u64_at(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Fails early, before a large buffer is allocated, when neither the first nor the last
/// byte of `[va, va + len)` is mapped: the pointer is garbage, not a page or two missing.
fn check_ends(program: &Program, what: &str, va: u64, len: u64) -> Result<()> {
    let last = va.wrapping_add(len.saturating_sub(1));
    match (program.translate(va), program.translate(last)) {
        (Err(e), Err(_)) => Err(err(format!(
            "cannot read {what} at {va:#x} (+{len} bytes): {e}"
        ))),
        _ => Ok(()),
    }
}

/// Byte ranges of a buffer that could not be read (zeros in the buffer), ascending.
#[derive(Clone, Debug, Default)]
struct Holes(Vec<Range<usize>>);

impl Holes {
    fn add(&mut self, r: Range<usize>) {
        match self.0.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => self.0.push(r),
        }
    }

    /// Whether any byte of `r` is in a hole.
    fn hit(&self, r: Range<usize>) -> bool {
        let i = self.0.partition_point(|h| h.end <= r.start);
        self.0.get(i).is_some_and(|h| h.start < r.end)
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(|h| h.len()).sum()
    }
}

/// Reads `buf.len()` bytes at `va` as far as they can be read: pages that cannot be are
/// left zero and added to `holes`, offset by `base` (the buffer's place in a larger one).
fn read_sparse(program: &Program, va: u64, buf: &mut [u8], base: usize, holes: &mut Holes) {
    if program.read_virt(va, buf).is_ok() {
        return;
    }
    let mut off = 0usize;
    while off < buf.len() {
        let cur = va.wrapping_add(off as u64);
        let n = ((4096 - (cur & 0xfff)) as usize).min(buf.len() - off);
        if program.read_virt(cur, &mut buf[off..off + n]).is_err() {
            buf[off..off + n].fill(0);
            holes.add(base + off..base + off + n);
        }
        off += n;
    }
}

/// Reads `n` elements of `size` bytes of the ring array at `base` (of `count` elements),
/// starting at index `first` and wrapping at the end: at most two reads, with what could
/// not be read as holes. Fails only when none of it can be read.
fn read_ring_array(
    program: &Program,
    what: &str,
    base: u64,
    size: u64,
    count: u64,
    first: u64,
    n: u64,
) -> Result<(Vec<u8>, Holes)> {
    check_ends(program, what, base, count * size)?;
    let mut buf = vec![0u8; (n * size) as usize];
    let mut holes = Holes::default();
    let before_end = (count - first).min(n);
    let split = (before_end * size) as usize;
    let (a, b) = buf.split_at_mut(split);
    for (index, part, at) in [(first, a, 0), (0, b, split)] {
        if part.is_empty() {
            continue;
        }
        let va = base.wrapping_add(index * size);
        read_sparse(program, va, part, at, &mut holes);
    }
    if !buf.is_empty() && holes.bytes() == buf.len() {
        return Err(err(format!(
            "cannot read any of the {n} {what} at {:#x}",
            base.wrapping_add(first * size)
        )));
    }
    Ok((buf, holes))
}

/// Why a descriptor was skipped; counted per kind for [`Log::problems`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    Reserved,
    Reusable,
    IdMismatch,
    SeqMismatch,
    TextLost,
    BadBlock,
    Unreadable,
}

impl Skip {
    const ALL: [Skip; 7] = [
        Skip::Reserved,
        Skip::Reusable,
        Skip::IdMismatch,
        Skip::SeqMismatch,
        Skip::TextLost,
        Skip::BadBlock,
        Skip::Unreadable,
    ];

    fn describe(self) -> &'static str {
        match self {
            Skip::Reserved => "being written (reserved), skipped",
            Skip::Reusable => "already recycled (reusable), skipped",
            Skip::IdMismatch => "holding another id than the walk expects (overwritten), skipped",
            Skip::SeqMismatch => "with a sequence number not of their slot, skipped",
            Skip::TextLost => "whose text was never stored (no data block), skipped",
            Skip::BadBlock => "with an invalid or overwritten data block, skipped",
            Skip::Unreadable => "in memory that cannot be read, lost",
        }
    }
}

/// The text block of a descriptor: `Ok(None)` for a record with empty text.
fn text_block<'d>(
    data: &'d [u8],
    holes: &Holes,
    size_bits: u32,
    id: u64,
    begin: u64,
    next: u64,
) -> std::result::Result<Option<&'d [u8]>, (Skip, String)> {
    let bad = |why: String| Err((Skip::BadBlock, why));
    if begin & 1 == 1 || next & 1 == 1 {
        return match (begin, next) {
            (NO_LPOS, NO_LPOS) => Ok(None),
            (b, n) if b & 1 == 1 && n & 1 == 1 => Err((
                Skip::TextLost,
                format!("data-less block lpos {b:#x}..{n:#x}"),
            )),
            (b, n) => bad(format!("half data-less block lpos {b:#x}..{n:#x}")),
        };
    }
    let size = data.len() as u64;
    let wraps = |lpos: u64| lpos >> size_bits;
    let index = |lpos: u64| lpos & (size - 1);
    let (at, len) = if wraps(begin) == wraps(next) && begin < next {
        (index(begin), next - begin)
    } else if wraps(begin.wrapping_add(size)) == wraps(next) {
        // Wrapped: the block's data is at the start of the ring.
        (0, index(next))
    } else {
        return bad(format!("block lpos {begin:#x}..{next:#x} is not one block"));
    };
    if !begin.is_multiple_of(8) || !next.is_multiple_of(8) || len < 8 || at + len > size {
        return bad(format!(
            "block lpos {begin:#x}..{next:#x} is misaligned or too short"
        ));
    }
    let (at, len) = (at as usize, len as usize);
    if holes.hit(at..at + len) {
        return Err((
            Skip::Unreadable,
            format!("block lpos {begin:#x}..{next:#x} cannot be read"),
        ));
    }
    let block = &data[at..at + len];
    let block_id = u64_at(block, 0);
    if block_id & ID_MASK != id {
        return bad(format!(
            "block lpos {begin:#x}..{next:#x} holds id {block_id:#x}, not {id:#x}"
        ));
    }
    Ok(Some(&block[8..]))
}

/// Reads the kernel's log from the printk ring buffer (see the module documentation).
///
/// Errors when VMCOREINFO lacks an entry, the ring's header is unreadable or
/// implausible, or its arrays cannot be read; inconsistent records are skipped and
/// counted in [`Log::dropped`] and [`Log::problems`]. `limits.max_nodes` bounds the
/// descriptors walked (the newest are kept) and `limits.time_budget` the walk.
pub fn read_log(program: &Program, vmcoreinfo: &Vmcoreinfo, limits: WalkLimits) -> Result<Log> {
    let started = Instant::now();
    let l = Layout::from_vmcoreinfo(vmcoreinfo)?;
    let rb = program
        .read_u64(l.prb)
        .map_err(|e| err(format!("cannot read the prb pointer at {:#x}: {e}", l.prb)))?;
    // VMCOREINFO's layouts do not say what a member is: the two rings inside
    // `struct printk_ringbuffer` are read as the structures they are.
    let ring = Object::new(program, l.types.clone(), rb, l.ringbuffer);
    let dr = ring.member_at(&l.desc_ring)?.reinterpret("prb_desc_ring")?;
    let tr = ring
        .member_at(&l.text_data_ring)?
        .reinterpret("prb_data_ring")?;
    let field = |what: &str, ring: &Object<'_>, m: &MemberLayout, wide: bool| -> Result<u64> {
        let f = ring.member_at(m)?;
        let v = if wide {
            f.read_u64()
        } else {
            f.read_u32().map(u64::from)
        };
        v.map_err(|e| {
            err(format!(
                "cannot read {what} at {:#x} (ring at {rb:#x}): {e}",
                f.address()
            ))
        })
    };
    let count_bits = field("prb_desc_ring.count_bits", &dr, &l.count_bits, false)?;
    let descs = field("prb_desc_ring.descs", &dr, &l.descs, true)?;
    let infos = field("prb_desc_ring.infos", &dr, &l.infos, true)?;
    let head_id = field("prb_desc_ring.head_id", &dr, &l.head_id, true)? & ID_MASK;
    let tail_id = field("prb_desc_ring.tail_id", &dr, &l.tail_id, true)? & ID_MASK;
    let size_bits = field("prb_data_ring.size_bits", &tr, &l.size_bits, false)?;
    let data_va = field("prb_data_ring.data", &tr, &l.data, true)?;
    if count_bits > MAX_COUNT_BITS as u64 {
        return Err(err(format!(
            "prb_desc_ring.count_bits at {:#x} is {count_bits} (at most {MAX_COUNT_BITS})",
            dr.address().wrapping_add(l.count_bits.offset())
        )));
    }
    if size_bits > MAX_SIZE_BITS as u64 {
        return Err(err(format!(
            "prb_data_ring.size_bits at {:#x} is {size_bits} (at most {MAX_SIZE_BITS})",
            tr.address().wrapping_add(l.size_bits.offset())
        )));
    }
    let count = 1u64 << count_bits;
    let mask = count - 1;
    let mut problems = Vec::new();

    // The ids from tail to head, at most a ring's worth and the node limit: the newest.
    let span = (head_id.wrapping_sub(tail_id) & ID_MASK).saturating_add(1);
    let mut n = span;
    if n > count {
        problems.push(format!(
            "tail id {tail_id:#x} and head id {head_id:#x} span {span} descriptors, more than the ring's {count}: reading the newest {count}"
        ));
        n = count;
    }
    if n > limits.max_nodes {
        problems.push(format!(
            "{n} descriptors, more than the limit of {}: reading the newest {}",
            limits.max_nodes, limits.max_nodes
        ));
        n = limits.max_nodes;
    }
    if n * (l.desc_size + l.info_size) > MAX_ARRAY_BYTES {
        return Err(err(format!(
            "{n} descriptors of {} + {} bytes are more than {MAX_ARRAY_BYTES} bytes",
            l.desc_size, l.info_size
        )));
    }
    let first_id = head_id.wrapping_sub(n - 1) & ID_MASK;
    let first = first_id & mask;
    let (desc_buf, desc_holes) =
        read_ring_array(program, "descriptors", descs, l.desc_size, count, first, n)?;
    let (info_buf, info_holes) = read_ring_array(
        program,
        "printk_info records",
        infos,
        l.info_size,
        count,
        first,
        n,
    )?;
    let data_size = 1u64 << size_bits;
    check_ends(program, "the data ring", data_va, data_size)?;
    let mut data = vec![0u8; data_size as usize];
    let mut data_holes = Holes::default();
    read_sparse(program, data_va, &mut data, 0, &mut data_holes);
    if data_holes.bytes() == data.len() {
        return Err(err(format!(
            "cannot read any of the {data_size}-byte data ring at {data_va:#x}"
        )));
    }

    let mut records = Vec::with_capacity(n as usize);
    let mut skipped = [0u64; Skip::ALL.len()];
    let mut example: [Option<String>; Skip::ALL.len()] = Default::default();
    let mut truncated = 0u64;
    for k in 0..n {
        if k % CLOCK_EVERY == CLOCK_EVERY - 1 && started.elapsed() > limits.time_budget {
            problems.push(format!(
                "time budget of {:?} exhausted after {k} of {n} descriptors",
                limits.time_budget
            ));
            break;
        }
        let id = first_id.wrapping_add(k) & ID_MASK;
        let desc_at = (k * l.desc_size) as usize..((k + 1) * l.desc_size) as usize;
        let info_at = (k * l.info_size) as usize..((k + 1) * l.info_size) as usize;
        let mut skip = |why: Skip, detail: String| {
            let i = Skip::ALL.iter().position(|&s| s == why).expect("listed");
            skipped[i] += 1;
            example[i].get_or_insert(detail);
        };
        if desc_holes.hit(desc_at.clone()) || info_holes.hit(info_at.clone()) {
            skip(
                Skip::Unreadable,
                format!("id {id:#x}: its descriptor or printk_info"),
            );
            continue;
        }
        let desc = &desc_buf[desc_at];
        let info = &info_buf[info_at];
        let sv = u64_at(desc, l.state_var);
        let seq = u64_at(info, l.seq);
        if sv & ID_MASK != id {
            skip(
                Skip::IdMismatch,
                format!("id {id:#x} found {:#x}", sv & ID_MASK),
            );
            continue;
        }
        match sv >> STATE_SHIFT {
            DESC_COMMITTED | DESC_FINALIZED => {}
            DESC_RESERVED => {
                skip(Skip::Reserved, format!("id {id:#x}"));
                continue;
            }
            _ => {
                // A recycled descriptor without data lost nothing: this is what the
                // ring's bootstrap descriptor looks like until the ring wraps.
                let data_less =
                    u64_at(desc, l.lpos_begin) & 1 == 1 && u64_at(desc, l.lpos_next) & 1 == 1;
                if !data_less {
                    skip(Skip::Reusable, format!("id {id:#x}"));
                }
                continue;
            }
        }
        if seq & mask != id & mask {
            skip(Skip::SeqMismatch, format!("id {id:#x} has seq {seq}"));
            continue;
        }
        let begin = u64_at(desc, l.lpos_begin);
        let next = u64_at(desc, l.lpos_next);
        let text_len = u16::from_le_bytes(
            info[l.text_len as usize..l.text_len as usize + 2]
                .try_into()
                .expect("2 bytes"),
        ) as usize;
        let text = match text_block(&data, &data_holes, size_bits as u32, id, begin, next) {
            Ok(None) => &[][..],
            Ok(Some(block)) => {
                if text_len > block.len() {
                    truncated += 1;
                }
                &block[..text_len.min(block.len())]
            }
            Err((why, detail)) => {
                skip(why, format!("seq {seq}: {detail}"));
                continue;
            }
        };
        let flags_level = info[l.text_len as usize + 3];
        records.push(PrintkRecord {
            seq,
            timestamp_ns: u64_at(info, l.ts_nsec),
            level: flags_level >> 5,
            facility: info[l.text_len as usize + 2],
            caller_id: u32_at(info, l.caller_id),
            text: String::from_utf8_lossy(text).into_owned(),
        });
    }
    for (i, why) in Skip::ALL.iter().enumerate() {
        if skipped[i] > 0 {
            problems.push(format!(
                "{} descriptor(s) {} (first: {})",
                skipped[i],
                why.describe(),
                example[i].as_deref().unwrap_or("")
            ));
        }
    }
    if truncated > 0 {
        problems.push(format!(
            "{truncated} record(s) with a text_len longer than their data block, truncated"
        ));
    }
    Ok(Log {
        records,
        dropped: skipped.iter().sum(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_introspect::memory::RawImage;
    use ambulance_introspect::translate::{PageTableBuilder, Paging};
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// Linux 6.1's layout, as its VMCOREINFO gives it.
    const LAYOUT: &str = "SYMBOL(prb)=ffffffff82000000
SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
";

    const KDATA: u64 = 0xffff_ffff_8200_0000;
    const KDATA_PA: u64 = 0x10_0000;
    const RING: u64 = KDATA + 0x100;
    const DESCS: u64 = KDATA + 0x1000;
    const INFOS: u64 = KDATA + 0x4_0000;
    const DATA: u64 = 0xffff_c900_0000_0000;
    const DATA_PA: u64 = 0x40_0000;
    const RAM: usize = 8 << 20;
    const FIRST_ID: u64 = 0xffff_f000;

    fn vmcoreinfo() -> Vmcoreinfo {
        Vmcoreinfo::parse(&format!("OSRELEASE=6.1.0-test\n{LAYOUT}")).unwrap()
    }

    /// A test-side printk writer following the kernel's rules: descriptors are reserved
    /// in id order, a full descriptor ring recycles its tail, data blocks are allocated
    /// in lpos order (a block that would straddle the end goes to the start), and
    /// making room in the data ring recycles the oldest records.
    struct Writer {
        count_bits: u32,
        size_bits: u32,
        descs: Vec<[u64; 3]>,
        infos: Vec<[u8; 88]>,
        data: Vec<u8>,
        head_id: u64,
        tail_id: u64,
        head_lpos: u64,
        tail_lpos: u64,
        /// Records from tail to head: the expected record, or None when it is skipped.
        live: VecDeque<(u64, Option<PrintkRecord>)>,
        /// Data blocks in lpos order: (id, next).
        blocks: VecDeque<(u64, u64)>,
        wrapped: Vec<u64>,
        /// Pages of the data ring left unmapped (unreadable) by [`Writer::program`].
        holes: Vec<u64>,
    }

    impl Writer {
        fn new(count_bits: u32, size_bits: u32) -> Writer {
            let count = 1usize << count_bits;
            let mut w = Writer {
                count_bits,
                size_bits,
                descs: vec![[0; 3]; count],
                infos: vec![[0; 88]; count],
                data: vec![0; 1 << size_bits],
                head_id: FIRST_ID - 1,
                tail_id: FIRST_ID - 1,
                head_lpos: 0,
                tail_lpos: 0,
                live: VecDeque::new(),
                blocks: VecDeque::new(),
                wrapped: Vec::new(),
                holes: Vec::new(),
            };
            // The bootstrap descriptor: reusable, no data.
            w.descs[count - 1] = [(3 << 62) | (FIRST_ID - 1), 1, 1];
            w.live.push_back((FIRST_ID - 1, None));
            w
        }

        fn mask(&self) -> u64 {
            (1 << self.count_bits) - 1
        }

        fn make_reusable(&mut self, id: u64) {
            let slot = (id & self.mask()) as usize;
            self.descs[slot][0] = (3 << 62) | id;
            if let Some(e) = self.live.iter_mut().find(|e| e.0 == id) {
                e.1 = None;
            }
        }

        fn pop_data(&mut self) {
            let (id, next) = self.blocks.pop_front().expect("a block to recycle");
            self.make_reusable(id);
            self.tail_lpos = next;
        }

        fn push(&mut self, text: &[u8], level: u8, facility: u8, state: u64) -> u64 {
            let id = self.head_id + 1;
            let count = 1u64 << self.count_bits;
            while id - self.tail_id + 1 > count {
                let tail = self.tail_id;
                if self.blocks.front().is_some_and(|b| b.0 == tail) {
                    self.pop_data();
                }
                self.make_reusable(tail);
                self.tail_id += 1;
                self.live.pop_front();
            }
            let size = 1u64 << self.size_bits;
            let (begin, next) = if text.is_empty() {
                (NO_LPOS, NO_LPOS)
            } else {
                let blk = (8 + text.len() as u64).next_multiple_of(8);
                assert!(blk < size, "text too long for the test ring");
                let begin = self.head_lpos;
                let mut next = begin + blk;
                if begin >> self.size_bits != next >> self.size_bits {
                    next = (next >> self.size_bits << self.size_bits) + blk;
                }
                while next - self.tail_lpos > size {
                    self.pop_data();
                }
                let at = if begin >> self.size_bits != next >> self.size_bits {
                    let b = (begin & (size - 1)) as usize;
                    self.data[b..b + 8].copy_from_slice(&id.to_le_bytes());
                    self.wrapped.push(id);
                    0
                } else {
                    (begin & (size - 1)) as usize
                };
                self.data[at..at + 8].copy_from_slice(&id.to_le_bytes());
                self.data[at + 8..at + 8 + text.len()].copy_from_slice(text);
                self.head_lpos = next;
                self.blocks.push_back((id, next));
                (begin, next)
            };
            let idx = (id & self.mask()) as usize;
            self.descs[idx] = [(state << 62) | id, begin, next];
            let seq = id - FIRST_ID;
            let ts = 1_000_000 * seq + 17;
            let caller = 0x8000_0000 | seq as u32;
            let info = &mut self.infos[idx];
            *info = [0; 88];
            info[0..8].copy_from_slice(&seq.to_le_bytes());
            info[8..16].copy_from_slice(&ts.to_le_bytes());
            info[16..18].copy_from_slice(&(text.len() as u16).to_le_bytes());
            info[18] = facility;
            info[19] = (level << 5) | 0x1f;
            info[20..24].copy_from_slice(&caller.to_le_bytes());
            self.head_id = id;
            let record =
                (state == DESC_COMMITTED || state == DESC_FINALIZED).then(|| PrintkRecord {
                    seq,
                    timestamp_ns: ts,
                    level,
                    facility,
                    caller_id: caller,
                    text: String::from_utf8_lossy(text).into_owned(),
                });
            self.live.push_back((id, record));
            id
        }

        fn expected(&self) -> (Vec<PrintkRecord>, u64) {
            let records: Vec<PrintkRecord> = self.live.iter().filter_map(|e| e.1.clone()).collect();
            // The bootstrap descriptor, while still in the ring, is not a lost record.
            let bootstrap = self.live.iter().any(|e| e.0 == FIRST_ID - 1) as u64;
            let dropped = self.live.len() as u64 - records.len() as u64 - bootstrap;
            (records, dropped)
        }

        /// The guest, after `mutate(descs, infos, data)` on the arrays' bytes.
        fn program(
            &self,
            mutate: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>, &mut Vec<u8>),
        ) -> Program {
            let mut descs: Vec<u8> = self
                .descs
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let mut infos: Vec<u8> = self.infos.iter().flatten().copied().collect();
            let mut data = self.data.clone();
            mutate(&mut descs, &mut infos, &mut data);
            let mut b =
                PageTableBuilder::new(vec![0u8; RAM], 0x1000, KDATA_PA, Paging::Four).unwrap();
            b.map_range(KDATA, KDATA_PA, 1 << 20, 4096, true, true)
                .unwrap();
            // The data ring's pages in reverse physical order.
            let pages = data.len().div_ceil(4096) as u64;
            for p in (0..pages).filter(|p| !self.holes.contains(p)) {
                b.map(
                    DATA + p * 4096,
                    DATA_PA + (pages - 1 - p) * 4096,
                    4096,
                    true,
                    true,
                )
                .unwrap();
            }
            let ram = b.ram_mut();
            let mut put = |va: u64, bytes: &[u8]| {
                let pa = (va - KDATA + KDATA_PA) as usize;
                ram[pa..pa + bytes.len()].copy_from_slice(bytes);
            };
            put(KDATA, &RING.to_le_bytes());
            put(RING, &self.count_bits.to_le_bytes());
            put(RING + 8, &DESCS.to_le_bytes());
            put(RING + 16, &INFOS.to_le_bytes());
            put(RING + 24, &self.head_id.to_le_bytes());
            put(RING + 32, &self.tail_id.to_le_bytes());
            put(RING + 48, &self.size_bits.to_le_bytes());
            put(RING + 56, &DATA.to_le_bytes());
            put(RING + 64, &self.head_lpos.to_le_bytes());
            put(RING + 72, &self.tail_lpos.to_le_bytes());
            put(DESCS, &descs);
            put(INFOS, &infos);
            for p in 0..pages as usize {
                let pa = (DATA_PA as usize) + (pages as usize - 1 - p) * 4096;
                let chunk = &data[p * 4096..data.len().min((p + 1) * 4096)];
                ram[pa..pa + chunk.len()].copy_from_slice(chunk);
            }
            let root = b.root();
            Program::new(
                Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
                root,
                Paging::Four,
            )
        }

        fn read(&self) -> Log {
            read_log(
                &self.program(|_, _, _| {}),
                &vmcoreinfo(),
                WalkLimits::default(),
            )
            .unwrap()
        }
    }

    #[test]
    fn records_with_wraps_empty_text_multiple_lines_and_writers_in_flight() {
        let mut w = Writer::new(3, 9);
        w.push(b"first line", 6, 0, DESC_FINALIZED);
        w.push(b"", 6, 0, DESC_FINALIZED);
        w.push(&[b'x'; 100], 7, 0, DESC_FINALIZED);
        w.push(&[b'z'; 200], 6, 0, DESC_FINALIZED);
        w.push(b"multi\nline record", 4, 0, DESC_FINALIZED);
        let wrapped = w.push(&[b'y'; 140], 6, 0, DESC_FINALIZED);
        w.push(b"bad \xff byte", 3, 1, DESC_FINALIZED);
        assert_eq!(w.wrapped, vec![wrapped], "the test needs a wrapped block");
        w.push(
            b"being continued (committed, not finalized)",
            5,
            0,
            DESC_COMMITTED,
        );
        w.push(b"being written", 6, 0, DESC_RESERVED);
        let log = w.read();
        let (want, dropped) = w.expected();
        assert_eq!(log.records, want);
        assert_eq!(log.dropped, dropped);
        let texts: Vec<&str> = log.records.iter().map(|r| r.text.as_str()).collect();
        let y = "y".repeat(140);
        assert!(texts.contains(&y.as_str()), "{texts:?}");
        assert!(texts.contains(&"being continued (committed, not finalized)"));
        assert!(!texts.contains(&"being written"));
        // What the rings recycled is gone; the empty record is still there.
        assert!(!texts.contains(&"first line"));
        assert!(!texts.contains(&"x".repeat(100).as_str()));
        assert!(!texts.contains(&"z".repeat(200).as_str()));
        assert_eq!(log.records.len(), 5);
        let empty = log.records.iter().find(|r| r.text.is_empty()).unwrap();
        assert_eq!(empty.seq, 1);
        let multi = log.records.iter().find(|r| r.text.contains('\n')).unwrap();
        assert_eq!((multi.seq, multi.level, multi.facility), (4, 4, 0));
        assert_eq!(multi.timestamp_ns, 4_000_017);
        assert_eq!(multi.caller_id, 0x8000_0004);
        assert_eq!(multi.text, "multi\nline record");
        let bad = log.records.iter().find(|r| r.seq == 6).unwrap();
        assert_eq!(
            (bad.text.as_str(), bad.level, bad.facility),
            ("bad \u{fffd} byte", 3, 1)
        );
        // The bootstrap descriptor, recycled records and the reserved one.
        assert!(
            log.problems.iter().any(|p| p.contains("reserved")),
            "{:?}",
            log.problems
        );
        assert!(
            log.problems.iter().any(|p| p.contains("reusable")),
            "{:?}",
            log.problems
        );
    }

    #[test]
    fn a_full_descriptor_ring_and_multi_page_data() {
        let mut w = Writer::new(4, 13);
        for i in 0..100u64 {
            let text = format!("record {i} {}", "=".repeat((i * 37 % 300) as usize));
            w.push(text.as_bytes(), (i % 8) as u8, 0, DESC_FINALIZED);
        }
        let log = w.read();
        let (want, dropped) = w.expected();
        assert_eq!(log.records, want);
        assert_eq!(log.dropped, dropped);
        assert_eq!(log.records.len(), 16);
        assert_eq!(log.records.last().unwrap().seq, 99);
        assert!(log.problems.is_empty(), "{:?}", log.problems);
        // The node limit keeps the newest.
        let p = w.program(|_, _, _| {});
        let log = read_log(
            &p,
            &vmcoreinfo(),
            WalkLimits::new(5, Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(
            log.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![95, 96, 97, 98, 99]
        );
        assert!(log.problems[0].contains("limit of 5"), "{:?}", log.problems);
    }

    #[test]
    fn inconsistent_descriptors_are_skipped_and_counted() {
        let mut w = Writer::new(3, 10);
        for i in 0..6u64 {
            w.push(format!("record {i}").as_bytes(), 6, 0, DESC_FINALIZED);
        }
        let (want, _) = w.expected();
        assert_eq!(want.len(), 6);
        let slot = |id: u64| (id & 7) as usize;
        let (id2, id3, id4, id5) = (FIRST_ID + 2, FIRST_ID + 3, FIRST_ID + 4, FIRST_ID + 5);
        let p = w.program(|d, i, data| {
            // id 2: a descriptor holding another id.
            d[slot(id2) * 24..slot(id2) * 24 + 8]
                .copy_from_slice(&((2 << 62) | (id2 + 8)).to_le_bytes());
            // id 3: a block whose id is not the descriptor's.
            let begin = w.descs[slot(id3)][1] as usize & 1023;
            data[begin] ^= 0xff;
            // id 4: a sequence number of another slot.
            i[slot(id4) * 88] ^= 1;
            // id 5: a text_len longer than its block: truncated.
            i[slot(id5) * 88 + 16..slot(id5) * 88 + 18].copy_from_slice(&1000u16.to_le_bytes());
        });
        let log = read_log(&p, &vmcoreinfo(), WalkLimits::default()).unwrap();
        let seqs: Vec<u64> = log.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![0, 1, 5]);
        assert_eq!(
            log.dropped, 3,
            "the three bad ones (the bootstrap descriptor lost nothing)"
        );
        assert_eq!(
            log.records[2].text, "record 5",
            "up to the end of its block"
        );
        let problems = log.problems.join("\n");
        for want in ["overwritten", "data block", "sequence number", "truncated"] {
            assert!(problems.contains(want), "{want}: {problems}");
        }
    }

    #[test]
    fn header_errors_name_what_is_wrong() {
        let w = Writer::new(3, 8);
        let v = vmcoreinfo();
        let fail = |p: &Program, v: &Vmcoreinfo| {
            read_log(p, v, WalkLimits::default())
                .unwrap_err()
                .to_string()
        };
        // Missing and inconsistent VMCOREINFO.
        let p = w.program(|_, _, _| {});
        for (line, what) in [
            ("SYMBOL(prb)", "SYMBOL(prb)"),
            ("OFFSET(prb_desc.state_var)", "OFFSET(prb_desc.state_var)"),
            ("SIZE(printk_info)", "SIZE(printk_info)"),
        ] {
            let text: String = v
                .to_text()
                .lines()
                .filter(|l| !l.starts_with(line))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = fail(&p, &Vmcoreinfo::parse(&text).unwrap());
            assert!(e.contains(what), "{e}");
        }
        let text = v.to_text().replace(
            "OFFSET(printk_info.caller_id)=20",
            "OFFSET(printk_info.caller_id)=86",
        );
        let e = fail(&p, &Vmcoreinfo::parse(&text).unwrap());
        assert!(e.contains("caller_id at offset 86"), "{e}");
        // An unreadable prb pointer or ring.
        let text = v.to_text().replace(
            "SYMBOL(prb)=ffffffff82000000",
            "SYMBOL(prb)=ffffffff83000000",
        );
        let e = fail(&p, &Vmcoreinfo::parse(&text).unwrap());
        assert!(e.contains("prb pointer at 0xffffffff83000000"), "{e}");
        let p = w.program(|_, _, _| {});
        let ring_at = |p: Program, at: u64, value: u64| -> String {
            // Rebuild with one header word changed, through the prb pointer's target.
            let mut ram = vec![0u8; RAM];
            p.read_phys(0, &mut ram).unwrap();
            let pa = (at - KDATA + KDATA_PA) as usize;
            ram[pa..pa + 8].copy_from_slice(&value.to_le_bytes());
            let q = Program::new(
                Arc::new(RawImage::from_bytes(ram, 0)),
                p.translator().root(),
                Paging::Four,
            );
            fail(&q, &vmcoreinfo())
        };
        let e = ring_at(p, KDATA, 0);
        assert!(
            e.contains("cannot read prb_desc_ring.count_bits at 0x0"),
            "{e}"
        );
        let e = ring_at(w.program(|_, _, _| {}), RING, 25);
        assert!(e.contains("count_bits") && e.contains("25"), "{e}");
        let e = ring_at(w.program(|_, _, _| {}), RING + 48, 31);
        assert!(e.contains("size_bits") && e.contains("31"), "{e}");
        let e = ring_at(w.program(|_, _, _| {}), RING + 56, DATA + (1 << 20));
        assert!(e.contains("data ring at"), "{e}");
        let e = ring_at(w.program(|_, _, _| {}), RING + 8, DATA + (1 << 20));
        assert!(e.contains("descriptors at"), "{e}");
        // A head far ahead of the tail: at most a ring's worth is read.
        let mut w = Writer::new(3, 8);
        w.push(b"hello", 6, 0, DESC_FINALIZED);
        let p = w.program(|_, _, _| {});
        let mut ram = vec![0u8; RAM];
        p.read_phys(0, &mut ram).unwrap();
        let pa = (RING + 32 - KDATA + KDATA_PA) as usize;
        ram[pa..pa + 8].copy_from_slice(&5u64.to_le_bytes());
        let q = Program::new(
            Arc::new(RawImage::from_bytes(ram, 0)),
            p.translator().root(),
            Paging::Four,
        );
        let log = read_log(&q, &vmcoreinfo(), WalkLimits::default()).unwrap();
        assert_eq!(log.records.len(), 1);
        assert!(
            log.problems[0].contains("more than the ring's 8"),
            "{:?}",
            log.problems
        );
    }

    /// A page of the data ring that cannot be read costs the records whose text is on
    /// it, not the log.
    #[test]
    fn an_unreadable_page_costs_its_records_only() {
        let mut w = Writer::new(5, 13);
        for i in 0..20u64 {
            w.push(
                format!("record {i} {}", "-".repeat(300)).as_bytes(),
                6,
                0,
                DESC_FINALIZED,
            );
        }
        let whole = w.read();
        assert_eq!(whole.records.len(), 20);
        w.holes = vec![1];
        let log = w.read();
        // Blocks are laid out in lpos order: those overlapping [4096, 8192) are lost.
        let lost: Vec<u64> = whole
            .records
            .iter()
            .filter(|r| !log.records.contains(r))
            .map(|r| r.seq)
            .collect();
        assert!(!lost.is_empty() && lost.len() < 20, "{lost:?}");
        assert_eq!(log.records.len() + lost.len(), 20);
        assert_eq!(log.dropped, lost.len() as u64);
        assert!(
            log.problems.iter().any(|p| p.contains("cannot be read")),
            "{:?}",
            log.problems
        );
        // Both pages gone: nothing to read at all.
        w.holes = vec![0, 1];
        let e = read_log(
            &w.program(|_, _, _| {}),
            &vmcoreinfo(),
            WalkLimits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("data ring"), "{e}");
    }

    #[test]
    fn the_time_budget_bounds_the_walk() {
        let mut w = Writer::new(12, 16);
        for i in 0..3000u64 {
            w.push(format!("r{i}").as_bytes(), 6, 0, DESC_FINALIZED);
        }
        let p = w.program(|_, _, _| {});
        assert_eq!(
            read_log(&p, &vmcoreinfo(), WalkLimits::default())
                .unwrap()
                .records
                .len(),
            3000
        );
        let log = read_log(&p, &vmcoreinfo(), WalkLimits::new(1 << 20, Duration::ZERO)).unwrap();
        assert!(log.records.len() < 3000);
        assert!(
            log.problems.iter().any(|p| p.contains("time budget")),
            "{:?}",
            log.problems
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random writes: the reader gives back exactly the records the writer left.
        #[test]
        fn random_histories_read_back_exactly(
            count_bits in 1u32..6,
            size_bits in 7u32..11,
            pushes in proptest::collection::vec((0usize..100, 0u8..8, 0u64..10), 0..80),
        ) {
            let mut w = Writer::new(count_bits, size_bits);
            let max_text = (1usize << size_bits) / 2 - 16;
            for (len, level, st) in pushes {
                let state = match st { 0 => DESC_RESERVED, 1 => DESC_COMMITTED, _ => DESC_FINALIZED };
                let text: Vec<u8> = (0..len.min(max_text)).map(|i| b'a' + (i % 26) as u8).collect();
                w.push(&text, level, 0, state);
            }
            let log = w.read();
            let (want, dropped) = w.expected();
            prop_assert_eq!(log.records, want);
            prop_assert_eq!(log.dropped, dropped);
        }

        /// Garbage over the descriptors, records and data, and in the header: never a
        /// panic or a hang, and never more records than descriptors walked.
        #[test]
        fn garbage_never_panics(
            flips in proptest::collection::vec((0usize..3, 0usize..8192, any::<u8>()), 0..200),
            head in any::<u64>(),
            tail in any::<u64>(),
            bits in (0u32..30, 0u32..33),
        ) {
            let mut w = Writer::new(4, 10);
            for i in 0..30u64 {
                w.push(format!("record {i} {}", "-".repeat(i as usize * 3)).as_bytes(), 6, 0, DESC_FINALIZED);
            }
            if head % 3 == 0 {
                w.head_id = head;
                w.tail_id = tail;
            }
            if tail % 3 == 0 {
                w.count_bits = bits.0 % 25;
                w.size_bits = bits.1;
            }
            let p = w.program(|d, i, data| {
                for &(which, at, v) in &flips {
                    let buf = match which { 0 => &mut *d, 1 => &mut *i, _ => &mut *data };
                    let n = buf.len();
                    buf[at % n] = v;
                }
            });
            let limits = WalkLimits::new(1 << 16, Duration::from_secs(5));
            if let Ok(log) = read_log(&p, &vmcoreinfo(), limits) {
                prop_assert!(log.records.len() as u64 + log.dropped <= 1 << 16);
                let _ = crate::crash::crash(&log.records);
            }
        }
    }
}
