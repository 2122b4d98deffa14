//! Guests: the public handle, and one running generation (VM, RAM, threads) with its
//! freeze/resume/stop control.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ambulance_abi::descriptor::{RootKind, FLAG_LA57};
use ambulance_abi::ports::RegistrationStatus;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuFd, VmFd};

use crate::boot;
use crate::config::GuestConfig;
use crate::devices::{AcceptedDescriptor, Console, RegState, CONSOLE_LOG_LINES};
use crate::error::{Error, Result};
use crate::event::{
    EventKind, FailureCause, FrozenState, GuestState, VcpuActivity, VcpuState, VmmEvent,
};
use crate::kick;
use crate::memory::Ram;
use crate::VmmShared;
use ambulance_ram::GuestRam;

/// How long [`Guest::freeze`] waits for every vCPU to stop.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// The name of the object root holding a guest's work counter ([`Guest::work_units`]).
pub const WORK_ROOT: &str = "work";
/// How often a waiting freeze kicks vCPUs that have not stopped yet (belt and braces: one
/// kick suffices).
const REKICK_INTERVAL: Duration = Duration::from_millis(20);
/// Where KVM may put its real-mode TSS (Intel); inside the 32-bit MMIO hole, never RAM.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What does not change across generations.
pub(crate) struct GuestCtx {
    pub(crate) id: u64,
    pub(crate) config: GuestConfig,
    pub(crate) vmm: Arc<VmmShared>,
    /// Completed console lines, all generations, oldest first.
    pub(crate) console_log: Mutex<VecDeque<String>>,
}

impl GuestCtx {
    pub(crate) fn emit(&self, generation: u32, kind: EventKind) {
        self.vmm.emit(VmmEvent {
            guest: self.id,
            guest_name: self.config.name.clone(),
            generation,
            time: crate::now(),
            kind,
        });
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Running,
    Paused,
    Stopping,
}

struct PendingFailure {
    cause: FailureCause,
    vcpu: Option<u32>,
    detail: String,
}

/// Control state of one generation, under `Instance::ctl`.
struct Ctl {
    mode: Mode,
    /// Live vCPU threads, for kicks. A thread removes itself before it returns.
    threads: Vec<Option<libc::pthread_t>>,
    /// vCPU threads that have returned.
    exited: Vec<bool>,
    /// State of each vCPU currently parked (frozen, halted or failed).
    parked: Vec<Option<VcpuState>>,
    requested_at: Instant,
    /// The snapshot of the current pause, once every vCPU stopped.
    frozen: Option<FrozenState>,
    /// Whether this generation already failed (first failure wins).
    failed: bool,
    /// A failure waiting for the freeze to complete before it is reported.
    pending: Option<PendingFailure>,
    /// Bumped on every resume, so the watchdog can restart its measurements.
    run_epoch: u64,
}

/// What a parked vCPU does next.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// One generation of a guest: VM, RAM, vCPU threads, devices.
pub(crate) struct Instance {
    pub(crate) ctx: Arc<GuestCtx>,
    pub(crate) generation: u32,
    // Declared before `ram`: the VM (and its memory slots) goes away before the mapping.
    _vm: VmFd,
    pub(crate) ram: Ram,
    vcpus: u32,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    /// Set whenever vCPUs must leave `KVM_RUN` and look at `ctl` (pause or stop).
    pub(crate) pause: AtomicBool,
    pub(crate) reg: Mutex<RegState>,
    pub(crate) console: Mutex<Console>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Instance {
    /// Builds the VM for `generation` and starts its vCPU (and watchdog) threads.
    fn start(ctx: Arc<GuestCtx>, generation: u32) -> Result<Arc<Instance>> {
        let cfg = &ctx.config;
        let name = cfg.name.clone();
        let kvm_err = |op: &'static str| {
            let guest = name.clone();
            move |source| Error::Kvm {
                guest: guest.clone(),
                op,
                source,
            }
        };
        let ram = Ram::new(&name, cfg.memory_bytes)?;
        let vm = ctx.vmm.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        for (slot, gpa, size, host) in ram.kvm_slots() {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: `host..host + size` is a live shared mapping owned by `ram`. The
            // Instance owns both the VM and `ram` and drops the VM first; vCPU threads
            // (the only users of the slot) hold the Instance alive while they run.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let image = boot::load_kernel(&ram, &cfg.kernel).map_err(|problem| Error::BadKernel {
            guest: name.clone(),
            problem,
        })?;

        let mut vcpus: Vec<VcpuFd> = Vec::with_capacity(cfg.vcpus as usize);
        let mut tsc_khz = 0;
        for index in 0..cfg.vcpus {
            let vcpu = vm
                .create_vcpu(index as u64)
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&boot::vcpu_cpuid(&ctx.vmm.supported_cpuid, index))
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            if index == 0 {
                tsc_khz = boot::tsc_khz(&vcpu);
            }
            let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            vcpu.set_sregs(&boot::boot_sregs(sregs))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&boot::boot_regs(image.entry, index))
                .map_err(kvm_err("KVM_SET_REGS"))?;
            vcpu.set_fpu(&boot::boot_fpu())
                .map_err(kvm_err("KVM_SET_FPU"))?;
            vcpus.push(vcpu);
        }
        boot::write_boot_structures(&ram, &cfg.cmdline, cfg.vcpus, tsc_khz).map_err(|problem| {
            Error::Memory {
                guest: name.clone(),
                size: cfg.memory_bytes,
                detail: problem,
            }
        })?;

        let n = cfg.vcpus as usize;
        let inst = Arc::new(Instance {
            ctx: ctx.clone(),
            generation,
            _vm: vm,
            ram,
            vcpus: cfg.vcpus,
            ctl: Mutex::new(Ctl {
                mode: Mode::Running,
                threads: vec![None; n],
                exited: vec![false; n],
                parked: vec![None; n],
                requested_at: Instant::now(),
                frozen: None,
                failed: false,
                pending: None,
                run_epoch: 0,
            }),
            cv: Condvar::new(),
            pause: AtomicBool::new(false),
            reg: Mutex::new(RegState::default()),
            console: Mutex::new(Console::default()),
            threads: Mutex::new(Vec::new()),
        });

        let spawn = |thread_name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(f)
                .map_err(|source| Error::Spawn {
                    guest: name.clone(),
                    name: thread_name,
                    source,
                })
        };
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let i = inst.clone();
            match spawn(
                format!("g{}v{}", ctx.id, index),
                Box::new(move || crate::vcpu::run(i, index as u32, vcpu)),
            ) {
                Ok(h) => inst.threads.lock().push(h),
                Err(e) => {
                    inst.shutdown();
                    return Err(e);
                }
            }
        }
        if cfg.watchdog.is_some() || cfg.degraded_below_hz.is_some() {
            let i = inst.clone();
            match spawn(
                format!("g{}watchdog", ctx.id),
                Box::new(move || crate::watchdog::run(i)),
            ) {
                Ok(h) => inst.threads.lock().push(h),
                Err(e) => {
                    inst.shutdown();
                    return Err(e);
                }
            }
        }
        tracing::info!(
            guest = ctx.id,
            name = %ctx.name(),
            generation,
            vcpus = cfg.vcpus,
            memory_mib = cfg.memory_bytes >> 20,
            entry = format_args!("{:#x}", image.entry),
            tsc_khz,
            "guest started"
        );
        Ok(inst)
    }

    fn kick_all(&self, ctl: &Ctl) {
        for t in ctl.threads.iter().flatten() {
            kick::kick(*t);
        }
    }

    /// Asks every vCPU to stop (no-op when already pausing or stopping).
    fn request_pause(&self, ctl: &mut Ctl) {
        if ctl.mode == Mode::Running {
            ctl.mode = Mode::Paused;
            ctl.requested_at = Instant::now();
            ctl.frozen = None;
            self.pause.store(true, Ordering::SeqCst);
            self.kick_all(ctl);
        }
        self.maybe_complete(ctl);
    }

    fn stopped_count(&self, ctl: &Ctl) -> u32 {
        (0..self.vcpus as usize)
            .filter(|&i| ctl.parked[i].is_some() || ctl.exited[i])
            .count() as u32
    }

    /// Completes a pause once every vCPU has stopped: records the snapshot and reports a
    /// pending failure.
    fn maybe_complete(&self, ctl: &mut Ctl) {
        if ctl.mode != Mode::Paused || ctl.frozen.is_some() || self.stopped_count(ctl) != self.vcpus
        {
            return;
        }
        let frozen = FrozenState {
            vcpus: ctl.parked.iter().flatten().cloned().collect(),
            requested_at: ctl.requested_at,
            stopped_at: Instant::now(),
        };
        ctl.frozen = Some(frozen.clone());
        if let Some(p) = ctl.pending.take() {
            self.report_failure(p, &frozen);
        }
        self.cv.notify_all();
    }

    fn report_failure(&self, p: PendingFailure, frozen: &FrozenState) {
        self.flush_console();
        tracing::info!(
            guest = self.ctx.id,
            name = %self.ctx.name(),
            generation = self.generation,
            cause = p.cause.name(),
            vcpu = ?p.vcpu,
            detail = %p.detail,
            freeze_latency_us = frozen.summary().freeze_latency_us,
            "guest failed; frozen"
        );
        self.ctx.emit(
            self.generation,
            EventKind::Failure {
                cause: p.cause,
                vcpu: p.vcpu,
                detail: p.detail,
                frozen: frozen.summary(),
            },
        );
    }

    /// Records a failure: the first of this generation freezes the guest and is reported
    /// once every vCPU has stopped. Returns whether this was the first.
    pub(crate) fn fail(&self, cause: FailureCause, vcpu: Option<u32>, detail: String) -> bool {
        let mut ctl = self.ctl.lock();
        if ctl.failed || ctl.mode == Mode::Stopping {
            tracing::debug!(
                guest = self.ctx.id,
                cause = cause.name(),
                %detail,
                "failure ignored: the guest already failed or is stopping"
            );
            return false;
        }
        ctl.failed = true;
        let p = PendingFailure {
            cause,
            vcpu,
            detail,
        };
        if let Some(frozen) = ctl.frozen.clone() {
            // Already frozen (operator request while frozen): report with that snapshot.
            self.report_failure(p, &frozen);
        } else {
            ctl.pending = Some(p);
            self.request_pause(&mut ctl);
        }
        true
    }

    /// Waits (kicking) until the current pause is complete.
    fn wait_frozen<'a>(&'a self, mut ctl: MutexGuard<'a, Ctl>) -> Result<MutexGuard<'a, Ctl>> {
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut last_kick = Instant::now();
        while ctl.frozen.is_none() {
            if ctl.mode == Mode::Stopping {
                return Err(Error::Stopped {
                    guest: self.ctx.name().to_string(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::FreezeTimeout {
                    guest: self.ctx.name().to_string(),
                    stopped: self.stopped_count(&ctl),
                    total: self.vcpus,
                    timeout: FREEZE_TIMEOUT,
                });
            }
            if now - last_kick >= REKICK_INTERVAL {
                self.kick_all(&ctl);
                last_kick = now;
            }
            self.cv.wait_for(&mut ctl, REKICK_INTERVAL);
        }
        Ok(ctl)
    }

    pub(crate) fn freeze(&self) -> Result<FrozenState> {
        let mut ctl = self.ctl.lock();
        if ctl.mode == Mode::Stopping {
            return Err(Error::Stopped {
                guest: self.ctx.name().to_string(),
            });
        }
        self.request_pause(&mut ctl);
        let ctl = self.wait_frozen(ctl)?;
        Ok(ctl
            .frozen
            .clone()
            .expect("wait_frozen returns a frozen guest"))
    }

    pub(crate) fn resume(&self) -> Result<()> {
        let ctl = self.ctl.lock();
        match ctl.mode {
            Mode::Stopping => Err(Error::Stopped {
                guest: self.ctx.name().to_string(),
            }),
            Mode::Running => Ok(()),
            Mode::Paused => {
                // Let a freeze in progress (and its failure report) complete first.
                let mut ctl = self.wait_frozen(ctl)?;
                ctl.mode = Mode::Running;
                ctl.frozen = None;
                ctl.run_epoch += 1;
                self.pause.store(false, Ordering::SeqCst);
                self.cv.notify_all();
                tracing::info!(guest = self.ctx.id, name = %self.ctx.name(), "guest resumed");
                Ok(())
            }
        }
    }

    pub(crate) fn frozen_state(&self) -> Option<FrozenState> {
        self.ctl.lock().frozen.clone()
    }

    pub(crate) fn state(&self) -> GuestState {
        match self.ctl.lock().mode {
            Mode::Running => GuestState::Running,
            Mode::Paused => GuestState::Frozen,
            Mode::Stopping => GuestState::Stopped,
        }
    }

    /// `(running and not failed, run epoch)`, for the watchdog.
    pub(crate) fn watch_status(&self) -> (bool, u64, bool) {
        let ctl = self.ctl.lock();
        (
            ctl.mode == Mode::Running && !ctl.failed,
            ctl.run_epoch,
            ctl.mode == Mode::Stopping,
        )
    }

    /// Stops every thread of this generation and waits for them.
    pub(crate) fn shutdown(&self) {
        {
            let mut ctl = self.ctl.lock();
            if ctl.mode != Mode::Stopping {
                ctl.mode = Mode::Stopping;
                ctl.pending = None;
                self.pause.store(true, Ordering::SeqCst);
                self.kick_all(&ctl);
                self.cv.notify_all();
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let name = t.thread().name().unwrap_or("?").to_string();
            if t.join().is_err() {
                tracing::error!(guest = self.ctx.id, thread = %name, "guest thread panicked");
            }
        }
        self.flush_console();
    }

    /// Called by a vCPU thread when it starts.
    pub(crate) fn vcpu_started(&self, index: u32) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.ctl.lock().threads[index as usize] = Some(me);
    }

    /// Called by a vCPU thread just before it returns.
    pub(crate) fn vcpu_exited(&self, index: u32) {
        let mut ctl = self.ctl.lock();
        ctl.threads[index as usize] = None;
        ctl.exited[index as usize] = true;
        ctl.parked[index as usize] = None;
        self.maybe_complete(&mut ctl);
        self.cv.notify_all();
    }

    /// Parks the calling vCPU thread: records its registers, then waits. A vCPU stopped by
    /// a pause continues when the guest resumes; a halted or failed one stays parked until
    /// the generation stops.
    pub(crate) fn park(&self, index: u32, vcpu: &VcpuFd, activity: VcpuActivity) -> Flow {
        let state = capture(index, vcpu, activity);
        let i = index as usize;
        let mut ctl = self.ctl.lock();
        ctl.parked[i] = Some(state);
        self.maybe_complete(&mut ctl);
        loop {
            if ctl.mode == Mode::Stopping {
                ctl.parked[i] = None;
                return Flow::Stop;
            }
            if activity == VcpuActivity::Running && ctl.mode == Mode::Running {
                ctl.parked[i] = None;
                return Flow::Continue;
            }
            self.cv.wait(&mut ctl);
        }
    }

    /// Adds completed console lines to the guest's log and reports them.
    pub(crate) fn console_lines(&self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        {
            let mut log = self.ctx.console_log.lock();
            for l in &lines {
                if log.len() == CONSOLE_LOG_LINES {
                    log.pop_front();
                }
                log.push_back(l.clone());
            }
        }
        for text in lines {
            tracing::debug!(guest = self.ctx.id, name = %self.ctx.name(), console = %text);
            self.ctx.emit(self.generation, EventKind::Console { text });
        }
    }

    /// Reports a partial console line (before a failure report or at stop).
    fn flush_console(&self) {
        let line = self.console.lock().flush();
        if let Some(line) = line {
            self.console_lines(vec![line]);
        }
    }
}

/// The registers of a stopped vCPU.
fn capture(index: u32, vcpu: &VcpuFd, activity: VcpuActivity) -> VcpuState {
    let regs = vcpu.get_regs().unwrap_or_else(|e| {
        tracing::error!(vcpu = index, error = %e, "KVM_GET_REGS failed; reporting zeros");
        Default::default()
    });
    let sregs = vcpu.get_sregs().unwrap_or_else(|e| {
        tracing::error!(vcpu = index, error = %e, "KVM_GET_SREGS failed; reporting zeros");
        Default::default()
    });
    VcpuState {
        index,
        activity,
        regs,
        sregs,
    }
}

/// A guest: a cheap, clonable handle. The guest keeps running when handles are dropped,
/// until the last handle goes: that destroys it.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<GuestInner>,
}

struct CurrentInstance {
    generation: u32,
    instance: Option<Arc<Instance>>,
}

struct GuestInner {
    ctx: Arc<GuestCtx>,
    slot: Mutex<CurrentInstance>,
}

impl Drop for GuestInner {
    fn drop(&mut self) {
        let instance = self.slot.lock().instance.take();
        if let Some(i) = instance {
            i.shutdown();
        }
    }
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("generation", &self.generation())
            .field("state", &self.state())
            .finish()
    }
}

impl Guest {
    pub(crate) fn start(id: u64, config: GuestConfig, vmm: Arc<VmmShared>) -> Result<Guest> {
        let ctx = Arc::new(GuestCtx {
            id,
            config,
            vmm,
            console_log: Mutex::new(VecDeque::new()),
        });
        let instance = Instance::start(ctx.clone(), 0)?;
        Ok(Guest {
            inner: Arc::new(GuestInner {
                ctx,
                slot: Mutex::new(CurrentInstance {
                    generation: 0,
                    instance: Some(instance),
                }),
            }),
        })
    }

    fn instance(&self) -> Result<Arc<Instance>> {
        self.inner
            .slot
            .lock()
            .instance
            .clone()
            .ok_or_else(|| Error::Stopped {
                guest: self.name().to_string(),
            })
    }

    /// Unique (per process) id.
    pub fn id(&self) -> u64 {
        self.inner.ctx.id
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        self.inner.ctx.name()
    }

    /// The configuration the guest is built from.
    pub fn config(&self) -> &GuestConfig {
        &self.inner.ctx.config
    }

    /// The generation: 0 at start, bumped by every successful restart.
    pub fn generation(&self) -> u32 {
        self.inner.slot.lock().generation
    }

    /// Running, frozen or stopped.
    pub fn state(&self) -> GuestState {
        match self.instance() {
            Ok(i) => i.state(),
            Err(_) => GuestState::Stopped,
        }
    }

    /// Stops every vCPU of this guest (others are untouched) and returns their registers.
    /// Blocks until all have stopped ([`FREEZE_TIMEOUT`] at most). On a guest that is
    /// already frozen it returns the snapshot taken then, which is also the one of a
    /// failure event.
    pub fn freeze(&self) -> Result<FrozenState> {
        self.instance()?.freeze()
    }

    /// Lets a frozen guest run again (no-op when running). vCPUs that halted or failed
    /// stay stopped. The watchdog restarts its measurements.
    pub fn resume(&self) -> Result<()> {
        self.instance()?.resume()
    }

    /// An operator's request for diagnosis: freezes the guest and reports a `Failure` with
    /// cause `operator` (unless this generation already failed). Returns the snapshot.
    pub fn fail(&self, detail: impl Into<String>) -> Result<FrozenState> {
        let i = self.instance()?;
        i.fail(FailureCause::Operator, None, detail.into());
        i.freeze()
    }

    /// The snapshot of the current freeze, when the guest is frozen.
    pub fn frozen_state(&self) -> Option<FrozenState> {
        self.instance().ok()?.frozen_state()
    }

    /// Stops all threads of the guest and frees its VM. Memory exported earlier stays
    /// readable. Idempotent.
    pub fn destroy(&self) {
        let instance = self.inner.slot.lock().instance.take();
        if let Some(i) = instance {
            i.shutdown();
            tracing::info!(guest = self.id(), name = %self.name(), "guest destroyed");
        }
    }

    /// Destroys the current generation and boots a new one from the configuration: fresh
    /// RAM (a new memfd), a new VM, the kernel loaded again. Same id; the generation is
    /// bumped. If the new generation cannot be built the guest is left stopped.
    pub fn restart(&self) -> Result<()> {
        let mut slot = self.inner.slot.lock();
        if let Some(old) = slot.instance.take() {
            old.shutdown();
        }
        let generation = slot.generation + 1;
        let instance = Instance::start(self.inner.ctx.clone(), generation)?;
        slot.instance = Some(instance);
        slot.generation = generation;
        Ok(())
    }

    /// A read-only file descriptor of the current generation's RAM and its layout.
    pub fn memory_export(&self) -> Result<GuestRam> {
        self.instance()?.ram.export(self.name())
    }

    /// The latest accepted registration of this generation: the host's copy.
    pub fn registration(&self) -> Option<AcceptedDescriptor> {
        self.instance().ok()?.reg.lock().latest.clone()
    }

    /// The status a guest reads back from the registration doorbell.
    pub fn registration_status(&self) -> RegistrationStatus {
        match self.instance() {
            Ok(i) => i.reg.lock().status,
            Err(_) => RegistrationStatus::None,
        }
    }

    /// The heartbeat counter the guest registered, read now.
    pub fn heartbeat(&self) -> Option<u64> {
        let i = self.instance().ok()?;
        let gpa = i.reg.lock().latest.as_ref()?.descriptor.heartbeat_gpa;
        i.ram.load_u64(gpa)
    }

    /// The guest's work counter, read now: the `u64` it registered as the object root
    /// named [`WORK_ROOT`] (the test kernel's `WORK`, with `work=1`: units of a CPU-bound
    /// workload completed, not time), its guest-virtual address translated through the
    /// registered page tables. `None` before registration or without such a root.
    pub fn work_units(&self) -> Option<u64> {
        let i = self.instance().ok()?;
        let (va, root, levels) = {
            let reg = i.reg.lock();
            let d = &reg.latest.as_ref()?.descriptor;
            let r = d.roots.iter().find(|r| {
                r.name == WORK_ROOT && r.kind == RootKind::Object && r.element_size == 8
            })?;
            let levels = if d.flags & FLAG_LA57 != 0 { 5 } else { 4 };
            (r.address, d.page_table_root, levels)
        };
        i.ram.load_u64(i.ram.translate(root, va, levels)?)
    }

    /// Copies guest-physical memory into `buf`.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.instance()?
            .ram
            .read(gpa, buf)
            .ok_or_else(|| Error::OutOfRam {
                guest: self.name().to_string(),
                gpa,
                len: buf.len() as u64,
            })
    }

    /// Console lines so far, all generations, oldest first (the last
    /// [`CONSOLE_LOG_LINES`] are kept).
    pub fn console_lines(&self) -> Vec<String> {
        self.inner.ctx.console_log.lock().iter().cloned().collect()
    }
}
