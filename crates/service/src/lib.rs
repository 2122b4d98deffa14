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
pub mod listen;
pub mod metrics;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod worker;

pub use config::ServiceConfig;
pub use error::{Result, ServiceError};
pub use supervisor::{Notice, Service};

/// Work that runs beside the daemon for as long as it serves (the fleet agent). When it
/// ends with an error the daemon stops with that error; when it ends well the daemon
/// serves on.
pub type Companion = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Runs the daemon until SIGINT or SIGTERM: the service, its Unix socket API and, when
/// configured, its TCP API.
pub async fn serve(config: ServiceConfig) -> Result<()> {
    serve_with(config, |_| Ok(None)).await
}

/// [`serve`], with a companion started once the service exists and before its guests
/// boot (so it sees every [`Notice`]).
pub async fn serve_with(
    config: ServiceConfig,
    companion: impl FnOnce(&std::sync::Arc<Service>) -> Result<Option<Companion>>,
) -> Result<()> {
    // The store is reconciled (Service::new) before the socket exists: a client that
    // sees the socket sees a consistent store.
    let api = config.api.clone();
    let svc = Service::new(config)?;
    let listeners = listen::Listeners::bind(&api, "daemon").await?;
    let companion = companion(&svc)?;
    svc.run()?;
    tracing::info!(
        api = %listeners.describe(),
        data_dir = %svc.config().data_dir.display(),
        guests = svc.config().guests.len(),
        "ambulance serving"
    );
    let companion = async move {
        match companion {
            Some(c) => c.await,
            None => std::future::pending().await,
        }
    };
    let outcome = listeners
        .serve_until_signal(api::router(svc.clone()), companion)
        .await;
    tracing::info!("ambulance stopping");
    svc.shutdown();
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
        let _l = crate::listen::bind_unix(&sock, "daemon").unwrap();
        assert_eq!(mode(&sock), 0o600);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        // A second daemon on the same socket is refused.
        let e = crate::listen::bind_unix(&sock, "daemon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another daemon"), "{e}");
    }
}
