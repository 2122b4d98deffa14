//! Checksummed read-only ranges: the CRC32C of each range still matches the value the
//! guest recorded at registration; when the kernel image is at hand, the changed bytes
//! are located exactly by comparing memory with the image.

use ambulance_abi::crc32c::Crc32c;
use ambulance_abi::descriptor::Hint;
use ambulance_report::{Finding, Severity};
use goblin::elf::{program_header::PT_LOAD, Elf};

use super::hex;
use crate::{Context, Validator};

/// See the module documentation.
pub struct Checksums;

const NAME: &str = "checksum";
/// Most differing runs reported per range.
const MAX_RUNS: usize = 16;

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
        for root in ctx.roots() {
            for h in &root.hints {
                let Hint::Checksum { start, len, crc32c } = *h else {
                    continue;
                };
                let mut bytes = vec![0u8; len as usize];
                if let Err(e) = ctx.program.read_virt(start, &mut bytes) {
                    out.push(ctx.finding(
                        NAME,
                        Severity::Error,
                        &root.name,
                        None,
                        None,
                        Some(start),
                        format!("{len} readable bytes"),
                        "unreadable".into(),
                        format!(
                            "checksummed range {} (+{len}) cannot be read: {e}",
                            hex(start)
                        ),
                    ));
                    continue;
                }
                let mut c = Crc32c::new();
                c.update(&bytes);
                let found = c.finish();
                if found == crc32c {
                    continue;
                }
                out.push(ctx.finding(
                    NAME,
                    Severity::Critical,
                    &root.name,
                    None,
                    None,
                    Some(start),
                    format!("CRC32C {crc32c:#010x}"),
                    format!("CRC32C {found:#010x}"),
                    format!(
                        "read-only memory {} (+{len} bytes) changed since the guest registered it",
                        hex(start)
                    ),
                ));
                if let Some(image) = ctx.kernel_elf {
                    for (at, expected, found) in differences(image, start, &bytes) {
                        out.push(ctx.finding(
                            NAME,
                            Severity::Critical,
                            &root.name,
                            None,
                            None,
                            Some(at),
                            expected,
                            found,
                            format!(
                                "read-only memory at {} differs from the kernel image: code or \
                                 constant data was overwritten",
                                hex(at)
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// Runs of bytes in `memory` (at virtual `start`) that differ from what the ELF image
/// loads there: `(address, expected hex bytes, found hex bytes)`.
fn differences(image: &[u8], start: u64, memory: &[u8]) -> Vec<(u64, String, String)> {
    let Ok(elf) = Elf::parse(image) else {
        return Vec::new();
    };
    let end = start + memory.len() as u64;
    let mut expected = vec![None::<u8>; memory.len()];
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let lo = ph.p_vaddr.max(start);
        let hi = ph.p_vaddr.saturating_add(ph.p_memsz).min(end);
        for va in lo..hi {
            let k = va - ph.p_vaddr;
            let b = if k < ph.p_filesz {
                image.get((ph.p_offset + k) as usize).copied()
            } else {
                Some(0)
            };
            expected[(va - start) as usize] = b;
        }
    }
    let mut runs = Vec::new();
    let mut i = 0;
    while i < memory.len() && runs.len() < MAX_RUNS {
        match expected[i] {
            Some(e) if e != memory[i] => {
                let s = i;
                while i < memory.len() && i - s < 16 && expected[i].is_some_and(|e| e != memory[i])
                {
                    i += 1;
                }
                let hexs = |b: &mut dyn Iterator<Item = u8>| {
                    b.map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
                };
                runs.push((
                    start + s as u64,
                    hexs(&mut expected[s..i].iter().map(|e| e.unwrap_or(0))),
                    hexs(&mut memory[s..i].iter().copied()),
                ));
            }
            _ => i += 1,
        }
    }
    runs
}
