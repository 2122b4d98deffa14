//! The guest's log ring as ordered records: not a verdict, but part of every report.
//!
//! A log ring is a ring root whose element type has `seq`, `timestamp_ns` and `text`
//! members (and optionally `cpu` and `len`), as the test kernel's is; record `seq` lives
//! in slot `seq % capacity`, and a slot whose stored sequence does not match is being
//! written (or was overwritten) and is skipped.

use ambulance_abi::descriptor::RootKind;
use ambulance_introspect::walk;
use ambulance_report::LogRecord;

use crate::Context;

/// Longest text read from one record.
const MAX_TEXT: u64 = 4096;

/// Every log ring's records, oldest first.
pub fn extract(ctx: &Context<'_>) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for root in ctx.roots().iter().filter(|r| r.kind == RootKind::Ring) {
        let t = &root.type_name;
        let (Some(seq_off), Some(ts_off), Some(text_off)) = (
            ctx.member_offset(t, "seq"),
            ctx.member_offset(t, "timestamp_ns"),
            ctx.member_offset(t, "text"),
        ) else {
            continue;
        };
        let cpu_off = ctx.member_offset(t, "cpu");
        let len_off = ctx.member_offset(t, "len");
        let text_cap = (root.element_size as u64)
            .saturating_sub(text_off)
            .min(MAX_TEXT);
        let Ok(slots) = walk::read_ring(
            ctx.program,
            root.address,
            root.element_size as u64,
            root.max_count as u64,
            root.aux,
            seq_off,
        ) else {
            continue;
        };
        for (seq, slot) in slots {
            let Ok(timestamp_ns) = ctx.program.read_u64(slot + ts_off) else {
                continue;
            };
            let cpu = cpu_off
                .and_then(|o| ctx.program.read_u32(slot + o).ok())
                .unwrap_or(0);
            let len = len_off
                .and_then(|o| ctx.program.read_u32(slot + o).ok())
                .map_or(text_cap, |l| (l as u64).min(text_cap));
            let mut text = vec![0u8; len as usize];
            if ctx.program.read_virt(slot + text_off, &mut text).is_err() {
                continue;
            }
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            out.push(LogRecord {
                seq,
                timestamp_ns,
                cpu,
                text: String::from_utf8_lossy(&text[..end]).into_owned(),
            });
        }
    }
    out
}
