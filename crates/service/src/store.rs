//! The durable report store: `reports/<id>.json`, `.txt` and optional `.core` in the data
//! directory, and an index (redb) of every diagnosis, including those that failed, plus
//! the persisted per-guest boot flags.
//!
//! Crash safety: every file is written under a `.tmp` name, fsynced and renamed, and the
//! directory is fsynced; the JSON report is renamed into place last, and the index entry
//! is committed after that. So a report is visible (in the index, hence in the API) only
//! when all its files are complete. At start-up [`Store::open`] reconciles: stray `.tmp`
//! files and leftovers of a report whose JSON never landed are removed, complete reports
//! missing from the index are indexed, and index entries whose files are gone are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambulance_report::dir::{sync_dir, TEMP_SUFFIX};
use ambulance_report::{Artifact, Report, ReportDir, ReportId, Severity, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};

const REPORTS: TableDefinition<&str, &str> = TableDefinition::new("reports");
const BOOT: TableDefinition<&str, &str> = TableDefinition::new("boot_flags");

/// Test hook: `AMBULANCE_TEST_STORE_PAUSE=<before-rename|before-index>:<ms>` makes the
/// store sleep at that point of every report write (so a test can kill the daemon there).
pub const PAUSE_ENV: &str = "AMBULANCE_TEST_STORE_PAUSE";

/// Whether a diagnosis produced a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A report is stored.
    Ok,
    /// The diagnosis failed; `error` says why.
    DiagnosisFailed,
}

/// Findings by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeveritySummary {
    /// The most severe finding.
    pub worst: Option<Severity>,
    /// Counts.
    pub critical: u32,
    /// Counts.
    pub error: u32,
    /// Counts.
    pub warning: u32,
    /// Counts.
    pub info: u32,
}

/// One index entry: a diagnosis, with or without a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The report id (also for failed diagnoses).
    pub id: ReportId,
    /// The guest's name.
    pub guest: String,
    /// The failure cause.
    pub cause: String,
    /// When the failure happened.
    pub time: Timestamp,
    /// Ok or diagnosis_failed.
    pub status: Status,
    /// Why the diagnosis failed.
    pub error: Option<String>,
    /// Findings by severity.
    pub severity: SeveritySummary,
    /// The JSON report.
    pub json: Option<PathBuf>,
    /// The text rendering.
    pub text: Option<PathBuf>,
    /// The ELF core.
    pub core: Option<PathBuf>,
}

/// Filters for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this guest.
    pub guest: Option<String>,
    /// Only failures at or after this time.
    pub since: Option<Timestamp>,
    /// Only this cause.
    pub cause: Option<String>,
}

/// Which image a rescue-policy guest boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootFlag {
    /// The primary image.
    #[default]
    Primary,
    /// The rescue image.
    Rescue,
}

/// A guest's persisted boot flag and recent failures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// The flag.
    pub flag: BootFlag,
    /// Failure times (ms since the epoch) inside the current window.
    pub failures: Vec<u64>,
    /// Why the flag has its value.
    pub reason: String,
}

/// What start-up reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// `.tmp` files removed.
    pub temp_removed: usize,
    /// Leftovers of reports whose JSON never landed, removed.
    pub partial_removed: usize,
    /// Complete reports that were not indexed, now indexed.
    pub indexed: usize,
    /// Index entries whose files were gone, dropped.
    pub dropped: usize,
}

/// The store.
pub struct Store {
    dir: ReportDir,
    db_path: PathBuf,
    db: Database,
    pause: Option<(String, Duration)>,
}

impl Store {
    /// Opens (creating) `data_dir/reports` and `data_dir/index.redb`, then reconciles.
    pub fn open(data_dir: &Path) -> Result<(Store, Reconciled)> {
        let dir = data_dir.join("reports");
        create_private_dir(data_dir)?;
        create_private_dir(&dir)?;
        let db_path = data_dir.join("index.redb");
        let db = Database::create(&db_path).map_err(|e| ServiceError::Index {
            path: db_path.clone(),
            reason: format!(
                "cannot open: {e} (is another ambulance serve using this data directory?)"
            ),
        })?;
        let pause = std::env::var(PAUSE_ENV).ok().and_then(|v| {
            let (point, ms) = v.split_once(':')?;
            Some((point.to_string(), Duration::from_millis(ms.parse().ok()?)))
        });
        let store = Store {
            dir: ReportDir::open(dir)?,
            db_path,
            db,
            pause,
        };
        // Create both tables so reads never find them missing.
        store.write(|tx| {
            tx.open_table(REPORTS)?;
            tx.open_table(BOOT)?;
            Ok(())
        })?;
        let reconciled = store.reconcile()?;
        Ok((store, reconciled))
    }

    /// The reports directory.
    pub fn dir(&self) -> &ReportDir {
        &self.dir
    }

    fn index_err(&self, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Index {
            path: self.db_path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error>,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.index_err(e))?;
        f(&tx).map_err(|e| self.index_err(e))?;
        tx.commit().map_err(|e| self.index_err(e))
    }

    fn test_pause(&self, point: &str) {
        if let Some((p, d)) = &self.pause {
            if p == point {
                tracing::warn!(point, ms = d.as_millis() as u64, "store: test pause");
                std::thread::sleep(*d);
            }
        }
    }

    fn reconcile(&self) -> Result<Reconciled> {
        let mut done = Reconciled::default();
        let dir = self.dir.path();
        let entries =
            std::fs::read_dir(dir).map_err(|e| ServiceError::io("cannot list", dir, e))?;
        let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| ServiceError::io("cannot list", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(TEMP_SUFFIX) {
                std::fs::remove_file(&path)
                    .map_err(|e| ServiceError::io("cannot remove", &path, e))?;
                done.temp_removed += 1;
                continue;
            }
            if let Some((id, ext)) = name.rsplit_once('.') {
                if matches!(ext, "json" | "txt" | "core") {
                    files.entry(id.to_string()).or_default().insert(ext.into());
                }
            }
        }
        let indexed: BTreeMap<String, IndexEntry> = self
            .list(&Filter::default())?
            .into_iter()
            .map(|e| (e.id.to_string(), e))
            .collect();
        // Leftovers of a report whose JSON never landed.
        for (id, exts) in &files {
            if !exts.contains("json") && !indexed.contains_key(id) {
                for ext in exts {
                    let p = dir.join(format!("{id}.{ext}"));
                    std::fs::remove_file(&p)
                        .map_err(|e| ServiceError::io("cannot remove", &p, e))?;
                    done.partial_removed += 1;
                }
            }
        }
        // Complete reports missing from the index.
        for (id, exts) in &files {
            if exts.contains("json") && !indexed.contains_key(id) {
                let p = dir.join(format!("{id}.json"));
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| ServiceError::io("cannot read", &p, e))?;
                match Report::from_json(&text) {
                    Ok(report) if report.id.as_str() == id => {
                        let entry = self.entry_for(&report, exts.contains("core"));
                        self.put(&entry)?;
                        done.indexed += 1;
                    }
                    Ok(report) => tracing::warn!(
                        file = %p.display(),
                        id = %report.id,
                        "report file name does not match its id; not indexed"
                    ),
                    Err(e) => tracing::warn!(file = %p.display(), "not a report; not indexed: {e}"),
                }
            }
        }
        // Index entries whose files are gone.
        for (id, e) in &indexed {
            let gone = e.status == Status::Ok && e.json.as_ref().is_none_or(|p| !p.exists());
            if gone {
                self.write(|tx| {
                    tx.open_table(REPORTS)?.remove(id.as_str())?;
                    Ok(())
                })?;
                done.dropped += 1;
            }
        }
        if done != Reconciled::default() {
            sync_dir(dir)?;
            tracing::info!(
                temp_removed = done.temp_removed,
                partial_removed = done.partial_removed,
                indexed = done.indexed,
                dropped = done.dropped,
                "report store reconciled"
            );
        }
        Ok(done)
    }

    fn entry_for(&self, report: &Report, core: bool) -> IndexEntry {
        let mut severity = SeveritySummary {
            worst: report.worst(),
            ..Default::default()
        };
        for f in &report.findings {
            match f.severity {
                Severity::Critical => severity.critical += 1,
                Severity::Error => severity.error += 1,
                Severity::Warning => severity.warning += 1,
                Severity::Info => severity.info += 1,
            }
        }
        IndexEntry {
            id: report.id.clone(),
            guest: report.guest.name.clone(),
            cause: report.failure.cause.clone(),
            time: report.failure.time,
            status: Status::Ok,
            error: None,
            severity,
            json: Some(self.dir.file(&report.id, Artifact::Json)),
            text: Some(self.dir.file(&report.id, Artifact::Text)),
            core: core.then(|| self.dir.file(&report.id, Artifact::Core)),
        }
    }

    fn put(&self, entry: &IndexEntry) -> Result<()> {
        let json = serde_json::to_string(entry).map_err(|e| self.index_err(e))?;
        self.write(|tx| {
            tx.open_table(REPORTS)?
                .insert(entry.id.as_str(), json.as_str())?;
            Ok(())
        })
    }

    /// Where the core of report `id` is written before [`Store::store_report`] takes it.
    pub fn core_temp(&self, id: &ReportId) -> PathBuf {
        self.dir.core_temp(id)
    }

    /// Stores a report — its core (already written and fsynced at `core_tmp`), text and
    /// JSON through the report directory, then the index entry.
    pub fn store_report(&self, report: &mut Report, core_tmp: Option<&Path>) -> Result<IndexEntry> {
        self.dir
            .write_with(report, core_tmp, || self.test_pause("before-rename"))?;
        self.test_pause("before-index");
        let entry = self.entry_for(report, core_tmp.is_some());
        self.put(&entry)?;
        Ok(entry)
    }

    /// Records a diagnosis that produced no report.
    pub fn store_failure(
        &self,
        id: &ReportId,
        guest: &str,
        cause: &str,
        time: Timestamp,
        why: &str,
    ) -> Result<IndexEntry> {
        let entry = IndexEntry {
            id: id.clone(),
            guest: guest.into(),
            cause: cause.into(),
            time,
            status: Status::DiagnosisFailed,
            error: Some(format!("diagnosis failed: {why}")),
            severity: SeveritySummary::default(),
            json: None,
            text: None,
            core: None,
        };
        self.put(&entry)?;
        Ok(entry)
    }

    /// Index entries matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<IndexEntry>> {
        let tx = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let table = tx.open_table(REPORTS).map_err(|e| self.index_err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.index_err(e))? {
            let (_, v) = row.map_err(|e| self.index_err(e))?;
            let e: IndexEntry = serde_json::from_str(v.value()).map_err(|e| self.index_err(e))?;
            let keep = filter.guest.as_ref().is_none_or(|g| *g == e.guest)
                && filter.cause.as_ref().is_none_or(|c| *c == e.cause)
                && filter.since.is_none_or(|s| e.time >= s);
            if keep {
                out.push(e);
            }
        }
        out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(out)
    }

    /// One index entry.
    pub fn get(&self, id: &str) -> Result<Option<IndexEntry>> {
        let tx = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let table = tx.open_table(REPORTS).map_err(|e| self.index_err(e))?;
        let v = table.get(id).map_err(|e| self.index_err(e))?;
        v.map(|v| serde_json::from_str(v.value()).map_err(|e| self.index_err(e)))
            .transpose()
    }

    /// A guest's boot state (default: primary, no failures).
    pub fn boot_state(&self, guest: &str) -> Result<BootState> {
        let tx = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let table = tx.open_table(BOOT).map_err(|e| self.index_err(e))?;
        let v = table.get(guest).map_err(|e| self.index_err(e))?;
        Ok(v.and_then(|v| serde_json::from_str(v.value()).ok())
            .unwrap_or_default())
    }

    /// Persists a guest's boot state.
    pub fn set_boot_state(&self, guest: &str, state: &BootState) -> Result<()> {
        let json = serde_json::to_string(state).map_err(|e| self.index_err(e))?;
        self.write(|tx| {
            tx.open_table(BOOT)?.insert(guest, json.as_str())?;
            Ok(())
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServiceError::io("cannot create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_removes_partials_and_indexes_complete_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r) = Store::open(dir.path()).unwrap();
        assert_eq!(r, Reconciled::default());
        let id = ReportId::parse("20260101T000000Z-g-00000001").unwrap();
        let f = store
            .store_failure(
                &id,
                "g",
                "panic",
                "2026-01-01T00:00:00.000Z".parse().unwrap(),
                "worker killed",
            )
            .unwrap();
        assert_eq!(
            store.get(f.id.as_str()).unwrap().unwrap().status,
            Status::DiagnosisFailed
        );
        store
            .set_boot_state(
                "g",
                &BootState {
                    flag: BootFlag::Rescue,
                    failures: vec![1, 2],
                    reason: "test".into(),
                },
            )
            .unwrap();
        let reports = dir.path().join("reports");
        std::fs::write(reports.join("x.json.tmp"), "{").unwrap();
        std::fs::write(reports.join("partial.txt"), "half").unwrap();
        std::fs::write(reports.join("gone.json"), "not json").unwrap();
        drop(store);
        let (store, r) = Store::open(dir.path()).unwrap();
        assert_eq!(r.temp_removed, 1);
        assert_eq!(r.partial_removed, 1);
        assert_eq!(r.indexed, 0, "an unparseable report is not indexed");
        assert!(!reports.join("partial.txt").exists());
        assert!(
            reports.join("gone.json").exists(),
            "never delete a complete file"
        );
        assert_eq!(store.boot_state("g").unwrap().flag, BootFlag::Rescue);
        assert_eq!(store.boot_state("h").unwrap().flag, BootFlag::Primary);
        assert_eq!(store.list(&Filter::default()).unwrap().len(), 1);
    }
}
