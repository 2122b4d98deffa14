//! Diagnosis jobs: a failure is accepted (and its report id minted) here, captured at
//! once, queued for a worker slot, diagnosed in a worker process, stored — as a report or
//! as a failed diagnosis under the same id — and alerted; then the guest's policy runs.

use std::sync::Arc;
use std::time::Instant;

use ambulance_capture::{Backend, Capture, CaptureError, Frozen};
use ambulance_report::{FailureInfo, ReportId};

use super::{Notice, Service, State};
use crate::alerts::Alert;
use crate::store::{IndexEntry, Status};
use crate::worker;

/// An accepted failure: the guest, its report id, and — once captured — its state.
pub(crate) struct Job {
    pub(crate) guest: String,
    pub(crate) report_id: ReportId,
    pub(crate) failure: FailureInfo,
    pub(crate) backend: Backend,
    /// The registers, when the guest was frozen as the failure was reported (the VMM
    /// freezes before it reports); otherwise the job freezes the guest itself.
    pub(crate) frozen: Option<Frozen>,
    /// An operator's diagnosis: no alert and no policy after it.
    pub(crate) operator: bool,
}

impl Job {
    /// A job for `failure` of the guest `guest` that `backend` runs.
    pub(crate) fn new(
        guest: &str,
        failure: FailureInfo,
        backend: Backend,
        frozen: Option<Frozen>,
        operator: bool,
    ) -> Job {
        Job {
            guest: guest.to_string(),
            report_id: ReportId::mint(guest, failure.time),
            failure,
            backend,
            frozen,
            operator,
        }
    }

    /// Freezes the guest (unless it was frozen with the failure) and captures it.
    pub(crate) async fn capture(&mut self) -> Result<Capture, CaptureError> {
        let frozen = match self.frozen.take() {
            Some(f) => f,
            None => self.backend.freeze().await?,
        };
        self.backend.capture(self.failure.clone(), frozen)
    }
}

impl Service {
    /// A guest failed: record it, and queue its diagnosis — or keep it for after an
    /// operator's diagnosis that has the guest frozen, or drop it when the guest is not
    /// running (a second failure of a guest already being handled).
    pub(crate) fn accept_failure(
        self: &Arc<Self>,
        name: &str,
        failure: FailureInfo,
        frozen: Option<Frozen>,
    ) {
        self.metrics.failure(&failure.cause);
        let job = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            let Some(backend) = slot.backend.clone() else {
                return;
            };
            slot.failures += 1;
            slot.last_failure = Some(failure.cause.clone());
            let job = Job::new(name, failure, backend, frozen, false);
            let _ = self.notices.send(Notice::Failure {
                guest: name.to_string(),
                report_id: job.report_id.clone(),
                cause: job.failure.cause.clone(),
                time: job.failure.time,
                detail: job.failure.detail.clone(),
            });
            if slot.operator_diagnosis {
                slot.pending = Some(job);
                return;
            }
            if !matches!(slot.state, State::Running | State::Maintenance) {
                tracing::warn!(
                    guest = name,
                    state = slot.state.name(),
                    cause = job.failure.cause,
                    "failure while not running; not diagnosed again"
                );
                return;
            }
            slot.state = State::Queued;
            job
        };
        self.runtime.spawn(self.clone().run_job(job));
    }

    /// A failure's whole handling: capture now (the guest's state as it failed), wait for
    /// a diagnosis slot, diagnose and store, alert, apply the policy.
    pub(crate) async fn run_job(self: Arc<Self>, mut job: Job) {
        let capture = job.capture().await;
        let permit = self.permits.clone().acquire_owned().await;
        let svc = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let entry = svc.diagnose_and_store(&job, capture);
            drop(permit);
            (job, entry)
        })
        .await;
        let (job, entry) = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("the diagnosis task ended abnormally: {e}");
                return;
            }
        };
        self.after_diagnosis(&job.guest, &job.failure.cause, entry.as_ref(), job.operator);
        if !job.operator {
            self.apply_policy(&job.guest).await;
        }
    }

    /// Runs the worker on a captured guest and stores what comes out: the report, or —
    /// under the same id — why there is none. Blocks for the diagnosis.
    pub(crate) fn diagnose_and_store(
        &self,
        job: &Job,
        capture: Result<Capture, CaptureError>,
    ) -> Option<IndexEntry> {
        let started = Instant::now();
        let (debuginfo, rules, want_core) = {
            let mut slots = self.slots.lock();
            let slot = slots.get_mut(&job.guest)?;
            slot.state = State::Diagnosing;
            let debuginfo = match slot.spec.qemu() {
                Some(q) => q.debuginfo.clone(),
                None => slot.spec.vmm().map(|v| v.image(slot.image).path.clone()),
            };
            (debuginfo, slot.spec.rules.clone(), slot.spec.core)
        };
        let id = &job.report_id;
        let core_tmp = want_core.then(|| self.store.core_temp(id));
        let result = match capture {
            Err(e) => Err(format!("cannot capture the guest: {e}")),
            Ok(capture) => {
                let request = worker::Request {
                    subject: capture.subject(id.clone()),
                    regions: capture.ram.regions().to_vec(),
                    debuginfo,
                    rules,
                    core_path: core_tmp.clone(),
                    timeline: capture.timeline(),
                };
                worker::run(
                    &self.worker_program,
                    &self.limits,
                    &request,
                    &capture.ram,
                    |pid| {
                        if let Some(s) = self.slots.lock().get_mut(&job.guest) {
                            s.worker_pid = Some(pid);
                        }
                    },
                )
            }
        };
        if let Some(s) = self.slots.lock().get_mut(&job.guest) {
            s.worker_pid = None;
        }
        let failed = |why: &str| {
            self.store
                .store_failure(id, &job.guest, &job.failure.cause, job.failure.time, why)
        };
        let stored = match result {
            Ok(mut report) => {
                let t = Instant::now();
                let entry = self.store.store_report(&mut report, core_tmp.as_deref());
                tracing::debug!(us = t.elapsed().as_micros() as u64, "report stored");
                entry.or_else(|e| failed(&format!("cannot store the report: {e}")))
            }
            Err(why) => {
                if let Some(p) = &core_tmp {
                    let _ = std::fs::remove_file(p);
                }
                failed(&why)
            }
        };
        match stored {
            Ok(entry) => {
                self.metrics
                    .diagnosis(started.elapsed(), entry.status == Status::Ok);
                if let Some(s) = self.slots.lock().get_mut(&job.guest) {
                    s.last_report = Some(entry.id.clone());
                }
                let _ = self
                    .notices
                    .send(Notice::Diagnosed(Box::new(entry.clone())));
                Some(entry)
            }
            Err(e) => {
                self.metrics.diagnosis(started.elapsed(), false);
                tracing::error!(guest = job.guest, "cannot record the diagnosis: {e}");
                None
            }
        }
    }

    /// Logs the diagnosis and, for a failure (not an operator's request), alerts.
    pub(crate) fn after_diagnosis(
        &self,
        name: &str,
        cause: &str,
        entry: Option<&IndexEntry>,
        operator: bool,
    ) {
        let policy = self
            .slots
            .lock()
            .get(name)
            .map(|s| s.spec.policy.name())
            .unwrap_or("-");
        let Some(entry) = entry else { return };
        let worst = entry.severity.worst.map(|s| s.to_string());
        tracing::warn!(
            guest = name,
            cause,
            report = %entry.id,
            status = ?entry.status,
            worst = worst.as_deref().unwrap_or("none"),
            error = entry.error.as_deref().unwrap_or(""),
            policy = if operator { "resume" } else { policy },
            "guest failure diagnosed"
        );
        if operator {
            return;
        }
        let base = self
            .config
            .alerts
            .report_base_url
            .clone()
            .unwrap_or_else(|| match self.config.api.tcp {
                Some(a) => format!("http://{a}"),
                None => format!("unix:{}:", self.config.api.socket.display()),
            });
        let _ = self.alerts.send(Alert {
            guest: name.to_string(),
            cause: cause.to_string(),
            time: entry.time,
            report_id: entry.id.clone(),
            report_url: format!("{}/v1/reports/{}", base.trim_end_matches('/'), entry.id),
            status: match entry.status {
                Status::Ok => "ok".into(),
                Status::DiagnosisFailed => "diagnosis_failed".into(),
            },
            error: entry.error.clone(),
            worst,
            policy: policy.to_string(),
        });
    }
}
