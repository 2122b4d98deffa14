//! The ambulance daemon (`ambulance serve`): supervises guests — its own VMM's on KVM, and
//! guests QEMU runs, through QMP — diagnoses each failure in an isolated worker process,
//! stores reports durably, serves them over an HTTP API (Unix socket, optionally TCP with
//! a bearer token), alerts webhooks, exports metrics and applies each guest's recovery
//! policy.
//!
//! * [`config`]: the TOML configuration and its embedded defaults;
//! * [`supervisor`]: guests, failures, the diagnosis queue and recovery policies;
//! * [`worker`]: the diagnosis worker process and its protocol; [`jail`]: its confinement
//!   (namespaces, `no_new_privs`, the seccomp filter);
//! * [`store`]: the report files and their redb index;
//! * [`api`], [`client`], [`alerts`], [`metrics`]: the operator's interfaces.
//!
//! Guests are frozen and captured through `ambulance_capture`'s one seam, whoever runs
//! them.

pub mod alerts;
pub mod api;
pub mod client;
pub mod config;
mod error;
pub mod jail;
pub mod metrics;
pub mod store;
pub mod supervisor;
pub mod worker;

use std::path::Path;

pub use config::ServiceConfig;
pub use error::{Result, ServiceError};
pub use supervisor::{Notice, Service};

/// Binds the Unix socket at `path` with mode 0600 from its creation (no window in which
/// it is more open), replacing a stale socket file but refusing to steal one another
/// daemon is listening on.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServiceError::Invalid(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServiceError::Conflict(format!(
                "another daemon is listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| ServiceError::io("cannot remove stale socket", path, e))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ServiceError::io("cannot create directory", dir, e))?;
    }
    // The umask is the process's: while it is narrowed, files other threads create are
    // at most 0600 too — stricter, never looser — and it is restored at once.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| ServiceError::io("cannot listen on", path, e))?;
    // Belt and braces: a umask cannot widen, but say what the mode is.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServiceError::io("cannot restrict the permissions of", path, e))?;
    Ok(listener)
}

/// Runs the daemon until SIGINT or SIGTERM: the service, its Unix socket API and, when
/// configured, its TCP API.
pub async fn serve(config: ServiceConfig) -> Result<()> {
    let socket = config.api.socket.clone();
    let tcp = config.api.tcp;
    let token = config.api.bearer_token.clone();
    let svc = Service::new(config)?;
    let unix = bind_unix(&socket)?;
    let app = api::router(svc.clone());
    let tcp_listener = match tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServiceError::io("cannot listen on", addr.to_string(), e))?,
        ),
        None => None,
    };
    svc.run()?;
    tracing::info!(
        socket = %socket.display(),
        tcp = tcp.map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %svc.config().data_dir.display(),
        guests = svc.config().guests.len(),
        "ambulance serving"
    );
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(async move { axum::serve(unix, app).await });
    if let (Some(l), Some(token)) = (tcp_listener, token) {
        let app = api::router_with_token(svc.clone(), token);
        servers.spawn(async move { axum::serve(l, app).await });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServiceError::Invalid(format!("cannot handle SIGTERM: {e}")))?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        Some(r) = servers.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Invalid(format!("the API server failed: {e}"))),
            Err(e) => Err(ServiceError::Invalid(format!("the API server ended abnormally: {e}"))),
        },
    };
    tracing::info!("ambulance stopping");
    servers.abort_all();
    svc.shutdown();
    let _ = std::fs::remove_file(&socket);
    outcome
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_socket_and_the_data_directory_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("state/ambulance");
        let (_store, _) = crate::store::Store::open(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("reports")), 0o700);
        let sock = tmp.path().join("run/api.sock");
        let _l = super::bind_unix(&sock).unwrap();
        assert_eq!(mode(&sock), 0o600);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        // A second daemon on the same socket is refused.
        let e = super::bind_unix(&sock).unwrap_err().to_string();
        assert!(e.contains("another daemon"), "{e}");
    }
}
