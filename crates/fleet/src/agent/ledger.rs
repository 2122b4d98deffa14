//! The agent's durable memory (`<data_dir>/fleet/ledger.redb`): which failures and
//! diagnoses the engine acknowledged, failure events not yet acknowledged, and every
//! transaction the host started and how it ended — so nothing is published twice by
//! mistake, nothing is lost when the engine or the host goes down, and no transaction
//! runs twice.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{FleetError, Result};
use crate::model::{FailureEvent, TxnResult};

/// Report id → what the engine acknowledged (bit 0: its failure event; bit 1: its
/// diagnosis).
const ACKED: TableDefinition<&str, u8> = TableDefinition::new("acked");
/// Report id → a failure event (JSON) waiting for the engine.
const FAILURES: TableDefinition<&str, &str> = TableDefinition::new("failure_outbox");
/// Transaction id → [`TxnRecord`] (JSON).
const TXNS: TableDefinition<&str, &str> = TableDefinition::new("transactions");

/// The failure event was acknowledged.
pub const FAILURE: u8 = 1;
/// The diagnosis (report event and files) was acknowledged.
pub const REPORT: u8 = 2;

/// A transaction this host took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Its claim's revision in the results bucket.
    pub claim: u64,
    /// Its result once it ended (None: started, not ended — the host stopped meanwhile).
    pub result: Option<TxnResult>,
}

/// The ledger.
pub struct Ledger {
    db: Database,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        let db = Database::create(path).map_err(|e| {
            FleetError::Invalid(format!(
                "cannot open the fleet ledger {}: {e}",
                path.display()
            ))
        })?;
        let l = Ledger {
            db,
            path: path.to_path_buf(),
        };
        l.write(|tx| {
            tx.open_table(ACKED)?;
            tx.open_table(FAILURES)?;
            tx.open_table(TXNS)?;
            Ok(())
        })?;
        Ok(l)
    }

    fn err(&self, e: impl std::fmt::Display) -> FleetError {
        FleetError::Invalid(format!("fleet ledger {}: {e}", self.path.display()))
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error>,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// What the engine acknowledged of report `id`.
    pub fn acked(&self, id: &str) -> Result<u8> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
        Ok(t.get(id)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Every acknowledged report id and its bits.
    pub fn all_acked(&self) -> Result<std::collections::HashMap<String, u8>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
        let mut out = std::collections::HashMap::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Records that the engine acknowledged `bits` of report `id` (and drops its pending
    /// failure event once that is acknowledged).
    pub fn ack(&self, id: &str, bits: u8) -> Result<()> {
        self.write(|tx| {
            let mut t = tx.open_table(ACKED)?;
            let old = t.get(id)?.map(|v| v.value()).unwrap_or(0);
            t.insert(id, old | bits)?;
            if bits & FAILURE != 0 {
                tx.open_table(FAILURES)?.remove(id)?;
            }
            Ok(())
        })
    }

    /// Keeps a failure event until the engine acknowledges it.
    pub fn queue_failure(&self, ev: &FailureEvent) -> Result<()> {
        let json = serde_json::to_string(ev).map_err(|e| self.err(e))?;
        if self.acked(&ev.report_id)? & FAILURE != 0 {
            return Ok(());
        }
        self.write(|tx| {
            tx.open_table(FAILURES)?
                .insert(ev.report_id.as_str(), json.as_str())?;
            Ok(())
        })
    }

    /// Failure events waiting for the engine.
    pub fn pending_failures(&self) -> Result<Vec<FailureEvent>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FAILURES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            if let Ok(ev) = serde_json::from_str(v.value()) {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// What this host recorded of transaction `txn`.
    pub fn txn(&self, txn: &str) -> Result<Option<TxnRecord>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(TXNS).map_err(|e| self.err(e))?;
        let v = t.get(txn).map_err(|e| self.err(e))?;
        v.map(|v| serde_json::from_str(v.value()).map_err(|e| self.err(e)))
            .transpose()
    }

    /// Records transaction `txn` (before it runs, and again when it ended).
    pub fn record_txn(&self, txn: &str, rec: &TxnRecord) -> Result<()> {
        let json = serde_json::to_string(rec).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(TXNS)?.insert(txn, json.as_str())?;
            Ok(())
        })
    }
}
