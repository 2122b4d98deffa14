//! The capture seam: one guest, whoever runs it.
//!
//! A guest is run either by Ambulance's own VMM on KVM ([`Backend::Vmm`]) or by QEMU,
//! followed over QMP ([`Backend::Qemu`]). Everything the rest of Ambulance does to a
//! guest goes through a [`Backend`]: [`freeze`](Backend::freeze) it and take every
//! vCPU's registers, [`capture`](Backend::capture) what its diagnosis needs (a read-only
//! [`GuestRam`], what the guest registered at boot, who it is), then
//! [`resume`](Backend::resume), [`restart`](Backend::restart) or
//! [`destroy`](Backend::destroy) it. The daemon's supervisor, its operator commands and
//! recovery policies, `ambulance run` and `ambulance attach` all use this one seam.
//!
//! A [`Capture`] becomes a diagnosis [`Subject`] once the daemon has given the report its
//! id ([`Capture::subject`]).

#![forbid(unsafe_code)]

pub mod qemu;
pub mod vmm;

use std::sync::Arc;
use std::time::Instant;

use ambulance_diagnose::{NoteAddress, Options, Subject};
use ambulance_ram::GuestRam;
use ambulance_report::{
    FailureInfo, GuestInfo, Phase, Report, ReportDir, ReportFiles, ReportId, VcpuRegisters,
};

pub use qemu::{QemuGuest, QemuStatus};

/// Why a guest could not be frozen, captured, resumed, restarted or destroyed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The VMM refused or failed.
    #[error(transparent)]
    Vmm(#[from] ambulance_vmm::Error),
    /// QEMU refused or failed, or its connection is gone.
    #[error(transparent)]
    Qemu(#[from] ambulance_qemu::Error),
    /// A QEMU guest that is not connected.
    #[error("guest {guest}: not connected to QEMU ({why})")]
    NotConnected {
        /// The guest.
        guest: String,
        /// Why, as last seen.
        why: String,
    },
    /// QEMU did not leave a state it should have left.
    #[error("guest {guest}: {what}")]
    Stuck {
        /// The guest.
        guest: String,
        /// What did not happen.
        what: String,
    },
    /// The diagnosis of a capture in this process failed.
    #[error(transparent)]
    Diagnose(#[from] ambulance_diagnose::Error),
    /// Its report could not be written.
    #[error(transparent)]
    Report(#[from] ambulance_report::Error),
    /// A blocking VMM operation could not finish.
    #[error("guest {guest}: the {op} task ended abnormally: {why}")]
    Task {
        /// The guest.
        guest: String,
        /// The operation.
        op: &'static str,
        /// Why.
        why: String,
    },
}

/// Results of this crate.
pub type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// A guest, and who runs it.
#[derive(Clone)]
pub enum Backend {
    /// A guest of Ambulance's VMM (KVM).
    Vmm(ambulance_vmm::Guest),
    /// A guest QEMU runs, followed over QMP.
    Qemu(Arc<QemuGuest>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Vmm(g) => write!(f, "Backend::Vmm({} #{})", g.name(), g.id()),
            Backend::Qemu(g) => write!(f, "Backend::Qemu({})", g.name()),
        }
    }
}

/// A frozen guest's registers.
#[derive(Clone, Debug)]
pub struct Frozen {
    /// Every vCPU's registers, as the report shows them.
    pub vcpus: Vec<VcpuRegisters>,
    /// How long freezing took, in microseconds.
    pub freeze_us: u64,
    /// Whether the guest was running before (an operator's diagnosis resumes it after).
    pub was_running: bool,
}

/// What a guest told the host at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registered {
    /// An Ambulance descriptor (ABI v1): the host's copy, taken at the doorbell.
    Descriptor {
        /// Where the guest keeps it (guest-physical).
        gpa: u64,
        /// The bytes as copied.
        bytes: Vec<u8>,
    },
    /// The Linux agent: where the kernel's VMCOREINFO note is.
    LinuxAgent {
        /// The note's guest-physical address and buffer size.
        note: NoteAddress,
        /// The kernel release the agent reported.
        release: String,
    },
}

/// Everything a diagnosis of a frozen guest needs.
#[derive(Debug)]
pub struct Capture {
    /// Who the guest is.
    pub guest: GuestInfo,
    /// Why it is diagnosed.
    pub failure: FailureInfo,
    /// Every vCPU's registers as frozen.
    pub vcpus: Vec<VcpuRegisters>,
    /// Its RAM, read-only.
    pub ram: GuestRam,
    /// What it registered at boot, if anything.
    pub registered: Option<Registered>,
    /// How long freezing took, in microseconds.
    pub freeze_us: u64,
    /// Whether it ran before it was frozen.
    pub was_running: bool,
}

impl Capture {
    /// The diagnosis subject, for a report with id `report_id`.
    pub fn subject(&self, report_id: ReportId) -> Subject {
        let (descriptor_gpa, descriptor_bytes, vmcoreinfo_note) = match &self.registered {
            Some(Registered::Descriptor { gpa, bytes }) => (Some(*gpa), Some(bytes.clone()), None),
            Some(Registered::LinuxAgent { note, .. }) => (None, None, Some(*note)),
            None => (None, None, None),
        };
        Subject {
            report_id,
            guest: self.guest.clone(),
            failure: self.failure.clone(),
            vcpus: self.vcpus.clone(),
            descriptor_gpa,
            descriptor_bytes,
            vmcoreinfo: None,
            vmcoreinfo_origin: None,
            vmcoreinfo_note,
            core_problems: Vec::new(),
        }
    }

    /// The timeline so far: how long freezing took.
    pub fn timeline(&self) -> Vec<Phase> {
        vec![Phase {
            name: "freeze".into(),
            duration_us: self.freeze_us,
        }]
    }

    /// Diagnoses the capture in this process (`ambulance run`, `ambulance attach`, tests;
    /// the daemon diagnoses in a worker process instead) under a newly minted report id
    /// and, given `dir`, writes the report there — with the guest's ELF core when
    /// `want_core`.
    pub fn diagnose_here(
        &self,
        options: &Options,
        dir: Option<&ReportDir>,
        want_core: bool,
    ) -> Result<(Report, Option<ReportFiles>)> {
        let id = ReportId::mint(&self.guest.name, self.failure.time);
        let core = dir.filter(|_| want_core).map(|d| d.core_temp(&id));
        let subject = self.subject(id);
        let mut report = ambulance_diagnose::diagnose_ram(
            &self.ram,
            &subject,
            options,
            self.timeline(),
            core.as_deref()
                .map(ambulance_diagnose::core::CoreOutput::Create),
        )?;
        let files = match dir {
            Some(d) => Some(d.write(&mut report, core.as_deref())?),
            None => None,
        };
        Ok((report, files))
    }
}

/// The report's view of an operator's request for a diagnosis of a healthy guest.
pub fn operator_failure(detail: &str) -> FailureInfo {
    FailureInfo {
        cause: "operator".into(),
        detail: detail.into(),
        time: ambulance_report::now(),
        vcpu: None,
        data: Default::default(),
    }
}

impl Backend {
    /// The guest's name.
    pub fn name(&self) -> String {
        match self {
            Backend::Vmm(g) => g.name().to_string(),
            Backend::Qemu(g) => g.name(),
        }
    }

    /// Freezes the guest — every vCPU stopped — unless it is frozen already (a VMM guest
    /// after a failure, a QEMU guest paused on a panic), and takes every vCPU's
    /// registers.
    pub async fn freeze(&self) -> Result<Frozen> {
        match self {
            Backend::Vmm(g) => {
                let g = g.clone();
                let name = self.name();
                tokio::task::spawn_blocking(move || vmm::freeze(&g))
                    .await
                    .map_err(|e| CaptureError::Task {
                        guest: name,
                        op: "freeze",
                        why: e.to_string(),
                    })?
            }
            Backend::Qemu(g) => g.freeze().await,
        }
    }

    /// Captures the frozen guest for diagnosis of `failure`.
    pub fn capture(&self, failure: FailureInfo, frozen: Frozen) -> Result<Capture> {
        let t = Instant::now();
        let mut c = match self {
            Backend::Vmm(g) => vmm::capture(g, failure, frozen)?,
            Backend::Qemu(g) => g.capture(failure, frozen)?,
        };
        tracing::debug!(
            guest = self.name(),
            us = t.elapsed().as_micros() as u64,
            "captured"
        );
        c.vcpus.sort_by_key(|v| v.vcpu);
        Ok(c)
    }

    /// Lets a frozen guest run on.
    pub async fn resume(&self) -> Result<()> {
        match self {
            Backend::Vmm(g) => Ok(g.resume()?),
            Backend::Qemu(g) => g.resume().await,
        }
    }

    /// Boots the guest's current image again: a VMM guest gets a fresh VM (same image,
    /// next generation); a QEMU guest is reset (`system_reset`) and run.
    pub async fn restart(&self) -> Result<()> {
        match self {
            Backend::Vmm(g) => {
                let g = g.clone();
                let name = self.name();
                tokio::task::spawn_blocking(move || g.restart())
                    .await
                    .map_err(|e| CaptureError::Task {
                        guest: name,
                        op: "restart",
                        why: e.to_string(),
                    })??;
                Ok(())
            }
            Backend::Qemu(g) => g.restart().await,
        }
    }

    /// Stops the guest for good: a VMM guest's VM is freed; QEMU is asked to quit.
    pub async fn destroy(&self) -> Result<()> {
        match self {
            Backend::Vmm(g) => {
                g.destroy();
                Ok(())
            }
            Backend::Qemu(g) => g.quit().await,
        }
    }

    /// Whether the running kernel registered.
    pub fn registered(&self) -> bool {
        match self {
            Backend::Vmm(g) => g.registration().is_some(),
            Backend::Qemu(g) => g.registration().is_some(),
        }
    }
}
