//! The log ring: an unreadable slot costs its record, not the log.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_validate::log;

use crate::support::*;

/// A ring of `slots` records at `at` (the caller maps it), holding records `first..next`.
fn ring(g: &mut Guest, at: u64, slots: u64, first: u64, next: u64) {
    let counter = g.alloc(8);
    g.put_u64(counter, next);
    for seq in first..next {
        let s = at + (seq % slots) * log_record::SIZE;
        let text = format!("record {seq}");
        g.put_u64(s + log_record::SEQ, seq);
        g.put_u64(s + log_record::TIMESTAMP_NS, seq * 1000);
        g.put_u32(s + log_record::CPU, (seq % 2) as u32);
        g.put_u32(s + log_record::LEN, text.len() as u32);
        g.put(s + log_record::TEXT, text.as_bytes());
    }
    g.root(Root {
        name: "log".into(),
        type_name: "LogRecord".into(),
        kind: RootKind::Ring,
        flags: 0,
        address: at,
        element_size: log_record::SIZE as u32,
        link_offset: 0,
        max_count: slots as u32,
        aux: counter,
        lock: 0,
        hints: vec![],
    });
}

#[test]
fn records_come_out_oldest_first() {
    let mut g = Guest::new();
    let at = g.alloc(8 * log_record::SIZE);
    ring(&mut g, at, 8, 0, 13);
    let b = g.build();
    let read = log::read(&b.context(limits()));
    let seqs: Vec<u64> = read.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (5..13).collect::<Vec<_>>());
    assert_eq!(read.records[0].text, "record 5");
    assert_eq!(read.unreadable, 0);
}

#[test]
fn an_unreadable_slot_costs_its_record_only() {
    // 64 slots over two pages, the second never mapped: 32 records lost, 32 kept.
    let mut g = Guest::new();
    let at = 0xffff_c900_2000_0000;
    g.mem.map(at, 0x1000);
    let counter = g.alloc(8);
    g.put_u64(counter, 64);
    for seq in 0..32u64 {
        let s = at + seq * log_record::SIZE;
        g.put_u64(s + log_record::SEQ, seq);
        g.put_u32(s + log_record::LEN, 1);
        g.put(s + log_record::TEXT, b"x");
    }
    g.root(Root {
        name: "log".into(),
        type_name: "LogRecord".into(),
        kind: RootKind::Ring,
        flags: 0,
        address: at,
        element_size: log_record::SIZE as u32,
        link_offset: 0,
        max_count: 64,
        aux: counter,
        lock: 0,
        hints: vec![],
    });
    let b = g.build();
    let read = log::read(&b.context(limits()));
    assert_eq!(read.records.len(), 32);
    assert_eq!(read.unreadable, 32);
    assert_eq!(read.first_unreadable, Some(at + 0x1000));
    assert_eq!(log::extract(&b.context(limits())).len(), 32);
}
