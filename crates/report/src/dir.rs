//! The report directory: where a report's files land, and the one writer of them.
//!
//! A report `ID` is three files side by side: `ID.core` (optional, the guest's memory as
//! an ELF core), `ID.txt` (the text rendering) and `ID.json` (the report). They are
//! written in that order, each to a temporary `*.tmp` name, fsynced and renamed, and the
//! directory is fsynced after: a report whose JSON exists is complete, and a crash at any
//! moment leaves at most `*.tmp` files and files without a JSON, which the daemon's store
//! removes at start-up. `ambulance run --report-dir`, `ambulance attach` and the daemon's
//! store all write through [`ReportDir::write`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{Error, Phase, Report, ReportId};

/// The kinds of file a report has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// `ID.json`, the report.
    Json,
    /// `ID.txt`, its text rendering.
    Text,
    /// `ID.core`, the guest's memory as an ELF core.
    Core,
}

impl Artifact {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Artifact::Json => "json",
            Artifact::Text => "txt",
            Artifact::Core => "core",
        }
    }
}

/// The files of one written report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    /// `ID.json`.
    pub json: PathBuf,
    /// `ID.txt`.
    pub text: PathBuf,
    /// `ID.core`, when the report has a core.
    pub core: Option<PathBuf>,
}

/// A directory of reports.
#[derive(Clone, Debug)]
pub struct ReportDir {
    dir: PathBuf,
}

/// The suffix of files being written.
pub const TEMP_SUFFIX: &str = ".tmp";

impl ReportDir {
    /// The directory `dir`, created (private to its owner: reports and cores hold guest
    /// memory) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ReportDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create", &dir, e))?;
        Ok(ReportDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where report `id`'s `artifact` is.
    pub fn file(&self, id: &ReportId, artifact: Artifact) -> PathBuf {
        self.dir
            .join(format!("{}.{}", id.as_str(), artifact.extension()))
    }

    /// Where a core for report `id` is written before [`ReportDir::write`] moves it in.
    pub fn core_temp(&self, id: &ReportId) -> PathBuf {
        temp_path(&self.file(id, Artifact::Core))
    }

    /// Writes `report`: its core (already written and fsynced at `core_tmp`, which must
    /// be in this directory) renamed into place, then its text, then its JSON, and makes
    /// the directory entries durable. The report records its core among its artifacts
    /// and gets a `write` phase.
    pub fn write(
        &self,
        report: &mut Report,
        core_tmp: Option<&Path>,
    ) -> Result<ReportFiles, Error> {
        self.write_with(report, core_tmp, || {})
    }

    /// [`ReportDir::write`], calling `before_publish` after everything but the JSON's
    /// rename is done (tests use it to stop a daemon at that point).
    pub fn write_with(
        &self,
        report: &mut Report,
        core_tmp: Option<&Path>,
        before_publish: impl FnOnce(),
    ) -> Result<ReportFiles, Error> {
        let t = Instant::now();
        let id = report.id.clone();
        let core = match core_tmp {
            Some(tmp) => {
                let core = self.file(&id, Artifact::Core);
                std::fs::rename(tmp, &core).map_err(|e| Error::io("rename", tmp, e))?;
                report
                    .artifacts
                    .insert("core".into(), core.display().to_string());
                Some(core)
            }
            None => None,
        };
        let text = self.file(&id, Artifact::Text);
        let json = self.file(&id, Artifact::Json);
        report.timeline.push(Phase {
            name: "write".into(),
            duration_us: t.elapsed().as_micros() as u64,
        });
        write_atomically(&text, crate::text::render(report).as_bytes())?;
        // The JSON goes last: its presence means the report is complete.
        let tmp = write_temp(&json, report.to_json().as_bytes())?;
        before_publish();
        std::fs::rename(&tmp, &json).map_err(|e| Error::io("rename", &tmp, e))?;
        sync_dir(&self.dir)?;
        Ok(ReportFiles { json, text, core })
    }
}

/// The temporary name `path` is written under first.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
    let tmp = temp_path(path);
    let err = |e| Error::io("write", &tmp, e);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(tmp)
}

/// Writes a file so that it is either complete or absent: temporary file, fsync,
/// rename. Call [`sync_dir`] on its directory afterwards to make the rename durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = write_temp(path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync", dir, e))
}
