//! The guest's log ring as ordered records: not a verdict, but part of every report.
//!
//! A log ring is a ring root whose element type has `seq`, `timestamp_ns` and `text`
//! members (and optionally `cpu` and `len`), as the test kernel's is; record `seq` lives
//! in slot `seq % capacity`, and a slot whose stored sequence does not match is being
//! written (or was overwritten) and is skipped. Members are found once per ring and read
//! in each slot as [`Object`](ambulance_introspect::object::Object)s.
//!
//! A slot that cannot be read costs its record, not the log: the others are kept and
//! [`Log::unreadable`] counts what was lost. The read is bounded like a walk (the node
//! limit keeps the newest records; the time budget and the deadline cut it short).

use ambulance_abi::descriptor::RootKind;
use ambulance_introspect::walk::{self, WalkEnd};
use ambulance_report::LogRecord;

use crate::Context;

/// Longest text read from one record.
const MAX_TEXT: u64 = 4096;

/// Every log ring's records, and what could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// The records, oldest first (ring by ring).
    pub records: Vec<LogRecord>,
    /// Records lost because their slot (or its text) could not be read.
    pub unreadable: u64,
    /// Where the first unreadable slot is, if any.
    pub first_unreadable: Option<u64>,
    /// What cut the read short, if anything: one line per ring.
    pub problems: Vec<String>,
}

/// Every log ring's records, oldest first.
pub fn extract(ctx: &Context<'_>) -> Vec<LogRecord> {
    read(ctx).records
}

/// Every log ring's records, oldest first, with what was lost (see the module
/// documentation).
pub fn read(ctx: &Context<'_>) -> Log {
    let mut log = Log::default();
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
        let ring = match walk::read_ring_within(
            ctx.program,
            root.address,
            root.element_size as u64,
            root.max_count as u64,
            root.aux,
            m_seq.offset(),
            ctx.walk_limits(),
        ) {
            Ok(r) => r,
            Err(e) => {
                log.problems.push(format!(
                    "log ring {}: its next-sequence counter at {:#x} cannot be read: {e}",
                    root.name, root.aux
                ));
                continue;
            }
        };
        let lose = |log: &mut Log, slot: u64| {
            log.unreadable += 1;
            log.first_unreadable.get_or_insert(slot);
        };
        for &(_, slot) in &ring.unreadable {
            lose(&mut log, slot);
        }
        match ring.end {
            WalkEnd::LimitHit { limit } => log.problems.push(format!(
                "log ring {}: only the newest {limit} slots were read",
                root.name
            )),
            WalkEnd::TimedOut { after } => log.problems.push(format!(
                "log ring {}: read for {after:?}, then stopped ({}); older records are missing",
                root.name,
                ctx.stop_reason()
                    .unwrap_or_else(|| "the walk budget ran out".into())
            )),
            _ => {}
        }
        for (seq, slot) in ring.records {
            let Ok(timestamp_ns) = m_timestamp.object(ctx.program, slot).read_u64() else {
                lose(&mut log, slot);
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
                lose(&mut log, slot);
                continue;
            };
            log.records.push(LogRecord {
                seq,
                timestamp_ns,
                cpu,
                text,
            });
        }
    }
    log
}
