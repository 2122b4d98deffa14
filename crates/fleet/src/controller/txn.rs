//! Transactions: an operator's request for one host gets an id, is checked against the
//! fixed vocabulary and the registry, stored create-only (`cmd.<host>.<txn>`), and its id
//! queued on the host's work queue. The host writes the result under the same id. When
//! the deadline passes before the host took it, the controller writes `expired`
//! create-only — so either the host's claim or the expiry wins, never both.

use std::sync::Arc;
use std::time::Duration;

use ambulance_report::Timestamp;
use bytes::Bytes;
use futures_util::StreamExt;

use super::Controller;
use crate::engine::{self, Written};
use crate::error::{FleetError, Result};
use crate::model::{Transaction, TxnRequest, TxnResult, TxnStatus, TxnView};
use crate::names;

/// The longest deadline a transaction may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long past its deadline a caller waits for a transaction the host took.
const RUN_GRACE: Duration = Duration::from_secs(600);

pub(super) fn spawn_sweeper(ctl: &Arc<Controller>) {
    let c = ctl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = ambulance_report::now();
            let due: Vec<(String, String, Timestamp)> = c
                .pending
                .lock()
                .iter()
                .filter(|(_, (_, d))| *d <= now)
                .map(|(t, (h, d))| (t.clone(), h.clone(), *d))
                .collect();
            for (txn, host, deadline) in due {
                match c.expire(&host, &txn, deadline).await {
                    Ok(_) => {
                        c.pending.lock().remove(&txn);
                    }
                    Err(e) => tracing::debug!(txn, "cannot expire yet: {e}"),
                }
            }
        }
    });
}

fn terminal(s: TxnStatus) -> bool {
    !matches!(s, TxnStatus::Pending | TxnStatus::Running)
}

impl Controller {
    /// Rebuilds the map of transactions (and the pending ones) from the bucket.
    pub(super) async fn load_transactions(&self) -> Result<()> {
        let store = self
            .js
            .get_key_value(names::TXN_BUCKET)
            .await
            .map_err(|e| FleetError::engine("cannot open the transactions bucket", e))?;
        let mut keys = store
            .keys()
            .await
            .map_err(|e| FleetError::engine("cannot list transactions", e))?;
        let mut cmds = Vec::new();
        let mut results = std::collections::HashSet::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| FleetError::engine("cannot list transactions", e))?;
            let parts: Vec<&str> = k.splitn(3, '.').collect();
            if let [kind, host, txn] = parts[..] {
                match kind {
                    "cmd" => cmds.push((host.to_string(), txn.to_string())),
                    "res" => {
                        results.insert(txn.to_string());
                    }
                    _ => {}
                }
            }
        }
        for (host, txn) in cmds {
            self.txns.lock().insert(txn.clone(), host.clone());
            if !results.contains(&txn) {
                if let Ok(Some(t)) = self.read_txn(&host, &txn).await {
                    self.pending.lock().insert(txn, (host, t.deadline));
                }
            }
        }
        Ok(())
    }

    async fn read_txn(&self, host: &str, txn: &str) -> Result<Option<Transaction>> {
        let Some((b, _)) =
            engine::kv_read(&self.client, names::TXN_BUCKET, &names::txn_key(host, txn)).await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| FleetError::Engine(format!("transaction {txn} is unreadable: {e}")))
    }

    async fn read_result(&self, host: &str, txn: &str) -> Result<Option<TxnResult>> {
        let Some((b, _)) = engine::kv_read(
            &self.client,
            names::TXN_BUCKET,
            &names::result_key(host, txn),
        )
        .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| FleetError::Engine(format!("result of {txn} is unreadable: {e}")))
    }

    /// Checks and stores a transaction and queues its id for the host. Nothing is stored
    /// when it is refused.
    pub async fn create_transaction(&self, req: &TxnRequest) -> Result<Transaction> {
        names::check("host id", &req.host)?;
        let record = self.host_record(&req.host).await.ok_or_else(|| {
            FleetError::NotFound(format!(
                "unknown host {:?}: no such host is enrolled",
                req.host
            ))
        })?;
        if let Some(s) = &req.subscriber {
            if *s != record.subscriber {
                return Err(FleetError::Invalid(format!(
                    "host {} is subscriber {:?}'s, not {s:?}'s",
                    req.host, record.subscriber
                )));
            }
        }
        if record.revoked {
            return Err(FleetError::Conflict(format!(
                "host {} is revoked; it takes no transactions",
                req.host
            )));
        }
        if req.instructions.is_empty() || req.instructions.len() > 16 {
            return Err(FleetError::Invalid(
                "a transaction has 1 to 16 instructions".into(),
            ));
        }
        for i in &req.instructions {
            let g = i.guest();
            if g.is_empty() || g.len() > 64 || g.chars().any(|c| c.is_control()) {
                return Err(FleetError::Invalid(format!(
                    "{}: guest {g:?} is not a guest name",
                    i.op()
                )));
            }
            if let crate::model::Instruction::Repurpose {
                role,
                digest,
                register_timeout_ms,
                ..
            } = i
            {
                names::check("role", role)?;
                names::check_digest(digest)?;
                if register_timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT.as_millis() as u64)
                {
                    return Err(FleetError::Invalid(format!(
                        "repurpose: register_timeout_ms must be 1..={}",
                        MAX_TIMEOUT.as_millis()
                    )));
                }
            }
        }
        let timeout = req
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.cfg.command_timeout);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(FleetError::Invalid(format!(
                "timeout_ms must be 1..={}",
                MAX_TIMEOUT.as_millis()
            )));
        }
        let now = ambulance_report::now();
        let deadline =
            Timestamp::from_millisecond(now.as_millisecond() + timeout.as_millis() as i64)
                .map_err(|e| FleetError::Invalid(format!("deadline: {e}")))?;
        let txn = names::new_txn_id();
        let t = Transaction {
            txn: txn.clone(),
            subscriber: record.subscriber.clone(),
            host: req.host.clone(),
            instructions: req.instructions.clone(),
            created: now,
            deadline,
        };
        let body = Bytes::from(serde_json::to_vec(&t).unwrap_or_default());
        match engine::kv_write(
            &self.js,
            names::TXN_BUCKET,
            &names::txn_key(&req.host, &txn),
            body,
            0,
        )
        .await?
        {
            Written::Stored(_) => {}
            Written::Conflict => {
                return Err(FleetError::Conflict(format!(
                    "transaction {txn} exists already"
                )))
            }
        }
        self.txns.lock().insert(txn.clone(), req.host.clone());
        if let Err(e) = engine::publish_once(
            &self.js,
            &names::work_subject(&req.host),
            &txn,
            Bytes::from(txn.clone()),
        )
        .await
        {
            // Stored but not queued: end it now, so it cannot run later by surprise.
            let r = TxnResult {
                txn: txn.clone(),
                host: req.host.clone(),
                status: TxnStatus::Failed,
                started: None,
                finished: Some(ambulance_report::now()),
                steps: Vec::new(),
                error: Some(format!("could not be queued for the host: {e}")),
            };
            let _ = self.write_result(&r).await;
            return Err(e);
        }
        self.pending
            .lock()
            .insert(txn.clone(), (req.host.clone(), deadline));
        tracing::info!(txn, host = req.host, instructions = t.instructions.len(), %deadline, "transaction stored");
        Ok(t)
    }

    async fn write_result(&self, r: &TxnResult) -> Result<Written> {
        engine::kv_write(
            &self.js,
            names::TXN_BUCKET,
            &names::result_key(&r.host, &r.txn),
            Bytes::from(serde_json::to_vec(r).unwrap_or_default()),
            0,
        )
        .await
    }

    /// Ends a transaction whose deadline passed before its host took it (create-only:
    /// when the host claimed it first, nothing changes). Whether it expired now.
    async fn expire(&self, host: &str, txn: &str, deadline: Timestamp) -> Result<bool> {
        let (available, seen) = self.availability(host);
        let why = match (available, seen) {
            (true, _) => format!(
                "host {host} did not take transaction {txn} before its deadline {deadline} \
                 (it is available, but did not get to it)"
            ),
            (false, Some(t)) => format!(
                "host {host} did not take transaction {txn} before its deadline {deadline}: \
                 it is unavailable (its last health was at {t}, older than the {} ms TTL); \
                 not run",
                self.cfg.health_ttl.as_millis()
            ),
            (false, None) => format!(
                "host {host} did not take transaction {txn} before its deadline {deadline}: \
                 it has not published its health since this controller started; not run"
            ),
        };
        let r = TxnResult {
            txn: txn.to_string(),
            host: host.to_string(),
            status: TxnStatus::Expired,
            started: None,
            finished: Some(ambulance_report::now()),
            steps: Vec::new(),
            error: Some(why),
        };
        Ok(matches!(self.write_result(&r).await?, Written::Stored(_)))
    }

    /// A transaction and where it is.
    pub async fn transaction(&self, txn: &str) -> Result<TxnView> {
        if !names::valid_txn_id(txn) {
            return Err(FleetError::Invalid(format!(
                "{txn:?} is not a transaction id"
            )));
        }
        let host = self
            .txns
            .lock()
            .get(txn)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("no transaction {txn}")))?;
        let t = self
            .read_txn(&host, txn)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no transaction {txn}")))?;
        let result = self.read_result(&host, txn).await?;
        Ok(TxnView {
            status: result
                .as_ref()
                .map(|r| r.status)
                .unwrap_or(TxnStatus::Pending),
            transaction: t,
            result,
        })
    }

    /// Waits until the transaction ended: its result, or — its deadline passed before
    /// the host took it — its expiry; a transaction the host took is waited for a while
    /// longer (it is running).
    pub async fn wait_transaction(&self, txn: &str) -> Result<TxnView> {
        let mut view = self.transaction(txn).await?;
        let deadline = view.transaction.deadline;
        let give_up =
            Timestamp::from_millisecond(deadline.as_millisecond() + RUN_GRACE.as_millis() as i64)
                .unwrap_or(deadline);
        loop {
            if terminal(view.status) {
                self.pending.lock().remove(txn);
                return Ok(view);
            }
            let now = ambulance_report::now();
            if now >= deadline && view.status == TxnStatus::Pending {
                let host = view.transaction.host.clone();
                self.expire(&host, txn, deadline).await?;
            } else if now >= give_up {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            view = self.transaction(txn).await?;
        }
    }
}
