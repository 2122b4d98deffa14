//! The ambulance daemon (`ambulance serve`): supervises guests — its own VMM's on KVM, and
//! guests QEMU runs, through QMP — diagnoses each failure in an isolated worker process,
//! stores reports durably, serves them over an HTTP API (Unix socket, optionally TCP with
//! a bearer token), alerts webhooks, exports metrics and applies each guest's recovery
//! policy.
//!
//! * [`config`]: the TOML configuration and its embedded defaults;
//! * [`supervisor`]: guests, failures, the diagnosis queue and recovery policies;
//! * [`worker`]: the diagnosis worker process and its protocol;
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
pub mod metrics;
pub mod store;
pub mod supervisor;
pub mod worker;

use std::path::Path;

pub use config::ServiceConfig;
pub use error::{Result, ServiceError};
pub use supervisor::{Notice, Service};

/// Binds the Unix socket at `path` with mode 0600, replacing a stale socket file but
/// refusing to steal one another daemon is listening on.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServiceError::io("cannot create directory", dir, e))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| ServiceError::io("cannot listen on", path, e))?;
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
