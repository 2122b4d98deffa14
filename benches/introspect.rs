//! Introspection figures: address translation (translations/s, through the cache and
//! walking the tables every time) and list walking (nodes/s) over guest memory.
//!
//! Two guests:
//!
//! * A synthetic one built in a RAM buffer with the test kernel's layout: 256 MiB of RAM,
//!   real x86-64 page tables (direct map in 2 MiB pages, a vmalloc area in 4 KiB pages),
//!   and intrusive doubly linked lists of 1 Mi `Task`-sized nodes (128 bytes each): in
//!   random order (every node a cache miss: the walk runs at the machine's memory
//!   latency) and in address order (as a slab fills), each reached through the direct map
//!   and through the vmalloc area.
//!   The same nodes also carry 16 shorter lists (64 Ki nodes each, random order) for
//!   walking many lists at once: [`walk_lists`] interleaved against one list after the
//!   other, against the bare pointer chase, and against the machine's parallel memory
//!   limit (bare chases of 1 to 16 lists interleaved: the most nodes per second the
//!   memory system serves to one core).
//! * With /dev/kvm: the test kernel itself, booted with 64 tasks, frozen and mapped
//!   read-only; its run queue and task table are walked and translated.
//!
//! Run with `cargo bench --bench introspect`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_abi::boot::{DIRECT_MAP_BASE, VMALLOC_BASE};
use ambulance_introspect::memory::{LiveMemory, RawImage};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::{PageTableBuilder, Paging};
use ambulance_introspect::walk::{walk_list, walk_lists, WalkEnd, WalkLimits};
use ambulance_vmm::{GuestConfig, Vmm};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

const RAM: u64 = 256 << 20;
const MIB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// Page tables live here (physical).
const TABLES: u64 = 1 << 20;
const TABLES_END: u64 = 4 << 20;
/// List heads (physical).
const HEADS: u64 = 4 << 20;
/// Nodes (physical): 1 Mi × 128 bytes = 128 MiB.
const NODES: u64 = 16 << 20;
const NODE_COUNT: u64 = 1 << 20;
const NODE_SIZE: u64 = 128;
const LINK: u64 = 32;
/// The many-lists case: this many lists, each of `NODE_COUNT / MANY` random nodes,
/// linked through the field at `MANY_LINK`.
const MANY: u64 = 16;
const MANY_LINK: u64 = LINK + 64;

struct Synthetic {
    prog: Program,
    /// List heads: random order through the direct map (2 MiB pages) and through the
    /// vmalloc area (4 KiB pages), then address order through each.
    heads: [u64; 4],
    /// The heads of the `MANY` lists.
    many: Vec<u64>,
    /// Sample addresses for translation.
    small_pages: Vec<u64>,
    large_pages: Vec<u64>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn synthetic() -> Synthetic {
    let mut b = PageTableBuilder::new(vec![0u8; RAM as usize], TABLES, TABLES_END, Paging::Four)
        .expect("tables");
    b.map_range(DIRECT_MAP_BASE, 0, RAM, MIB2, true, true)
        .expect("direct map");
    // The node area again, page by page, in the vmalloc area.
    b.map_range(
        VMALLOC_BASE,
        NODES,
        NODE_COUNT * NODE_SIZE,
        PAGE,
        true,
        true,
    )
    .expect("vmalloc map");

    // A random order of the nodes.
    let mut order: Vec<u64> = (0..NODE_COUNT).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        let j = (xorshift(&mut seed) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let ram = b.ram_mut();
    let mut put = |pa: u64, v: u64| {
        ram[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    // Four lists threaded through the same nodes, each with its own link field: in random
    // order and in address order (as a slab fills), reached through the direct map and
    // through the vmalloc alias.
    let in_order: Vec<u64> = (0..NODE_COUNT).collect();
    for (k, (base, order, link)) in [
        (DIRECT_MAP_BASE + NODES, &order, LINK),
        (VMALLOC_BASE, &order, LINK + 16),
        (DIRECT_MAP_BASE + NODES, &in_order, LINK + 32),
        (VMALLOC_BASE, &in_order, LINK + 48),
    ]
    .into_iter()
    .enumerate()
    {
        let head_pa = HEADS + k as u64 * 64;
        let head_va = DIRECT_MAP_BASE + head_pa;
        let mut prev_pa = head_pa;
        let mut prev_va = head_va;
        for &i in order.iter() {
            let va = base + i * NODE_SIZE + link;
            let pa = NODES + i * NODE_SIZE + link;
            put(prev_pa, va);
            put(pa + 8, prev_va);
            prev_pa = pa;
            prev_va = va;
        }
        put(prev_pa, head_va);
        put(head_pa + 8, prev_va);
    }
    // The random order cut into MANY lists, through the direct map.
    let mut many = Vec::new();
    for (k, part) in order.chunks((NODE_COUNT / MANY) as usize).enumerate() {
        let head_pa = HEADS + (8 + k as u64) * 64;
        let head_va = DIRECT_MAP_BASE + head_pa;
        let (mut prev_pa, mut prev_va) = (head_pa, head_va);
        for &i in part {
            let pa = NODES + i * NODE_SIZE + MANY_LINK;
            put(prev_pa, DIRECT_MAP_BASE + pa);
            put(pa + 8, prev_va);
            (prev_pa, prev_va) = (pa, DIRECT_MAP_BASE + pa);
        }
        put(prev_pa, head_va);
        put(head_pa + 8, prev_va);
        many.push(head_va);
    }
    let root = b.root();
    let mut seed = 12345u64;
    let small_pages = (0..4096)
        .map(|_| VMALLOC_BASE + (xorshift(&mut seed) % (NODE_COUNT * NODE_SIZE)))
        .collect();
    let large_pages = (0..4096)
        .map(|_| DIRECT_MAP_BASE + (xorshift(&mut seed) % RAM))
        .collect();
    let prog = Program::new(
        Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
        root,
        Paging::Four,
    );
    Synthetic {
        prog,
        heads: [0, 1, 2, 3].map(|k| DIRECT_MAP_BASE + HEADS + k * 64),
        many,
        small_pages,
        large_pages,
    }
}

fn translations(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    prog: &Program,
    vas: &[u64],
    cached: bool,
) {
    g.throughput(Throughput::Elements(vas.len() as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mem = &**prog.memory();
            let mut acc = 0u64;
            for &va in vas {
                let t = if cached {
                    prog.translator().translate(mem, va)
                } else {
                    prog.translator().translate_uncached(mem, va)
                };
                acc = acc.wrapping_add(t.expect("mapped").pa);
            }
            std::hint::black_box(acc)
        })
    });
}

fn list_walk(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    prog: &Program,
    head: u64,
) {
    let limits = WalkLimits::new(1 << 24, Duration::from_secs(60));
    let probe = walk_list(prog, head, false, limits);
    assert_eq!(probe.end, WalkEnd::Complete, "{name}");
    g.throughput(Throughput::Elements(probe.links.len() as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let w = walk_list(prog, head, false, limits);
            std::hint::black_box(w.links.len())
        })
    });
}

/// The word at a direct-map address, read straight from the synthetic guest's RAM buffer
/// (no translation, no checks): what the bare chases follow.
fn direct_word(prog: &Program) -> impl Fn(u64) -> u64 + '_ {
    let ram = prog
        .memory()
        .slice(0, RAM as usize)
        .expect("one contiguous buffer");
    move |va| {
        let at = (va - DIRECT_MAP_BASE) as usize;
        u64::from_le_bytes(ram[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// The machine's bound: the same list chased directly in the RAM buffer (direct-map
/// address minus the base, no translation, no checks).
fn baseline_chase(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    prog: &Program,
    head: u64,
) {
    let word = direct_word(prog);
    let mut n = 0;
    let mut cur = word(head);
    while cur != head {
        cur = word(cur);
        n += 1;
    }
    g.throughput(Throughput::Elements(n));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut cur = word(head);
            let mut n = 0u64;
            while cur != head {
                cur = word(cur);
                n += 1;
            }
            std::hint::black_box(n)
        })
    });
}

/// Median nodes per second of `runs` runs of `walk` (which returns the nodes it visited).
fn nodes_per_sec(runs: usize, mut walk: impl FnMut() -> u64) -> f64 {
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let n = walk();
            n as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Walking many lists at once (issue 12, item 5): the walker one list after the other
/// and interleaved, the bare chase likewise, and the machine's parallel memory limit.
fn many_lists(s: &Synthetic) {
    const RUNS: usize = 7;
    let word = direct_word(&s.prog);
    // Bare chases of `heads`, interleaved (one node of each in turn).
    let chase = |heads: &[u64]| -> u64 {
        let mut cur: Vec<u64> = heads.iter().map(|&h| word(h)).collect();
        let mut n = 0u64;
        let mut live = heads.len();
        while live > 0 {
            live = 0;
            for (c, &h) in cur.iter_mut().zip(heads) {
                if *c != h {
                    *c = word(*c);
                    n += 1;
                    live += 1;
                }
            }
        }
        n
    };
    let mut limit = (0usize, 0f64);
    for width in [1usize, 2, 4, 8, 16] {
        let rate = nodes_per_sec(RUNS, || {
            s.many
                .chunks(width)
                .map(|group| std::hint::black_box(chase(group)))
                .sum()
        });
        println!(
            "result: many lists | bare chase, {width} list(s) interleaved | {:.2} M nodes/s | – | {MANY} lists of {} random nodes, no translation or checks",
            rate / 1e6,
            NODE_COUNT / MANY
        );
        if rate > limit.1 {
            limit = (width, rate);
        }
    }
    println!(
        "result: many lists | the machine's parallel memory limit (one core) | {:.2} M nodes/s | – | the best of the bare chases above, at {} lists interleaved",
        limit.1 / 1e6,
        limit.0
    );
    let lone_chase = nodes_per_sec(RUNS, || s.many.iter().map(|&h| chase(&[h])).sum());
    let limits = WalkLimits::new(1 << 24, Duration::from_secs(60));
    let heads: Vec<(u64, bool)> = s.many.iter().map(|&h| (h, false)).collect();
    for w in walk_lists(&s.prog, &heads, limits) {
        assert_eq!(w.end, WalkEnd::Complete, "a many-lists list");
    }
    let one_by_one = nodes_per_sec(RUNS, || {
        s.many
            .iter()
            .map(|&h| walk_list(&s.prog, h, false, limits).links.len() as u64)
            .sum()
    });
    let together = nodes_per_sec(RUNS, || {
        walk_lists(&s.prog, &heads, limits)
            .iter()
            .map(|w| w.links.len() as u64)
            .sum()
    });
    println!(
        "result: many lists | walker, {MANY} lists one after the other (`walk_list`) | {:.2} M nodes/s | – | {:.0} % of the bare chase of one list at a time ({:.2} M nodes/s)",
        one_by_one / 1e6,
        one_by_one / lone_chase * 100.0,
        lone_chase / 1e6
    );
    println!(
        "result: many lists | walker, {MANY} lists interleaved (`walk_lists`) | {:.2} M nodes/s | – | {:.2}x one after the other; {:.0} % of the machine's parallel memory limit",
        together / 1e6,
        together / one_by_one,
        together / limit.1 * 100.0
    );
}

fn synthetic_benches(c: &mut Criterion) {
    let s = synthetic();
    many_lists(&s);
    let mut g = c.benchmark_group("synthetic");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    // A working set that fits the translation cache: 64 pages, over and over.
    let hot: Vec<u64> = s.small_pages[..64]
        .iter()
        .cycle()
        .take(4096)
        .copied()
        .collect();
    translations(&mut g, "translate_cached_hot_4k", &s.prog, &hot, true);
    translations(
        &mut g,
        "translate_cached_random_2m",
        &s.prog,
        &s.large_pages,
        true,
    );
    translations(
        &mut g,
        "translate_cached_random_4k",
        &s.prog,
        &s.small_pages,
        true,
    );
    translations(
        &mut g,
        "translate_uncached_4k",
        &s.prog,
        &s.small_pages,
        false,
    );
    translations(
        &mut g,
        "translate_uncached_2m",
        &s.prog,
        &s.large_pages,
        false,
    );
    let lists = [
        ("list_walk_1m_random_order_2m_pages", s.heads[0]),
        ("list_walk_1m_random_order_4k_pages", s.heads[1]),
        ("list_walk_1m_address_order_2m_pages", s.heads[2]),
        ("list_walk_1m_address_order_4k_pages", s.heads[3]),
    ];
    for (name, head) in lists {
        list_walk(&mut g, name, &s.prog, head);
    }
    let baselines = [
        ("baseline_raw_chase_1m_random_order", s.heads[0]),
        ("baseline_raw_chase_1m_address_order", s.heads[2]),
    ];
    for (name, head) in baselines {
        baseline_chase(&mut g, name, &s.prog, head);
    }
    g.finish();
}

fn kvm_benches(c: &mut Criterion) {
    let vmm = Vmm::new().expect("KVM");
    let mut cfg = GuestConfig::new("bench-introspect", ambulance_test_kernel::ELF);
    cfg.vcpus = 2;
    cfg.memory_bytes = 64 << 20;
    cfg.cmdline = "fault=none tasks=64".into();
    let guest = vmm.start(cfg).expect("guest starts");
    let start = Instant::now();
    let reg = loop {
        if let Some(r) = guest.registration() {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no registration");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(300));
    guest.freeze().expect("freeze");
    let export = guest.memory_export().expect("export");
    let mem = LiveMemory::map(&export).expect("map");
    let d = &reg.descriptor;
    let prog = Program::new(Arc::new(mem), d.page_table_root, Paging::Four);
    let rq = d
        .roots
        .iter()
        .find(|r| r.name == "run_queue")
        .expect("run_queue");
    let stack_base = d
        .vmcoreinfo
        .as_deref()
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("OFFSET(Task.stack_base)="))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("OFFSET(Task.stack_base) in VMCOREINFO");
    let tasks = d.roots.iter().find(|r| r.name == "tasks").expect("tasks");

    // Addresses a diagnosis touches: every task (kernel image, 4 KiB pages), its stack
    // (vmalloc, 4 KiB pages), and its run-queue link.
    let mut vas = Vec::new();
    for i in 0..tasks.max_count as u64 {
        let t = tasks.address + i * tasks.element_size as u64;
        vas.push(t);
        vas.push(t + rq.link_offset as u64);
        if let Ok(stack) = prog.read_u64(t + stack_base) {
            if prog.is_mapped(stack) {
                vas.push(stack);
            }
        }
    }
    let mut g = c.benchmark_group("kvm_test_kernel");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    translations(&mut g, "translate_cached", &prog, &vas, true);
    translations(&mut g, "translate_uncached", &prog, &vas, false);
    list_walk(&mut g, "run_queue_walk", &prog, rq.address);
    g.finish();
    drop(export);
    guest.destroy();
}

fn benches(c: &mut Criterion) {
    synthetic_benches(c);
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED (no /dev/kvm): the test-kernel benches");
        return;
    }
    kvm_benches(c);
}

criterion_group! {
    name = introspect;
    config = Criterion::default();
    targets = benches
}
criterion_main!(introspect);
