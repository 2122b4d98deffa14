//! Alerts: one structured log line per failure, and a webhook POST per failure to each
//! configured URL, retried with exponential backoff in background tasks that never block
//! a diagnosis.

use std::sync::Arc;
use std::time::Duration;

use ambulance_report::{ReportId, Timestamp};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::client::{request, Endpoint, HttpUrl};
use crate::config::AlertConfig;
use crate::metrics::Metrics;

/// What a webhook receives (as JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// The guest's name.
    pub guest: String,
    /// The failure cause.
    pub cause: String,
    /// When it failed.
    pub time: Timestamp,
    /// The report id (also for failed diagnoses).
    pub report_id: ReportId,
    /// Where to fetch the report.
    pub report_url: String,
    /// `ok` or `diagnosis_failed`.
    pub status: String,
    /// Why the diagnosis failed.
    pub error: Option<String>,
    /// The most severe finding.
    pub worst: Option<String>,
    /// What happens to the guest next (its policy).
    pub policy: String,
}

/// Starts the alert dispatcher; send alerts into the returned channel.
pub fn spawn(config: AlertConfig, metrics: Arc<Metrics>) -> mpsc::UnboundedSender<Alert> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Alert>();
    tokio::spawn(async move {
        while let Some(alert) = rx.recv().await {
            let body = match serde_json::to_vec(&alert) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot encode an alert: {e}");
                    continue;
                }
            };
            for url in &config.webhooks {
                let (url, body, metrics) = (url.clone(), body.clone(), metrics.clone());
                let (attempts, backoff) = (config.attempts, config.backoff);
                tokio::spawn(async move {
                    if !deliver(&url, body, attempts, backoff).await {
                        metrics.alert_failed();
                    }
                });
            }
        }
    });
    tx
}

/// POSTs `body` to `url` until a 2xx answer or `attempts` tries; true on success.
async fn deliver(url: &str, body: Vec<u8>, attempts: u32, backoff: Duration) -> bool {
    let parsed = match HttpUrl::parse(url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(url, "webhook not sent: {e}");
            return false;
        }
    };
    let endpoint = Endpoint::Tcp {
        authority: parsed.authority.clone(),
        token: None,
        tls: None,
    };
    let mut delay = backoff;
    for attempt in 1..=attempts {
        let outcome = request(
            &endpoint,
            "POST",
            &parsed.path,
            Some(body.clone()),
            "*/*",
            Duration::from_secs(10),
        )
        .await;
        match outcome {
            Ok(r) if (200..300).contains(&r.status) => {
                tracing::debug!(url, attempt, "webhook delivered");
                return true;
            }
            Ok(r) => tracing::warn!(url, attempt, status = r.status, "webhook refused"),
            Err(e) => tracing::warn!(url, attempt, "webhook failed: {e}"),
        }
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(Duration::from_secs(300));
        }
    }
    tracing::error!(url, attempts, "webhook given up");
    false
}
