//! The API's listeners, shared by the host daemon and the fleet controller: a Unix socket
//! that is 0600 from its creation, an optional TCP listener (bearer token, TLS off
//! loopback), and one loop that serves both until a signal, a listener's failure or a
//! companion task ends it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ApiConfig;
use crate::error::{Result, ServiceError};
use crate::tls;

/// Binds the Unix socket at `path` with mode 0600 from its creation (no window in which
/// it is more open), replacing a stale socket file but refusing to steal one another
/// `who` (the daemon, the controller) is listening on.
pub fn bind_unix(path: &Path, who: &str) -> Result<UnixListener> {
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
                "another {who} is listening on {}",
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
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| ServiceError::io("cannot listen on", path, e))?;
    // Belt and braces: a umask cannot widen, but say what the mode is.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServiceError::io("cannot restrict the permissions of", path, e))?;
    Ok(listener)
}

/// The TCP half of the API: the listener, the token its clients present, and TLS when
/// configured.
struct Tcp {
    listener: TcpListener,
    token: String,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Bound API listeners, not yet serving.
pub struct Listeners {
    socket: PathBuf,
    unix: UnixListener,
    tcp: Option<Tcp>,
}

impl Listeners {
    /// Binds what `api` configures. TLS files are read here, so a bad certificate stops
    /// start-up with the file's name rather than failing the first client.
    pub async fn bind(api: &ApiConfig, who: &str) -> Result<Self> {
        let tls = api.tls.as_ref().map(tls::server_config).transpose()?;
        let unix = bind_unix(&api.socket, who)?;
        let tcp = match (api.tcp, &api.bearer_token) {
            (Some(addr), Some(token)) => Some(Tcp {
                listener: TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServiceError::io("cannot listen on", addr.to_string(), e))?,
                token: token.clone(),
                tls,
            }),
            (Some(addr), None) => {
                return Err(ServiceError::Invalid(format!(
                    "the TCP listener {addr} needs a bearer token"
                )))
            }
            (None, _) => None,
        };
        Ok(Self {
            socket: api.socket.clone(),
            unix,
            tcp,
        })
    }

    /// Where the API listens, for the start-up log: `unix:PATH[, https://ADDR]`.
    pub fn describe(&self) -> String {
        let mut out = format!("unix:{}", self.socket.display());
        if let Some(tcp) = &self.tcp {
            let scheme = if tcp.tls.is_some() { "https" } else { "http" };
            match tcp.listener.local_addr() {
                Ok(addr) => out.push_str(&format!(", {scheme}://{addr}")),
                Err(_) => out.push_str(&format!(", {scheme}://?")),
            }
        }
        out
    }

    /// Serves `app` on the Unix socket (its mode is the access control) and, behind the
    /// bearer token, on TCP, until SIGINT or SIGTERM (`Ok`), a listener fails, or
    /// `companion` ends (its result). The socket file is removed on the way out.
    pub async fn serve_until_signal(
        self,
        app: Router,
        companion: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        let Self { socket, unix, tcp } = self;
        let mut servers = tokio::task::JoinSet::new();
        if let Some(Tcp {
            listener,
            token,
            tls,
        }) = tcp
        {
            let app = with_bearer_token(app.clone(), token);
            match tls {
                Some(config) => servers.spawn(tls::serve(listener, config, app)),
                None => servers.spawn(async move { axum::serve(listener, app).await }),
            };
        }
        servers.spawn(async move { axum::serve(unix, app).await });
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
            r = companion => r,
        };
        servers.abort_all();
        let _ = std::fs::remove_file(&socket);
        outcome
    }
}

/// `app` behind a bearer-token check (TCP listeners): a request without
/// `Authorization: Bearer <token>` gets 401 and `{"error": …}`, the APIs' convention.
pub fn with_bearer_token(app: Router, token: String) -> Router {
    app.layer(middleware::from_fn_with_state(
        Arc::new(token),
        require_token,
    ))
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({
                "error": "this listener requires `Authorization: Bearer <token>` (api.bearer_token)"
            })),
        )
            .into_response(),
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
