//! Counters behind `GET /metrics` (Prometheus text format).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds of the diagnosis duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Inner {
    failures: BTreeMap<String, u64>,
    diagnoses_failed: u64,
    alerts_failed: u64,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The daemon's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// A guest failed with `cause`.
    pub fn failure(&self, cause: &str) {
        *self
            .inner
            .lock()
            .failures
            .entry(cause.to_string())
            .or_default() += 1;
    }

    /// A diagnosis ended (with or without a report) after `d`.
    pub fn diagnosis(&self, d: Duration, ok: bool) {
        let mut m = self.inner.lock();
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                m.buckets[i] += 1;
            }
        }
        m.sum += s;
        m.count += 1;
        if !ok {
            m.diagnoses_failed += 1;
        }
    }

    /// A webhook was given up.
    pub fn alert_failed(&self) {
        self.inner.lock().alerts_failed += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(
        &self,
        guests_by_state: &BTreeMap<&'static str, u64>,
        reports_stored: u64,
    ) -> String {
        let m = self.inner.lock();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP ambulance_guests Supervised guests by state.");
        let _ = writeln!(out, "# TYPE ambulance_guests gauge");
        for (state, n) in guests_by_state {
            let _ = writeln!(out, "ambulance_guests{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ambulance_failures_total Guest failures by cause."
        );
        let _ = writeln!(out, "# TYPE ambulance_failures_total counter");
        for (cause, n) in &m.failures {
            let _ = writeln!(out, "ambulance_failures_total{{cause=\"{cause}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ambulance_diagnosis_duration_seconds From the failure to the stored report."
        );
        let _ = writeln!(out, "# TYPE ambulance_diagnosis_duration_seconds histogram");
        for (b, n) in BUCKETS.iter().zip(m.buckets.iter()) {
            let _ = writeln!(
                out,
                "ambulance_diagnosis_duration_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "ambulance_diagnosis_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.count
        );
        let _ = writeln!(out, "ambulance_diagnosis_duration_seconds_sum {}", m.sum);
        let _ = writeln!(
            out,
            "ambulance_diagnosis_duration_seconds_count {}",
            m.count
        );
        let _ = writeln!(
            out,
            "# HELP ambulance_diagnoses_failed_total Diagnoses that produced no report."
        );
        let _ = writeln!(out, "# TYPE ambulance_diagnoses_failed_total counter");
        let _ = writeln!(
            out,
            "ambulance_diagnoses_failed_total {}",
            m.diagnoses_failed
        );
        let _ = writeln!(out, "# HELP ambulance_reports_stored Reports in the store.");
        let _ = writeln!(out, "# TYPE ambulance_reports_stored gauge");
        let _ = writeln!(out, "ambulance_reports_stored {reports_stored}");
        let _ = writeln!(
            out,
            "# HELP ambulance_alerts_failed_total Webhook alerts given up."
        );
        let _ = writeln!(out, "# TYPE ambulance_alerts_failed_total counter");
        let _ = writeln!(out, "ambulance_alerts_failed_total {}", m.alerts_failed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.failure("panic");
        m.failure("panic");
        m.diagnosis(Duration::from_millis(30), true);
        m.diagnosis(Duration::from_secs(2), false);
        let states = BTreeMap::from([("running", 2u64), ("held", 1)]);
        let t = m.render(&states, 1);
        assert!(t.contains("ambulance_guests{state=\"running\"} 2"), "{t}");
        assert!(
            t.contains("ambulance_failures_total{cause=\"panic\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("ambulance_diagnosis_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ambulance_diagnosis_duration_seconds_bucket{le=\"2.5\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("ambulance_diagnosis_duration_seconds_count 2"),
            "{t}"
        );
        assert!(t.contains("ambulance_diagnoses_failed_total 1"), "{t}");
        assert!(t.contains("ambulance_reports_stored 1"), "{t}");
    }
}
