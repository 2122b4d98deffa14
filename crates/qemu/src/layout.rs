//! Where a QEMU guest's RAM lies in its memory-backend file.
//!
//! QEMU started with `-object memory-backend-file,id=ram,size=S,mem-path=FILE,share=on
//! -machine TYPE,memory-backend=ram` keeps all guest RAM in FILE: bytes `[0, below_4g)`
//! of the file are guest-physical `[0, below_4g)`, and the rest is guest-physical
//! `[4 GiB, 4 GiB + S - below_4g)` (the gap between holds PCI and firmware). Where the
//! split lies depends on the machine (QEMU 7.2, `hw/i386/pc_q35.c` and `pc_piix.c`):
//!
//! * `q35`: below 4 GiB is 2 GiB when S ≥ 0xb000_0000 (2.75 GiB), else all of S, capped
//!   by the machine's `max-ram-below-4g`;
//! * `pc` (i440fx): the cap is `max-ram-below-4g` (default 0xe000_0000, 3.5 GiB); when S
//!   reaches it, machine types since 2.0 lower the split to 3 GiB (gigabyte alignment).
//!
//! [`RamFile::discover`] asks QEMU (machine type, memory backend, its file, size and
//! sharing, `max-ram-below-4g`, and on q35 the host bridge's `below-4g-mem-size`)
//! instead of trusting arguments, then opens the file read-only and checks its size.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ambulance_introspect::memory::LiveMemory;
use ambulance_ram::{GuestRam, RamRegion};
use serde_json::Value;

use crate::qmp::Qmp;
use crate::{Error, Result};

const GIB: u64 = 1 << 30;
/// Where RAM above the PCI hole starts.
pub const HIGH_RAM_START: u64 = 4 * GIB;

/// A QEMU x86 machine family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `q35` (`pc-q35-*`).
    Q35,
    /// `pc` (`pc-i440fx-*`, and the old `pc-X.Y`).
    Pc,
}

impl Machine {
    /// The family of a machine type as `-machine` or QOM (`pc-q35-7.2-machine`) names it.
    pub fn from_type(name: &str) -> Option<Machine> {
        let n = name.strip_suffix("-machine").unwrap_or(name);
        if n == "q35" || n.starts_with("pc-q35-") {
            Some(Machine::Q35)
        } else if n == "pc" || n.starts_with("pc-i440fx-") || n.starts_with("pc-") {
            Some(Machine::Pc)
        } else {
            None
        }
    }

    /// `q35` or `pc`.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }
}

/// Whether a `pc` machine type aligns the RAM split to 1 GiB (every type since 2.0;
/// `pc-i440fx-1.7`, `pc-1.x` and older do not).
fn gigabyte_align(machine_type: &str) -> bool {
    let n = machine_type
        .strip_suffix("-machine")
        .unwrap_or(machine_type);
    let version = n
        .strip_prefix("pc-i440fx-")
        .or_else(|| n.strip_prefix("pc-"))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    version.is_none_or(|major| major >= 2)
}

/// How a guest's RAM splits around the 4 GiB hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    /// All guest RAM, bytes (the backend's size).
    pub size: u64,
    /// RAM below 4 GiB: file bytes `[0, below_4g)` at guest-physical 0.
    pub below_4g: u64,
}

impl RamLayout {
    /// The split QEMU makes for `machine` with `size` bytes of RAM and the machine's
    /// `max-ram-below-4g` (`None` or 0: the default).
    pub fn compute(
        machine: Machine,
        size: u64,
        max_ram_below_4g: Option<u64>,
        gigabyte_align: bool,
    ) -> RamLayout {
        let max = max_ram_below_4g.filter(|&m| m != 0);
        let lowmem = match machine {
            Machine::Q35 => {
                let l = if size >= 0xb000_0000 {
                    0x8000_0000
                } else {
                    0xb000_0000
                };
                l.min(max.unwrap_or(4 * GIB))
            }
            Machine::Pc => {
                let max = max.unwrap_or(0xe000_0000);
                if size >= max && gigabyte_align {
                    max.min(0xc000_0000)
                } else {
                    max
                }
            }
        };
        RamLayout {
            size,
            below_4g: size.min(lowmem),
        }
    }

    /// The RAM regions: below 4 GiB from the file's start, the rest above 4 GiB.
    pub fn regions(&self) -> Vec<RamRegion> {
        let mut r = vec![RamRegion::new(0, self.below_4g, 0)];
        if self.size > self.below_4g {
            r.push(RamRegion::new(
                HIGH_RAM_START,
                self.size - self.below_4g,
                self.below_4g,
            ));
        }
        r
    }
}

/// The regions of a `machine` with `ram_bytes` of RAM and default machine options.
pub fn ram_regions(machine: Machine, ram_bytes: u64) -> Vec<RamRegion> {
    RamLayout::compute(machine, ram_bytes, None, true).regions()
}

/// A guest's RAM file, open read-only, with its layout.
#[derive(Debug)]
pub struct RamFile {
    /// The path it was opened at.
    pub path: PathBuf,
    /// The file (`O_RDONLY`).
    pub file: File,
    /// Its layout.
    pub layout: RamLayout,
    /// QEMU's machine type (`pc-q35-7.2-machine`), when asked of QEMU.
    pub machine_type: Option<String>,
    /// The memory backend's QOM path (`/objects/ram`), when asked of QEMU.
    pub backend: Option<String>,
}

/// What QEMU says about its guest RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBackend {
    /// QEMU's machine type.
    pub machine_type: String,
    /// The memory backend's QOM path.
    pub path: String,
    /// Its `mem-path` as QEMU sees it.
    pub mem_path: PathBuf,
    /// The RAM layout.
    pub layout: RamLayout,
}

fn how_to_start() -> &'static str {
    "start QEMU with -object memory-backend-file,id=ram,size=SIZE,mem-path=FILE,share=on and -machine q35,memory-backend=ram (or pc,…)"
}

/// Asks QEMU where its guest RAM is and how it is laid out.
pub async fn backend(qmp: &Qmp) -> Result<MemoryBackend> {
    let machine_type = qmp
        .qom_get("/machine", "type")
        .await?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let machine = Machine::from_type(&machine_type).ok_or_else(|| {
        Error::Memory(format!(
            "machine type {machine_type:?} is not supported; Ambulance knows the RAM layout of q35 and pc (i440fx) machines"
        ))
    })?;
    let path = match qmp.qom_get("/machine", "memory-backend").await {
        Ok(Value::String(p)) if !p.is_empty() => {
            if p.starts_with('/') {
                p
            } else {
                format!("/objects/{p}")
            }
        }
        _ => {
            return Err(Error::Memory(format!(
            "the machine has no memory-backend (its RAM is not in a file Ambulance can map): {}",
            how_to_start()
        )))
        }
    };
    let mem_path = match qmp.qom_get(&path, "mem-path").await {
        Ok(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(Error::Memory(format!(
                "memory backend {path} is not a memory-backend-file: {}",
                how_to_start()
            )))
        }
    };
    if qmp.qom_get(&path, "share").await?.as_bool() != Some(true) {
        return Err(Error::Memory(format!(
            "memory backend {path} (mem-path={}) has share=off: its file does not see the guest's writes; {}",
            mem_path.display(),
            how_to_start()
        )));
    }
    let size = qmp
        .qom_get(&path, "size")
        .await?
        .as_u64()
        .ok_or_else(|| Error::Memory(format!("memory backend {path} does not say its size")))?;
    let max_ram_below_4g = qmp
        .qom_get("/machine", "max-ram-below-4g")
        .await
        .ok()
        .and_then(|v| v.as_u64());
    let mut layout = RamLayout::compute(
        machine,
        size,
        max_ram_below_4g,
        gigabyte_align(&machine_type),
    );
    // q35's host bridge says the split itself.
    if machine == Machine::Q35 {
        if let Ok(below) = qmp.qom_get("/machine/q35", "below-4g-mem-size").await {
            if let Some(below) = below.as_u64().filter(|&b| b <= size) {
                if below != layout.below_4g {
                    tracing::warn!(
                        computed = layout.below_4g,
                        qemu = below,
                        "QEMU's below-4g-mem-size differs from the computed split; using QEMU's"
                    );
                }
                layout.below_4g = below;
            }
        }
    }
    Ok(MemoryBackend {
        machine_type,
        path,
        mem_path,
        layout,
    })
}

impl RamFile {
    /// Opens `path` read-only for a guest whose RAM is laid out as `layout`, checking that
    /// it is a regular file of exactly `layout.size` bytes.
    pub fn open(path: &Path, layout: RamLayout) -> Result<RamFile> {
        let bad = |reason: String| Error::RamFile {
            path: path.to_path_buf(),
            reason,
        };
        // Read-only is all we can do to QEMU's file. It is QEMU's: QEMU made it and maps it
        // shared and writable for as long as it runs, so we may not seal it (seals are for
        // memfds; a file made by open() on tmpfs or hugetlbfs refuses them), and changing
        // its mode or owner would be changing QEMU's setup under it, while not keeping a
        // process of QEMU's user from reopening it read-write by path anyway. Our own
        // processes that read it — the diagnosis worker — hold only this descriptor and
        // are jailed so that they can open no path at all (ambulance-service's `jail`).
        let file = File::open(path).map_err(|e| bad(format!("cannot open it read-only: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("is not a regular file".into()));
        }
        if meta.len() != layout.size {
            return Err(bad(format!(
                "is {} bytes but the guest has {} bytes of RAM (is it this guest's memory-backend file?)",
                meta.len(),
                layout.size
            )));
        }
        Ok(RamFile {
            path: path.to_path_buf(),
            file,
            layout,
            machine_type: None,
            backend: None,
        })
    }

    /// Asks QEMU where its guest RAM is ([`backend`]) and opens that file read-only —
    /// or `path`, when given, after checking it is the same file QEMU maps (when QEMU's
    /// path is visible here) and of the backend's size.
    pub async fn discover(qmp: &Qmp, path: Option<&Path>) -> Result<RamFile> {
        let b = backend(qmp).await?;
        if b.mem_path.is_dir() {
            return Err(Error::Memory(format!(
                "memory backend {} has mem-path={}, a directory: QEMU keeps guest RAM in an unlinked file there; give mem-path a file name",
                b.path,
                b.mem_path.display()
            )));
        }
        let chosen = path.unwrap_or(&b.mem_path);
        let f = RamFile::open(chosen, b.layout)?;
        if path.is_some() {
            if let Ok(theirs) = std::fs::metadata(&b.mem_path) {
                let ours = f.file.metadata().map_err(|e| Error::RamFile {
                    path: chosen.to_path_buf(),
                    reason: format!("cannot stat it: {e}"),
                })?;
                if (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()) {
                    return Err(Error::RamFile {
                        path: chosen.to_path_buf(),
                        reason: format!(
                            "is not the file QEMU keeps this guest's RAM in ({} of backend {})",
                            b.mem_path.display(),
                            b.path
                        ),
                    });
                }
            }
        }
        Ok(RamFile {
            machine_type: Some(b.machine_type),
            backend: Some(b.path),
            ..f
        })
    }

    /// The guest's RAM regions in the file.
    pub fn regions(&self) -> Vec<RamRegion> {
        self.layout.regions()
    }

    /// The guest's RAM for diagnosis: a duplicate of the read-only descriptor, with the
    /// layout.
    pub fn guest_ram(&self) -> Result<GuestRam> {
        let file = self.file.try_clone().map_err(|e| Error::RamFile {
            path: self.path.clone(),
            reason: format!("cannot duplicate its descriptor: {e}"),
        })?;
        GuestRam::new(file, self.regions()).map_err(|e| Error::RamFile {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Maps the guest's RAM read-only.
    pub fn map(&self) -> Result<LiveMemory> {
        LiveMemory::map(&self.guest_ram()?).map_err(|e| Error::RamFile {
            path: self.path.clone(),
            reason: format!("cannot map it read-only: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn regions(r: &[(u64, u64, u64)]) -> Vec<RamRegion> {
        r.iter()
            .map(|&(gpa, size, off)| RamRegion::new(gpa, size, off))
            .collect()
    }

    #[test]
    fn q35_splits_at_2g_from_2_75g() {
        assert_eq!(
            ram_regions(Machine::Q35, 256 * M),
            regions(&[(0, 256 * M, 0)])
        );
        assert_eq!(
            ram_regions(Machine::Q35, 0xb000_0000 - 1),
            regions(&[(0, 0xb000_0000 - 1, 0)])
        );
        assert_eq!(
            ram_regions(Machine::Q35, 0xb000_0000),
            regions(&[(0, 2 * GIB, 0), (4 * GIB, 0x3000_0000, 2 * GIB)])
        );
        // Checked against QEMU 7.2's dump-guest-memory of a 3 GiB q35 guest.
        assert_eq!(
            ram_regions(Machine::Q35, 3 * GIB),
            regions(&[(0, 2 * GIB, 0), (4 * GIB, GIB, 2 * GIB)])
        );
        // max-ram-below-4g lowers the split.
        let l = RamLayout::compute(Machine::Q35, 2 * GIB, Some(GIB), true);
        assert_eq!(l.regions(), regions(&[(0, GIB, 0), (4 * GIB, GIB, GIB)]));
    }

    #[test]
    fn pc_splits_at_3g_from_3_5g() {
        assert_eq!(
            ram_regions(Machine::Pc, 3 * GIB),
            regions(&[(0, 3 * GIB, 0)])
        );
        assert_eq!(
            ram_regions(Machine::Pc, 0xe000_0000 - M),
            regions(&[(0, 0xe000_0000 - M, 0)])
        );
        // Checked against QEMU 7.2's dump-guest-memory of a 3840 MiB pc guest.
        assert_eq!(
            ram_regions(Machine::Pc, 3840 * M),
            regions(&[(0, 3 * GIB, 0), (4 * GIB, 768 * M, 3 * GIB)])
        );
        // Old machine types keep 3.5 GiB.
        let l = RamLayout::compute(Machine::Pc, 4 * GIB, None, gigabyte_align("pc-i440fx-1.7"));
        assert_eq!(l.below_4g, 0xe000_0000);
        assert!(gigabyte_align("pc-i440fx-7.2-machine"));
        assert!(!gigabyte_align("pc-1.3"));
    }

    #[test]
    fn machine_types() {
        assert_eq!(Machine::from_type("pc-q35-7.2-machine"), Some(Machine::Q35));
        assert_eq!(Machine::from_type("q35"), Some(Machine::Q35));
        assert_eq!(
            Machine::from_type("pc-i440fx-7.2-machine"),
            Some(Machine::Pc)
        );
        assert_eq!(Machine::from_type("pc"), Some(Machine::Pc));
        assert_eq!(Machine::from_type("microvm-machine"), None);
        assert_eq!(Machine::from_type("isapc"), None);
    }

    /// Asks a fake QEMU whose RAM is `file` (`size` bytes, `share`).
    async fn discover(
        file: &Path,
        size: u64,
        share: bool,
        given: Option<&Path>,
    ) -> Result<RamFile> {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let mem_path = file.display().to_string();
        let server = tokio::spawn(crate::qmp::fake::fake_qemu(listener, move |c| {
            let a = &c["arguments"];
            let v = match (
                c["execute"].as_str()?,
                a["path"].as_str(),
                a["property"].as_str(),
            ) {
                ("qmp_capabilities", ..) => json!({}),
                ("qom-get", Some("/machine"), Some("type")) => json!("pc-q35-7.2-machine"),
                ("qom-get", Some("/machine"), Some("memory-backend")) => json!("/objects/ram"),
                ("qom-get", Some("/machine"), Some("max-ram-below-4g")) => json!(4u64 << 30),
                ("qom-get", Some("/objects/ram"), Some("mem-path")) => json!(mem_path),
                ("qom-get", Some("/objects/ram"), Some("share")) => json!(share),
                ("qom-get", Some("/objects/ram"), Some("size")) => json!(size),
                _ => return Some(json!({"error": {"class": "GenericError", "desc": "not found"}})),
            };
            Some(json!({ "return": v }))
        }));
        let (qmp, _events) = Qmp::connect(&sock, Default::default()).await.unwrap();
        let r = RamFile::discover(&qmp, given).await;
        server.abort();
        r
    }

    #[tokio::test]
    async fn qemu_says_where_guest_ram_is_and_the_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ram = dir.path().join("ram");
        std::fs::write(&ram, vec![0u8; 3 << 20]).unwrap();
        let f = discover(&ram, 3 << 20, true, None).await.unwrap();
        assert_eq!(f.path, ram);
        assert_eq!(f.regions(), regions(&[(0, 3 << 20, 0)]));
        assert_eq!(f.machine_type.as_deref(), Some("pc-q35-7.2-machine"));
        assert_eq!(f.backend.as_deref(), Some("/objects/ram"));
        // The file QEMU names, given explicitly, is fine; another file is not.
        discover(&ram, 3 << 20, true, Some(&ram)).await.unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; 3 << 20]).unwrap();
        let e = discover(&ram, 3 << 20, true, Some(&other))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other") && e.contains("is not the file QEMU keeps"),
            "{e}"
        );
        // A file of another size than the backend's.
        let e = discover(&ram, 4 << 20, true, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is 3145728 bytes but the guest has 4194304"),
            "{e}"
        );
        // share=off: the file does not see the guest's writes.
        let e = discover(&ram, 3 << 20, false, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("share=off"), "{e}");
        // mem-path a directory: QEMU's file there is unlinked.
        let e = discover(dir.path(), 3 << 20, true, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("a directory"), "{e}");
    }

    #[test]
    fn a_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let layout = RamLayout::compute(Machine::Q35, 4096, None, true);
        let e = RamFile::open(&path, layout).unwrap_err().to_string();
        assert!(e.contains("8192 bytes") && e.contains("4096 bytes"), "{e}");
        let e = RamFile::open(&dir.path().join("nope"), layout)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("cannot open"), "{e}");
        let layout = RamLayout::compute(Machine::Q35, 8192, None, true);
        let f = RamFile::open(&path, layout).unwrap();
        let mem = f.map().unwrap();
        let mut b = [0u8; 4];
        ambulance_introspect::memory::PhysicalMemory::read(&mem, 4000, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
    }
}
