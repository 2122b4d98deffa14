//! Checksummed read-only ranges: the CRC32C of each range still matches the value the
//! guest recorded at registration; when the kernel image is at hand, the changed bytes
//! are located exactly by comparing memory with the image.
//!
//! A range's `start` is where the guest saw it, at run time: under KASLR, the image's
//! link-time address plus the registration's `load_offset`. Memory at `start + i` is
//! compared with what the image loads at `start + i - load_offset`.
//!
//! Ranges are read in chunks of [`CHUNK`] bytes, never whole (a guest may declare 1,024
//! ranges of 64 MiB), and the validation budget and the deadline are looked at between
//! chunks; so is [`MAX_BYTES`], a bound on what one run reads whatever the clock says. A
//! range cut short by either says so in a finding of kind diagnosis, naming the bytes not
//! checked; the ranges after it are skipped the same way.

use ambulance_abi::crc32c::Crc32c;
use ambulance_abi::descriptor::{Hint, Root};
use ambulance_report::{Finding, Hex, Severity};
use goblin::elf::{program_header::PT_LOAD, Elf};

use super::hex;
use crate::context::RootFindings;
use crate::{Context, Validator};

/// See the module documentation.
pub struct Checksums;

const NAME: &str = "checksum";
/// Most differing runs reported per range.
const MAX_RUNS: usize = 16;
/// Longest differing run reported, in bytes.
const MAX_RUN_LEN: usize = 16;
/// Bytes read at a time.
pub const CHUNK: usize = 256 << 10;
/// Most bytes one run of the validator reads (both passes, all ranges).
pub const MAX_BYTES: u64 = 4 << 30;

/// A `PT_LOAD` segment of the kernel image, at its link-time address.
struct Load {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

/// What one run may still spend, and why it stopped.
struct Spend {
    bytes: u64,
}

impl Spend {
    /// Why to stop before reading `n` more bytes, if so.
    fn stop(&mut self, ctx: &Context<'_>, n: u64) -> Option<String> {
        if let Some(why) = ctx.stop_reason() {
            return Some(why);
        }
        if self.bytes.saturating_add(n) > MAX_BYTES {
            return Some(format!("it read its limit of {MAX_BYTES} bytes"));
        }
        self.bytes += n;
        None
    }
}

impl Validator for Checksums {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "roots with checksummed ranges"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots()
            .iter()
            .any(|r| r.hints.iter().any(|h| matches!(h, Hint::Checksum { .. })))
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let load_offset = ctx.descriptor.map_or(0, |d| d.load_offset);
        let image = ctx
            .kernel_elf
            .and_then(|bytes| Some((bytes, loads(bytes)?)));
        let mut spend = Spend { bytes: 0 };
        let mut stopped: Option<String> = None;
        for root in ctx.roots() {
            let mut found = RootFindings::new(out);
            for h in &root.hints {
                let Hint::Checksum { start, len, crc32c } = *h else {
                    continue;
                };
                if let Some(why) = &stopped {
                    found.push(skipped(ctx, root, start, len, why));
                    continue;
                }
                let crc = match crc_of(ctx, start, len, &mut spend) {
                    Read::Done(crc) => crc,
                    Read::Unreadable { at, error } => {
                        found.push(ctx.finding(
                            NAME,
                            Severity::Error,
                            &root.name,
                            None,
                            None,
                            Some(at),
                            format!("{len} readable bytes"),
                            "unreadable".into(),
                            format!(
                                "checksummed range {} (+{len}) cannot be read at {}: {error}",
                                hex(start),
                                hex(at)
                            ),
                        ));
                        continue;
                    }
                    Read::Stopped { at, why } => {
                        found.push(partial(ctx, root, start, len, at, &why));
                        stopped = Some(why);
                        continue;
                    }
                };
                if crc == crc32c {
                    continue;
                }
                found.push(ctx.finding(
                    NAME,
                    Severity::Critical,
                    &root.name,
                    None,
                    None,
                    Some(start),
                    format!("CRC32C {crc32c:#010x}"),
                    format!("CRC32C {crc:#010x}"),
                    format!(
                        "read-only memory {} (+{len} bytes) changed since the guest registered it",
                        hex(start)
                    ),
                ));
                let Some((bytes, loads)) = &image else {
                    continue;
                };
                let (runs, cut) =
                    differences(ctx, bytes, loads, load_offset, start, len, &mut spend);
                for (at, expected, was) in runs {
                    found.push(ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        None,
                        None,
                        Some(at),
                        expected,
                        was,
                        format!(
                            "read-only memory at {} differs from the kernel image: code or \
                             constant data was overwritten",
                            hex(at)
                        ),
                    ));
                }
                if let Some((at, why)) = cut {
                    found.push(ctx.budget_note_because(
                        NAME,
                        &root.name,
                        &format!(
                            "the comparison of {}..{} with the kernel image",
                            hex(at),
                            hex(start.wrapping_add(len as u64))
                        ),
                        &why,
                    ));
                    stopped = Some(why);
                }
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}

/// A range not checked at all because the budget was spent before it.
fn skipped(ctx: &Context<'_>, root: &Root, start: u64, len: u32, why: &str) -> Finding {
    let mut f = ctx.budget_note_because(
        NAME,
        &root.name,
        &format!("checksummed range {} (+{len} bytes)", hex(start)),
        why,
    );
    f.address.virt = Some(Hex(start));
    f
}

/// A range whose checksum was cut short at `at`.
fn partial(ctx: &Context<'_>, root: &Root, start: u64, len: u32, at: u64, why: &str) -> Finding {
    let mut f = ctx.budget_note_because(
        NAME,
        &root.name,
        &format!(
            "bytes {}..{} of checksummed range {} (+{len} bytes), and so whether the range \
             changed,",
            hex(at),
            hex(start.wrapping_add(len as u64)),
            hex(start)
        ),
        why,
    );
    f.address.virt = Some(Hex(start));
    f
}

enum Read {
    Done(u32),
    Unreadable { at: u64, error: String },
    Stopped { at: u64, why: String },
}

/// The CRC32C of `[start, start + len)`, read in chunks under the budget.
fn crc_of(ctx: &Context<'_>, start: u64, len: u32, spend: &mut Spend) -> Read {
    let mut crc = Crc32c::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len as u64 {
        let at = start.wrapping_add(done);
        let n = (len as u64 - done).min(CHUNK as u64) as usize;
        if let Some(why) = spend.stop(ctx, n as u64) {
            return Read::Stopped { at, why };
        }
        if let Err(e) = ctx.program.read_virt(at, &mut buf[..n]) {
            return Read::Unreadable {
                at: first_unreadable(ctx, at, n).unwrap_or(at),
                error: e.to_string(),
            };
        }
        crc.update(&buf[..n]);
        done += n as u64;
    }
    Read::Done(crc.finish())
}

/// The first address of `[at, at + n)` that cannot be read.
fn first_unreadable(ctx: &Context<'_>, at: u64, n: usize) -> Option<u64> {
    let mut va = at;
    let end = at.checked_add(n as u64)?;
    while va < end {
        if ctx.program.read_u8(va).is_err() {
            return Some(va);
        }
        va = (va | 0xfff).checked_add(1)?;
    }
    None
}

/// The image's `PT_LOAD` segments, when it parses.
fn loads(image: &[u8]) -> Option<Vec<Load>> {
    let elf = Elf::parse(image).ok()?;
    Some(
        elf.program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| Load {
                vaddr: p.p_vaddr,
                memsz: p.p_memsz,
                offset: p.p_offset,
                filesz: p.p_filesz,
            })
            .collect(),
    )
}

/// What the image holds at link-time address `va`: its byte, 0 in a segment's zero tail,
/// `None` outside every segment (or past the end of the file).
fn image_byte(image: &[u8], loads: &[Load], va: u64) -> Option<u8> {
    let l = loads
        .iter()
        .find(|l| va >= l.vaddr && va - l.vaddr < l.memsz)?;
    let k = va - l.vaddr;
    if k < l.filesz {
        let at = usize::try_from(l.offset.checked_add(k)?).ok()?;
        image.get(at).copied()
    } else {
        Some(0)
    }
}

type Run = (u64, String, String);

/// Runs of bytes in memory at run-time `[start, start + len)` that differ from what the
/// image loads at the link-time address (`load_offset` below): `(address, expected hex
/// bytes, found hex bytes)`, at most [`MAX_RUNS`]; and where and why the comparison
/// stopped early, if it did.
fn differences(
    ctx: &Context<'_>,
    image: &[u8],
    loads: &[Load],
    load_offset: i64,
    start: u64,
    len: u32,
    spend: &mut Spend,
) -> (Vec<Run>, Option<(u64, String)>) {
    let hexs = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut runs: Vec<Run> = Vec::new();
    // The run being collected: its address, expected and found bytes.
    let mut open: Option<(u64, Vec<u8>, Vec<u8>)> = None;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    let close = |open: &mut Option<(u64, Vec<u8>, Vec<u8>)>, runs: &mut Vec<Run>| {
        if let Some((at, e, f)) = open.take() {
            runs.push((at, hexs(&e), hexs(&f)));
        }
    };
    while done < len as u64 && runs.len() < MAX_RUNS {
        let at = start.wrapping_add(done);
        let n = (len as u64 - done).min(CHUNK as u64) as usize;
        if let Some(why) = spend.stop(ctx, n as u64) {
            close(&mut open, &mut runs);
            return (runs, Some((at, why)));
        }
        if ctx.program.read_virt(at, &mut buf[..n]).is_err() {
            // It was readable for the checksum; it is not now only if the memory changed.
            break;
        }
        for (i, &was) in buf[..n].iter().enumerate() {
            let va = at.wrapping_add(i as u64);
            let expected = image_byte(image, loads, va.wrapping_sub(load_offset as u64));
            match expected {
                Some(e) if e != was => match &mut open {
                    Some((_, es, fs)) if es.len() < MAX_RUN_LEN => {
                        es.push(e);
                        fs.push(was);
                    }
                    _ => {
                        close(&mut open, &mut runs);
                        if runs.len() == MAX_RUNS {
                            break;
                        }
                        open = Some((va, vec![e], vec![was]));
                    }
                },
                _ => close(&mut open, &mut runs),
            }
        }
        done += n as u64;
    }
    close(&mut open, &mut runs);
    runs.truncate(MAX_RUNS);
    (runs, None)
}
