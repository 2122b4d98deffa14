//! End-to-end tests on real KVM with tiny hand-assembled guests.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_abi::boot::{BOOT_INFO_GPA, BOOT_PML4_GPA, CMDLINE_GPA};
use ambulance_abi::descriptor::{self, DescriptorWriter, Hint, RootKind, RootSpec};
use ambulance_abi::ports;
use ambulance_vmm::{
    Error, EventKind, FailureCause, GuestConfig, GuestState, RegistrationStatus, VcpuActivity,
};
use common::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn panic_doorbell_reports_console_then_failure() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let mut a = Asm::new();
    a.print("hello\nbye");
    a.out32(ports::PANIC, ports::panic_reason::RUST_PANIC);
    let after_out = Asm::va(a.here());
    a.hlt().spin();
    let g = vmm.start(config("panic", kernel(&a, &[]))).unwrap();
    assert_eq!(g.generation(), 0);

    let e = wait_for(&rx, g.id(), T, |k| matches!(k, EventKind::Console { .. }));
    assert_eq!(
        e.kind,
        EventKind::Console {
            text: "hello".into()
        }
    );
    assert_eq!(e.guest_name, "panic");
    // The partial line is flushed before the failure is reported.
    let e = wait_for(&rx, g.id(), T, |_| true);
    assert_eq!(e.kind, EventKind::Console { text: "bye".into() });
    let e = wait_for(&rx, g.id(), T, |_| true);
    let EventKind::Failure {
        cause,
        vcpu,
        frozen,
        detail,
    } = &e.kind
    else {
        panic!("expected a failure, got {e:?}");
    };
    assert_eq!(
        *cause,
        FailureCause::Panic {
            code: 7,
            reason: "kernel panic".into()
        }
    );
    assert_eq!(*vcpu, Some(0));
    assert!(detail.contains("panic doorbell"), "{detail}");
    assert_eq!(frozen.vcpus.len(), 1);
    assert_eq!(frozen.vcpus[0].rip, after_out);
    assert_eq!(frozen.vcpus[0].activity, VcpuActivity::Failed);

    // The guest is frozen; freeze() returns the same snapshot.
    assert_eq!(g.state(), GuestState::Frozen);
    let snap = g.freeze().unwrap();
    assert_eq!(snap.summary(), *frozen);
    assert_eq!(
        g.console_lines(),
        vec!["hello".to_string(), "bye".to_string()]
    );

    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["kind"]["type"], "failure");
    assert_eq!(json["kind"]["cause"]["kind"], "panic");
    assert_eq!(json["kind"]["cause"]["code"], 7);
    assert_eq!(json["kind"]["frozen"]["vcpus"][0]["activity"], "failed");
    let back: ambulance_vmm::VmmEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);

    // Resuming does not run the panicked vCPU again, and no second failure comes.
    g.resume().unwrap();
    assert_eq!(g.state(), GuestState::Running);
    assert!(collect(&rx, g.id(), Duration::from_millis(200)).is_empty());
    g.destroy();
    assert_eq!(g.state(), GuestState::Stopped);
}

#[test]
fn boot_protocol_registers_boot_info_and_apic_ids() {
    let Some(vmm) = vmm() else { return };
    let mut a = Asm::new();
    // Every vCPU: store its APIC ID (CPUID.1:EBX[31:24]) at SCRATCH + 4*index and RDI at
    // SCRATCH + 0x100 + 8*index, then spin.
    a.mov_r8(kva(SCRATCH + 0x100)).store_rdi_r8_rsi8();
    a.mov_eax(1).mov_ecx(0).cpuid().shr_ebx(24);
    a.mov_r8(kva(SCRATCH)).store_ebx_r8_rsi4();
    // Mark "done" (index + 1) at SCRATCH + 0x200 + 8*index.
    a.mov_rbx(kva(SCRATCH + 0x200))
        .lea_rbx_rbx_rsi8()
        .inc_qword_rbx();
    let spin = a.here();
    a.spin();
    let mut cfg = config("boot", kernel(&a, &[]));
    cfg.vcpus = 2;
    cfg.memory_bytes = 48 << 20;
    cfg.cmdline = "console=ttyS0 ambulance.test=1".into();
    let g = vmm.start(cfg).unwrap();

    poll(T, || {
        (read_u64(&g, SCRATCH + 0x200) == 1 && read_u64(&g, SCRATCH + 0x208) == 1).then_some(())
    })
    .expect("both vCPUs ran");
    assert_eq!(read_u32(&g, SCRATCH), 0, "APIC ID of vCPU 0");
    assert_eq!(read_u32(&g, SCRATCH + 4), 1, "APIC ID of vCPU 1");
    assert_eq!(read_u64(&g, SCRATCH + 0x100), BOOT_INFO_GPA);
    assert_eq!(read_u64(&g, SCRATCH + 0x108), BOOT_INFO_GPA);

    let f = g.freeze().unwrap();
    assert_eq!(f.vcpus.len(), 2);
    for (i, v) in f.vcpus.iter().enumerate() {
        assert_eq!(v.index, i as u32);
        assert_eq!(v.activity, VcpuActivity::Running);
        assert_eq!(v.regs.rip, Asm::va(spin));
        assert_eq!(v.regs.rsi, i as u64);
        assert_eq!(v.regs.rsp, 0);
        assert_eq!(v.regs.rflags & 0x200, 0, "interrupts off");
        assert_eq!(v.sregs.cr0, 0x8001_0033);
        assert_eq!(v.sregs.cr4, 0x620);
        assert_eq!(v.sregs.efer, 0xd00);
        assert_eq!(v.sregs.cr3, BOOT_PML4_GPA);
        assert_eq!(v.sregs.cs.selector, 8);
        assert_eq!(v.sregs.cs.l, 1);
        assert_eq!(v.sregs.ss.selector, 16);
        assert_eq!(v.sregs.gdt.base, 0x500);
        let r = v.registers();
        assert_eq!(r.rip, v.regs.rip);
        assert_eq!(r.cr3, BOOT_PML4_GPA);
    }
    assert!(f.stopped_at >= f.requested_at);

    let mut bi = [0u8; 128];
    g.read_phys(BOOT_INFO_GPA, &mut bi).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(bi[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bi[o..o + 4].try_into().unwrap());
    assert_eq!(&bi[0..8], b"AMBUBOOT");
    assert_eq!(u32_at(8), 1, "version");
    assert_eq!(u32_at(12), 2, "cpu_count");
    assert!(u64_at(16) > 100_000, "tsc_khz {}", u64_at(16));
    assert_eq!(u64_at(24), 48 << 20, "ram_size");
    assert_eq!(u64_at(32), CMDLINE_GPA);
    assert_eq!(u32_at(40) as usize, "console=ttyS0 ambulance.test=1".len());
    assert_eq!(u32_at(44), 1, "region_count");
    assert_eq!((u64_at(48), u64_at(56)), (0, 48 << 20));
    let mut cmd = [0u8; 31];
    g.read_phys(CMDLINE_GPA, &mut cmd).unwrap();
    assert_eq!(&cmd, b"console=ttyS0 ambulance.test=1\0");
    g.destroy();
}

#[test]
fn freeze_spinning_guest_then_resume_and_destroy() {
    let Some(vmm) = vmm() else { return };
    let mut a = Asm::new();
    a.cli().mov_rbx(kva(SCRATCH));
    let top = a.here();
    a.inc_qword_rbx().jmp(top);
    let g = vmm.start(config("spin", kernel(&a, &[]))).unwrap();
    poll(T, || (read_u64(&g, SCRATCH) > 1000).then_some(())).expect("guest runs");

    for _ in 0..3 {
        let t0 = Instant::now();
        let f = g.freeze().unwrap();
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(500), "freeze took {took:?}");
        assert_eq!(g.state(), GuestState::Frozen);
        let rip = f.vcpus[0].regs.rip;
        assert!(
            rip == Asm::va(top) || rip == Asm::va(top + 3),
            "rip {rip:#x} outside the loop"
        );
        let c0 = read_u64(&g, SCRATCH);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(read_u64(&g, SCRATCH), c0, "a frozen guest does not run");
        assert!(g.frozen_state().is_some());

        g.resume().unwrap();
        assert_eq!(g.state(), GuestState::Running);
        assert!(g.frozen_state().is_none());
        poll(T, || (read_u64(&g, SCRATCH) > c0).then_some(())).expect("guest runs again");
    }
    g.resume().unwrap(); // no-op while running

    g.destroy();
    assert_eq!(g.state(), GuestState::Stopped);
    assert!(matches!(g.freeze(), Err(Error::Stopped { .. })));
    assert!(matches!(g.resume(), Err(Error::Stopped { .. })));
    let mut b = [0u8; 8];
    assert!(g.read_phys(SCRATCH, &mut b).is_err());
    g.destroy(); // idempotent
}

#[test]
fn triple_fault_is_reported() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let mut a = Asm::new();
    // lidt with a zero-limit IDT, then #UD: #UD -> #GP -> #DF -> triple fault.
    let lidt = a.here();
    a.lidt_at(0); // patched below
    a.ud2().spin().align(16);
    let idtr = a.here();
    a.bytes(&[0; 10]);
    let mut b = Asm::new();
    b.lidt_at(idtr - lidt);
    a.code[lidt..lidt + 7].copy_from_slice(&b.code);
    let g = vmm.start(config("triple", kernel(&a, &[]))).unwrap();
    let e = wait_for(&rx, g.id(), T, |k| matches!(k, EventKind::Failure { .. }));
    let EventKind::Failure { cause, vcpu, .. } = e.kind else {
        unreachable!()
    };
    assert_eq!(cause, FailureCause::TripleFault);
    assert_eq!(vcpu, Some(0));
    assert_eq!(g.state(), GuestState::Frozen);
    assert_eq!(
        serde_json::to_value(&cause).unwrap()["kind"],
        "triple_fault"
    );
}

#[test]
fn i8042_reset_is_reported() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let mut a = Asm::new();
    a.mov_edx(0x64).in_al_dx(); // status poll first, as kernels do
    a.out8(ports::I8042_COMMAND, ports::I8042_RESET);
    a.spin();
    let g = vmm.start(config("reset", kernel(&a, &[]))).unwrap();
    let e = wait_for(&rx, g.id(), T, |k| matches!(k, EventKind::Failure { .. }));
    let EventKind::Failure { cause, vcpu, .. } = e.kind else {
        unreachable!()
    };
    assert_eq!(cause, FailureCause::Reset);
    assert_eq!(vcpu, Some(0));
}

#[test]
fn io_bus_defaults_and_maintenance_doorbell() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let mut a = Asm::new();
    a.mov_edx(ports::CONSOLE_LSR as u32).in_al_dx();
    a.mov_rbx(kva(SCRATCH)).store_eax_rbx();
    a.in32(0x1234);
    a.mov_rbx(kva(SCRATCH + 8)).store_eax_rbx();
    a.in32(ports::REGISTER_HI);
    a.mov_rbx(kva(SCRATCH + 16)).store_eax_rbx();
    a.out32(0x1234, 5); // ignored
                        // MMIO: beyond RAM but inside the boot identity map.
    a.mov_rbx(0x3000_0000).load_eax_rbx().store_eax_rbx();
    a.mov_rbx(kva(SCRATCH + 24)).store_eax_rbx();
    a.out32(ports::MAINTENANCE_COMPLETE, 3);
    a.hlt().spin();
    let mut cfg = config("io", kernel(&a, &[]));
    cfg.memory_bytes = 16 << 20;
    let g = vmm.start(cfg).unwrap();
    let e = wait_for(&rx, g.id(), T, |k| {
        matches!(k, EventKind::MaintenanceComplete { .. })
    });
    assert_eq!(e.kind, EventKind::MaintenanceComplete { status: 3 });
    // mov eax, imm zeroes the upper bits first; `in al` only replaces AL.
    assert_eq!(read_u32(&g, SCRATCH) & 0xff, 0x60, "LSR idle");
    assert_eq!(read_u32(&g, SCRATCH + 8), 0xffff_ffff, "unknown port");
    assert_eq!(read_u32(&g, SCRATCH + 16), 0, "no registration yet");
    assert_eq!(read_u32(&g, SCRATCH + 24), 0xffff_ffff, "MMIO read");
    // The halted vCPU is a frozen vCPU like any other, and stays halted after resume.
    let f = g.freeze().unwrap();
    assert_eq!(f.vcpus[0].activity, VcpuActivity::Halted);
    g.resume().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.freeze().unwrap().vcpus[0].activity, VcpuActivity::Halted);
    assert_eq!(g.registration_status(), RegistrationStatus::None);
}

#[test]
fn memory_export_is_read_only() {
    let Some(vmm) = vmm() else { return };
    const MAGIC: u64 = 0x414d_4255_4c41_4e43;
    let mut a = Asm::new();
    a.mov_rbx(SCRATCH).mov_rax(MAGIC).store_rax_rbx(); // identity map
    a.hlt().spin();
    let g = vmm.start(config("export", kernel(&a, &[]))).unwrap();
    poll(T, || (read_u64(&g, SCRATCH) == MAGIC).then_some(())).expect("guest wrote");

    let m = g.memory_export().unwrap();
    assert_eq!(m.regions().len(), 1);
    assert_eq!(
        (
            m.regions()[0].gpa,
            m.regions()[0].size,
            m.regions()[0].file_offset
        ),
        (0, 32 << 20, 0)
    );
    assert_eq!(m.size(), 32 << 20);
    assert_eq!(
        m.file_offset_of(SCRATCH),
        Some((SCRATCH, (32 << 20) - SCRATCH))
    );
    let fd = m.file().as_raw_fd();
    // SAFETY: F_GETFL on a valid descriptor.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);

    let mut b = [0u8; 8];
    m.file().read_exact_at(&mut b, SCRATCH).unwrap();
    assert_eq!(u64::from_le_bytes(b), MAGIC);
    assert!(
        m.file().write_at(&[0], 0).is_err(),
        "the file is not writable"
    );

    let len = 32 << 20;
    // SAFETY: mapping a file we own; the result is checked and unmapped below.
    let rw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_eq!(rw, libc::MAP_FAILED, "a writable shared mapping must fail");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES)
    );
    // SAFETY: as above.
    let ro = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(ro, libc::MAP_FAILED, "a read-only mapping works");
    // SAFETY: `ro` maps `len` readable bytes and SCRATCH + 8 <= len.
    let v =
        unsafe { std::ptr::read_volatile((ro as *const u8).add(SCRATCH as usize) as *const u64) };
    assert_eq!(v, MAGIC);
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(ro, len) };

    // The export outlives the guest.
    g.destroy();
    m.file().read_exact_at(&mut b, SCRATCH).unwrap();
    assert_eq!(u64::from_le_bytes(b), MAGIC);
}

fn counter_kernel() -> Arc<[u8]> {
    let mut a = Asm::new();
    a.mov_rbx(kva(SCRATCH)).inc_qword_rbx(); // boot count
    a.mov_rbx(kva(SCRATCH + 8));
    let top = a.here();
    a.inc_qword_rbx().jmp(top);
    kernel(&a, &[])
}

#[test]
fn freezing_one_guest_leaves_another_running() {
    let Some(vmm) = vmm() else { return };
    let k = counter_kernel();
    let ga = vmm.start(config("a", k.clone())).unwrap();
    let gb = vmm.start(config("b", k)).unwrap();
    assert_ne!(ga.id(), gb.id());
    for g in [&ga, &gb] {
        poll(T, || (read_u64(g, SCRATCH + 8) > 0).then_some(())).expect("guest runs");
    }
    ga.freeze().unwrap();
    let a0 = read_u64(&ga, SCRATCH + 8);
    let b0 = read_u64(&gb, SCRATCH + 8);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read_u64(&ga, SCRATCH + 8), a0, "frozen guest stands still");
    assert!(
        read_u64(&gb, SCRATCH + 8) > b0,
        "the other guest keeps running"
    );
    assert_eq!(gb.state(), GuestState::Running);
    ga.resume().unwrap();
    poll(T, || (read_u64(&ga, SCRATCH + 8) > a0).then_some(())).expect("resumed");
}

#[test]
fn restart_gives_fresh_ram() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let g = vmm.start(config("restart", counter_kernel())).unwrap();
    let id = g.id();
    poll(T, || (read_u64(&g, SCRATCH + 8) > 0).then_some(())).expect("runs");
    assert_eq!(read_u64(&g, SCRATCH), 1);
    let old = g.memory_export().unwrap();

    g.fail("operator wants a look").unwrap();
    let e = wait_for(&rx, id, T, |k| matches!(k, EventKind::Failure { .. }));
    assert_eq!(e.generation, 0);
    assert!(matches!(
        e.kind,
        EventKind::Failure {
            cause: FailureCause::Operator,
            vcpu: None,
            ..
        }
    ));

    g.restart().unwrap();
    assert_eq!(g.id(), id);
    assert_eq!(g.generation(), 1);
    assert_eq!(g.state(), GuestState::Running);
    poll(T, || (read_u64(&g, SCRATCH + 8) > 0).then_some(())).expect("runs again");
    assert_eq!(read_u64(&g, SCRATCH), 1, "boot count 1: RAM was fresh");

    // The old export still shows the old generation; the new one is a different file.
    let new = g.memory_export().unwrap();
    let mut b = [0u8; 8];
    old.file().read_exact_at(&mut b, SCRATCH + 8).unwrap();
    let old_count = u64::from_le_bytes(b);
    std::thread::sleep(Duration::from_millis(20));
    old.file().read_exact_at(&mut b, SCRATCH + 8).unwrap();
    assert_eq!(u64::from_le_bytes(b), old_count, "old generation is gone");
    new.file().read_exact_at(&mut b, SCRATCH + 8).unwrap();
    assert!(u64::from_le_bytes(b) > 0);

    // A failure in the new generation is reported again, tagged with generation 1.
    g.fail("again").unwrap();
    let e = wait_for(&rx, id, T, |k| matches!(k, EventKind::Failure { .. }));
    assert_eq!(e.generation, 1);
    g.destroy();
    assert_eq!(g.state(), GuestState::Stopped);
    g.restart().unwrap();
    assert_eq!(g.generation(), 2);
    assert_eq!(g.state(), GuestState::Running);
}

const DESC_GOOD: u64 = 0x20_1000;
const DESC_BAD: u64 = 0x20_2000;
const HEARTBEAT: u64 = 0x20_3000;

/// A descriptor page as a guest would fill it.
fn descriptor_page(heartbeat_gpa: u64) -> (Vec<u8>, usize) {
    let mut page = vec![0u8; 4096];
    let mut w = DescriptorWriter::new(&mut page, 1, 1).unwrap();
    w.set_build_id(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    w.set_page_table_root(BOOT_PML4_GPA);
    w.set_heartbeat_gpa(heartbeat_gpa);
    w.push_root(
        &RootSpec {
            name: "tasks",
            type_name: "Task",
            kind: RootKind::Array,
            flags: 0,
            address: kva(0x20_4000),
            element_size: 64,
            link_offset: 0,
            max_count: 4,
            aux: 0,
            lock: 0,
        },
        &[Hint::Magic {
            offset: 0,
            size: 4,
            value: 0x5441_534b,
        }],
    )
    .unwrap();
    w.push_vmcoreinfo("OSRELEASE=test\nPAGESIZE=4096\n")
        .unwrap();
    let size = w.finish();
    (page, size)
}

/// Registers the descriptor at `gpa` and stores the status read back at `status_gpa`.
fn register(a: &mut Asm, gpa: u64, status_gpa: u64) {
    a.out32(ports::REGISTER_LO, gpa as u32);
    a.out32(ports::REGISTER_HI, (gpa >> 32) as u32);
    a.in_eax_dx(); // edx still holds REGISTER_HI
    a.mov_rbx(kva(status_gpa)).store_eax_rbx();
}

#[test]
fn registration_refused_then_accepted() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let (good, size) = descriptor_page(HEARTBEAT);
    let mut bad = good.clone();
    bad[size - 1] ^= 0x20; // checksum no longer matches

    let st = SCRATCH;
    let mut a = Asm::new();
    a.in32(ports::REGISTER_HI).mov_rbx(kva(st)).store_eax_rbx();
    register(&mut a, 1 << 32, st + 4); // outside RAM
    register(&mut a, DESC_GOOD + 8, st + 8); // not page-aligned
    register(&mut a, DESC_BAD, st + 12); // bad checksum
    register(&mut a, DESC_GOOD, st + 16); // fine
    a.mov_rbx(kva(HEARTBEAT));
    let top = a.here();
    a.inc_qword_rbx().jmp(top);
    let k = kernel(
        &a,
        &[(DESC_GOOD, &good), (DESC_BAD, &bad), (HEARTBEAT, &[0; 8])],
    );
    let g = vmm.start(config("register", k)).unwrap();

    let refused = |e: &ambulance_vmm::VmmEvent| match &e.kind {
        EventKind::RegistrationRefused { gpa, reason } => (*gpa, reason.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let is_reg = |k: &EventKind| {
        matches!(
            k,
            EventKind::Registered { .. } | EventKind::RegistrationRefused { .. }
        )
    };
    let (gpa, reason) = refused(&wait_for(&rx, g.id(), T, is_reg));
    assert_eq!(gpa, 1 << 32);
    assert!(reason.contains("not inside guest RAM"), "{reason}");
    let (gpa, reason) = refused(&wait_for(&rx, g.id(), T, is_reg));
    assert_eq!(gpa, DESC_GOOD + 8);
    assert!(reason.contains("page-aligned"), "{reason}");
    let (gpa, reason) = refused(&wait_for(&rx, g.id(), T, is_reg));
    assert_eq!(gpa, DESC_BAD);
    assert!(reason.contains("checksum mismatch"), "{reason}");
    let e = wait_for(&rx, g.id(), T, is_reg);
    assert_eq!(
        e.kind,
        EventKind::Registered {
            gpa: DESC_GOOD,
            build_id: "deadbeef".into(),
            roots: vec!["tasks".into()],
            vmcoreinfo: true,
        }
    );

    poll(T, || (read_u32(&g, st + 16) != 0).then_some(())).expect("guest stored statuses");
    let statuses: Vec<u32> = (0..5).map(|i| read_u32(&g, st + 4 * i)).collect();
    let (n, acc, refu) = (
        RegistrationStatus::None as u32,
        RegistrationStatus::Accepted as u32,
        RegistrationStatus::Refused as u32,
    );
    assert_eq!(statuses, vec![n, refu, refu, refu, acc]);
    assert_eq!(g.registration_status(), RegistrationStatus::Accepted);

    let reg = g.registration().expect("registered");
    assert_eq!(reg.gpa, DESC_GOOD);
    assert_eq!(reg.bytes, good[..size]);
    assert_eq!(reg.descriptor, descriptor::parse(&good).unwrap());
    assert_eq!(reg.descriptor.heartbeat_gpa, HEARTBEAT);
    let h0 = g.heartbeat().expect("heartbeat readable");
    poll(T, || (g.heartbeat().unwrap() > h0).then_some(())).expect("heartbeat moves");
    assert_eq!(
        g.state(),
        GuestState::Running,
        "refusals do not stop the guest"
    );

    // A restart forgets the registration.
    g.restart().unwrap();
    let e = wait_for(&rx, g.id(), T, |k| {
        matches!(k, EventKind::Registered { .. })
    });
    assert_eq!(e.generation, 1);
}

/// A guest that registers, beats `beats` times (or forever when `None`), then spins.
fn heartbeat_kernel(beats: Option<u32>) -> Arc<[u8]> {
    let (good, _) = descriptor_page(HEARTBEAT);
    let mut a = Asm::new();
    register(&mut a, DESC_GOOD, SCRATCH);
    a.mov_rbx(kva(HEARTBEAT));
    match beats {
        Some(n) => {
            a.mov_ecx(n);
            let top = a.here();
            a.inc_qword_rbx().dec_ecx().jnz(top).spin();
        }
        None => {
            let top = a.here();
            a.inc_qword_rbx().jmp(top);
        }
    }
    kernel(&a, &[(DESC_GOOD, &good), (HEARTBEAT, &[0; 8])])
}

#[test]
fn watchdog_reports_a_stalled_heartbeat_once() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    let mut cfg = config("stall", heartbeat_kernel(Some(1000)));
    cfg.watchdog = Some(Duration::from_millis(200));
    let g = vmm.start(cfg).unwrap();
    let t0 = Instant::now();
    let e = wait_for(&rx, g.id(), T, |k| matches!(k, EventKind::Failure { .. }));
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let EventKind::Failure {
        cause,
        vcpu,
        frozen,
        ..
    } = e.kind
    else {
        unreachable!()
    };
    let FailureCause::WatchdogStall {
        heartbeat,
        stalled_for_ms,
    } = cause
    else {
        panic!("expected a stall, got {cause:?}");
    };
    assert_eq!(heartbeat, 1000);
    assert!(stalled_for_ms >= 200);
    assert_eq!(vcpu, None);
    assert_eq!(frozen.vcpus[0].activity, VcpuActivity::Running);
    assert_eq!(g.state(), GuestState::Frozen);
    assert_eq!(g.heartbeat(), Some(1000));

    // First failure wins: resuming does not produce a second report in this generation.
    g.resume().unwrap();
    let later = collect(&rx, g.id(), Duration::from_millis(600));
    assert!(
        !later
            .iter()
            .any(|e| matches!(e.kind, EventKind::Failure { .. })),
        "{later:?}"
    );
}

#[test]
fn degraded_heartbeat_rate_is_reported() {
    let Some(vmm) = vmm() else { return };
    let rx = vmm.events();
    // Threshold far above any possible rate: degraded after one window.
    let mut cfg = config("slow", heartbeat_kernel(None));
    cfg.degraded_below_hz = Some(1e15);
    let fast = vmm.start(cfg).unwrap();
    // A sane threshold: never fires.
    let mut cfg = config("healthy", heartbeat_kernel(None));
    cfg.degraded_below_hz = Some(10.0);
    cfg.watchdog = Some(Duration::from_millis(500));
    let healthy = vmm.start(cfg).unwrap();

    let e = wait_for(&rx, fast.id(), T, |k| {
        matches!(k, EventKind::Failure { .. })
    });
    let EventKind::Failure { cause, .. } = e.kind else {
        unreachable!()
    };
    let FailureCause::Degraded {
        measured_hz,
        threshold_hz,
        window_ms,
    } = cause
    else {
        panic!("expected degraded, got {cause:?}");
    };
    assert!(measured_hz > 10.0, "{measured_hz}");
    assert_eq!(threshold_hz, 1e15);
    assert!(window_ms >= 1000);
    let later = collect(&rx, healthy.id(), Duration::from_millis(1500));
    assert!(
        !later
            .iter()
            .any(|e| matches!(e.kind, EventKind::Failure { .. })),
        "{later:?}"
    );
    assert_eq!(healthy.state(), GuestState::Running);
}

#[test]
fn bad_configurations_and_kernels_are_refused_clearly() {
    let k = counter_kernel();
    let mut c = config("bad", k.clone());
    c.vcpus = 0;
    assert!(c.validate().unwrap_err().to_string().contains("vcpus"));
    c.vcpus = 17;
    assert!(c.validate().is_err());
    let mut c = config("bad", k.clone());
    c.memory_bytes = 1 << 20;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("at least 16 MiB"));
    c.memory_bytes = (32 << 20) + 1;
    assert!(c.validate().is_err());
    let mut c = config("bad", k.clone());
    c.cmdline = "a\0b".into();
    assert!(c.validate().is_err());
    c.cmdline = "x".repeat(4096);
    assert!(c.validate().is_err());
    let mut c = config("bad", k.clone());
    c.degraded_below_hz = Some(f64::NAN);
    assert!(c.validate().is_err());
    assert!(config("ok", k).validate().is_ok());

    let Some(vmm) = vmm() else { return };
    let err = vmm
        .start(GuestConfig::new("junk", b"not an elf".to_vec()))
        .unwrap_err();
    assert!(err.to_string().contains("not an ELF"), "{err}");
    // A segment below 1 MiB.
    let mut a = Asm::new();
    a.spin();
    let low = elf(
        kva(0x8_0000),
        &[Segment {
            paddr: 0x8_0000,
            data: &a.code,
            memsz: 2,
        }],
    );
    let err = vmm.start(GuestConfig::new("low", low)).unwrap_err();
    assert!(matches!(err, Error::BadKernel { .. }), "{err}");
    // An entry point outside every segment.
    let off = elf(
        kva(0x50_0000),
        &[Segment {
            paddr: TEXT,
            data: &a.code,
            memsz: 2,
        }],
    );
    let err = vmm.start(GuestConfig::new("entry", off)).unwrap_err();
    assert!(err.to_string().contains("entry point"), "{err}");
}
