//! The guest's log ring as ordered records: not a verdict, but part of every report.
//!
//! A log ring is a ring root whose element type has `seq`, `timestamp_ns` and `text`
//! members (and optionally `cpu` and `len`), as the test kernel's is; record `seq` lives
//! in slot `seq % capacity`, and a slot whose stored sequence does not match is being
//! written (or was overwritten) and is skipped. Members are found once per ring and read
//! in each slot as [`Object`](ambulance_introspect::object::Object)s.

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
        let (Some(m_seq), Some(m_timestamp), Some(m_text)) = (
            ctx.member(t, "seq"),
            ctx.member(t, "timestamp_ns"),
            ctx.member(t, "text"),
        ) else {
            continue;
        };
        let m_cpu = ctx.member(t, "cpu");
        let m_len = ctx.member(t, "len");
        let text_cap = (root.element_size as u64)
            .saturating_sub(m_text.offset())
            .min(MAX_TEXT);
        let Ok(slots) = walk::read_ring(
            ctx.program,
            root.address,
            root.element_size as u64,
            root.max_count as u64,
            root.aux,
            m_seq.offset(),
        ) else {
            continue;
        };
        for (seq, slot) in slots {
            let Ok(timestamp_ns) = m_timestamp.object(ctx.program, slot).read_u64() else {
                continue;
            };
            let cpu = m_cpu
                .as_ref()
                .and_then(|m| m.object(ctx.program, slot).read_u32().ok())
                .unwrap_or(0);
            let len = m_len
                .as_ref()
                .and_then(|m| m.object(ctx.program, slot).read_u32().ok())
                .map_or(text_cap, |l| (l as u64).min(text_cap));
            let Ok(text) = m_text.object(ctx.program, slot).read_cstr(len as usize) else {
                continue;
            };
            out.push(LogRecord {
                seq,
                timestamp_ns,
                cpu,
                text,
            });
        }
    }
    out
}
