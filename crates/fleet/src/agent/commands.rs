//! Operators' transactions, at most once.
//!
//! The host long-polls its own durable work-queue consumer (a pull request outstanding
//! is its availability to work); a message there is a transaction id. The host reads the
//! instructions stored under that id, claims the transaction by creating its result
//! create-only (`running`; the controller creates `expired` the same way when the
//! deadline passes first, so exactly one of the two wins), records in its ledger that it
//! started, runs the instructions, records the result, publishes it under the same id,
//! and only then acknowledges the message. A transaction delivered again — by the engine
//! after a lost acknowledgement, or twice by anyone — finds its ledger record and is not
//! run again: its recorded result is published again, or, when the host stopped while
//! running it, an `interrupted` result.

use std::sync::Arc;
use std::time::Duration;

use ambulance_report::Timestamp;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;

use super::ledger::TxnRecord;
use super::Agent;
use crate::engine::{self, Written};
use crate::error::{FleetError, Result};
use crate::model::{
    FleetEntry, Instruction, ReleaseAction, StepResult, Transaction, TxnResult, TxnStatus,
};
use crate::names;

/// How long one pull request waits for work.
const LONG_POLL: Duration = Duration::from_secs(20);

impl Agent {
    pub(super) async fn command_loop(self: Arc<Self>, client: Client) -> Result<()> {
        let js = engine::jetstream(&client);
        let mut delay = Duration::from_millis(200);
        loop {
            let consumer: pull::Batch = match js
                .get_consumer_from_stream::<pull::Config, _, _>(
                    names::work_consumer(self.host()),
                    names::WORK_STREAM,
                )
                .await
            {
                Ok(c) => {
                    delay = Duration::from_millis(200);
                    match c
                        .batch()
                        .max_messages(1)
                        .expires(LONG_POLL)
                        .messages()
                        .await
                    {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::debug!("fleet: work queue: {e}");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("fleet: cannot reach this host's work queue yet: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                    continue;
                }
            };
            let mut batch = consumer;
            while let Some(m) = batch.next().await {
                match m {
                    Ok(msg) => {
                        if let Err(e) = self.take(&client, &js, &msg).await {
                            tracing::warn!(
                                host = self.host(),
                                "fleet: transaction not finished: {e}"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::debug!("fleet: work queue: {e}");
                        tokio::time::sleep(delay).await;
                        break;
                    }
                }
            }
        }
    }

    async fn write_result(
        &self,
        js: &jetstream::Context,
        r: &TxnResult,
        expected: u64,
    ) -> Result<Written> {
        let body = Bytes::from(serde_json::to_vec(r).unwrap_or_default());
        engine::kv_write(
            js,
            names::TXN_BUCKET,
            &names::result_key(self.host(), &r.txn),
            body,
            expected,
        )
        .await
    }

    /// One delivered transaction id.
    async fn take(
        self: &Arc<Self>,
        client: &Client,
        js: &jetstream::Context,
        msg: &jetstream::Message,
    ) -> Result<()> {
        let host = self.host().to_string();
        let txn = String::from_utf8_lossy(&msg.payload).trim().to_string();
        let ack = || async {
            msg.ack()
                .await
                .map_err(|e| FleetError::engine("cannot acknowledge the work item", e))
        };
        if !names::valid_txn_id(&txn) {
            tracing::warn!(host, txn, "fleet: not a transaction id; dropped");
            return ack().await;
        }
        // Run before? Then never again.
        if let Some(rec) = self.ledger.txn(&txn)? {
            let result = match rec.result {
                Some(r) => r,
                None => {
                    let r = TxnResult {
                        txn: txn.clone(),
                        host: host.clone(),
                        status: TxnStatus::Interrupted,
                        started: None,
                        finished: Some(ambulance_report::now()),
                        steps: Vec::new(),
                        error: Some(format!(
                            "host {host} stopped while running this transaction; it is not run \
                             again (at most once)"
                        )),
                    };
                    self.ledger.record_txn(
                        &txn,
                        &TxnRecord {
                            claim: rec.claim,
                            result: Some(r.clone()),
                        },
                    )?;
                    r
                }
            };
            tracing::warn!(host, txn, status = ?result.status, "fleet: transaction delivered again; it ran already and is not run again");
            self.write_result(js, &result, rec.claim).await?;
            return ack().await;
        }
        let Some((bytes, _)) =
            engine::kv_read(client, names::TXN_BUCKET, &names::txn_key(&host, &txn)).await?
        else {
            tracing::warn!(
                host,
                txn,
                "fleet: transaction has no instructions (gone from the bucket); dropped"
            );
            return ack().await;
        };
        let tx: Transaction = match serde_json::from_slice(&bytes) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(host, txn, "fleet: unreadable instructions: {e}; dropped");
                return ack().await;
            }
        };
        let now = ambulance_report::now();
        if now > tx.deadline {
            let r = TxnResult {
                txn: txn.clone(),
                host: host.clone(),
                status: TxnStatus::Expired,
                started: None,
                finished: Some(now),
                steps: Vec::new(),
                error: Some(format!(
                    "host {host} took the transaction at {now}, after its deadline {}; not run",
                    tx.deadline
                )),
            };
            let _ = self.write_result(js, &r, 0).await?;
            tracing::warn!(host, txn, deadline = %tx.deadline, "fleet: transaction taken after its deadline; not run");
            self.ledger.record_txn(
                &txn,
                &TxnRecord {
                    claim: 0,
                    result: Some(r),
                },
            )?;
            return ack().await;
        }
        let running = TxnResult {
            txn: txn.clone(),
            host: host.clone(),
            status: TxnStatus::Running,
            started: Some(now),
            finished: None,
            steps: Vec::new(),
            error: None,
        };
        let claim = match self.write_result(js, &running, 0).await? {
            Written::Stored(rev) => rev,
            Written::Conflict => {
                let existing =
                    engine::kv_read(client, names::TXN_BUCKET, &names::result_key(&host, &txn))
                        .await?
                        .and_then(|(b, _)| serde_json::from_slice::<TxnResult>(&b).ok());
                tracing::warn!(host, txn, status = ?existing.as_ref().map(|r| r.status), "fleet: transaction already has a result; not run");
                self.ledger.record_txn(
                    &txn,
                    &TxnRecord {
                        claim: 0,
                        result: existing,
                    },
                )?;
                return ack().await;
            }
        };
        self.ledger.record_txn(
            &txn,
            &TxnRecord {
                claim,
                result: None,
            },
        )?;
        tracing::info!(
            host,
            txn,
            instructions = tx.instructions.len(),
            "fleet: running transaction"
        );
        let result = {
            let run = self.execute(js, &tx, now);
            tokio::pin!(run);
            let mut progress = tokio::time::interval(crate::controller::WORK_ACK_WAIT / 3);
            progress.tick().await;
            loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = progress.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
                }
            }
        };
        self.ledger.record_txn(
            &txn,
            &TxnRecord {
                claim,
                result: Some(result.clone()),
            },
        )?;
        match self.write_result(js, &result, claim).await? {
            Written::Stored(_) => {}
            Written::Conflict => {
                tracing::warn!(
                    host,
                    txn,
                    "fleet: the transaction's result changed under it; kept"
                )
            }
        }
        tracing::info!(host, txn, status = ?result.status, "fleet: transaction ended");
        ack().await
    }

    async fn execute(
        self: &Arc<Self>,
        js: &jetstream::Context,
        tx: &Transaction,
        started: Timestamp,
    ) -> TxnResult {
        let mut steps = Vec::new();
        let mut error = None;
        for i in &tx.instructions {
            let out: std::result::Result<Option<serde_json::Value>, FleetError> = match i {
                Instruction::Diagnose { guest } => self
                    .svc
                    .diagnose_now(guest)
                    .await
                    .map(|e| serde_json::to_value(FleetEntry::of(self.host(), &e)).ok())
                    .map_err(FleetError::from),
                Instruction::Release { guest, action } => self
                    .svc
                    .release(guest, *action == ReleaseAction::Destroy)
                    .await
                    .map(|v| serde_json::to_value(v).ok())
                    .map_err(FleetError::from),
                Instruction::BootFlag { guest, flag } => self
                    .svc
                    .set_boot_flag(guest, *flag)
                    .await
                    .map(|v| serde_json::to_value(v).ok())
                    .map_err(FleetError::from),
                Instruction::Repurpose {
                    guest,
                    role,
                    digest,
                    register_timeout_ms,
                } => self
                    .repurpose(
                        js,
                        guest,
                        role,
                        digest,
                        register_timeout_ms
                            .map(Duration::from_millis)
                            .unwrap_or(super::images::DEFAULT_REGISTER_TIMEOUT),
                    )
                    .await
                    .map(Some),
            };
            match out {
                Ok(v) => steps.push(StepResult {
                    op: i.op().into(),
                    guest: i.guest().into(),
                    ok: true,
                    output: v,
                    error: None,
                }),
                Err(e) => {
                    let why = format!("{} {}: {e}", i.op(), i.guest());
                    steps.push(StepResult {
                        op: i.op().into(),
                        guest: i.guest().into(),
                        ok: false,
                        output: None,
                        error: Some(e.to_string()),
                    });
                    error = Some(why);
                    break;
                }
            }
        }
        TxnResult {
            txn: tx.txn.clone(),
            host: tx.host.clone(),
            status: if error.is_some() {
                TxnStatus::Failed
            } else {
                TxnStatus::Ok
            },
            started: Some(started),
            finished: Some(ambulance_report::now()),
            steps,
            error,
        }
    }
}
