//! Kernels the `ambulance` binary provides by name — the one place a kernel name such as
//! `test` is resolved.
//!
//! With the `test-kernel` feature (on by default, so `cargo run -- demo` works from a
//! fresh clone) the binary embeds the built-in test kernel. The first time it is named,
//! its ELF is written to a content-addressed file in the user's cache directory
//! (`$XDG_CACHE_HOME/ambulance/kernels/test-<sha256>.elf`); from then on it is a file like
//! any user's kernel — the VMM boots it, the diagnosis worker reads its debug info, gdb
//! opens it. The daemon itself knows no kernel names: it is handed [`BuiltinKernels`].

use std::path::PathBuf;

use ambulance_service::config::BuiltinKernels;

use crate::CliError;

/// The name of the built-in test kernel.
pub const TEST: &str = "test";

/// The kernels this binary provides by name.
pub fn builtin() -> Result<BuiltinKernels, CliError> {
    #[cfg(feature = "test-kernel")]
    {
        Ok(BuiltinKernels::none().with(TEST, test_kernel_file()?))
    }
    #[cfg(not(feature = "test-kernel"))]
    {
        Ok(BuiltinKernels::none())
    }
}

/// The file a `--kernel` argument names: a built-in kernel's, or the path itself.
pub fn resolve(spec: &str) -> Result<PathBuf, CliError> {
    let kernels = builtin()?;
    if spec == TEST && kernels.names().all(|n| n != TEST) {
        return Err(CliError::Usage(
            "this ambulance was built without the test kernel (cargo feature test-kernel); give a kernel's path".into(),
        ));
    }
    Ok(kernels.resolve(spec))
}

/// Checks a fault name against the test kernel's catalogue (any name goes without it).
pub fn check_fault(name: &str) -> Result<(), CliError> {
    #[cfg(feature = "test-kernel")]
    {
        if !ambulance_test_kernel::FAULTS.contains(&name) {
            return Err(CliError::Usage(format!(
                "unknown fault {name:?}; the test kernel knows: {}",
                ambulance_test_kernel::FAULTS.join(", ")
            )));
        }
    }
    let _ = name;
    Ok(())
}

/// Where kernels the binary provides are written: the user's cache directory.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("ambulance").join("kernels")
}

/// The embedded test kernel as a file, written once per content.
#[cfg(feature = "test-kernel")]
fn test_kernel_file() -> Result<PathBuf, CliError> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let elf = ambulance_test_kernel::ELF;
    let digest = Sha256::digest(elf);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir();
    let path = dir.join(format!("{TEST}-{hex}.elf"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == elf.len() as u64) {
        return Ok(path);
    }
    let fail = |what: &str, e: std::io::Error| {
        CliError::Failed(format!(
            "cannot {what} the built-in test kernel at {}: {e}",
            path.display()
        ))
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("create the directory for", e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| fail("write", e))?;
    tmp.write_all(elf).map_err(|e| fail("write", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("write", e))?;
    tmp.persist(&path).map_err(|e| fail("write", e.error))?;
    Ok(path)
}
