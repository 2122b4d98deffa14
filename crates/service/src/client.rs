//! A small HTTP/1.1 client over tokio and hyper: the CLI's way to the daemon (Unix socket,
//! or TCP — `http://` on loopback, `https://` with the daemon's CA — with a bearer token)
//! and the daemon's way to alert webhooks (`http://`).

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Result, ServiceError};

/// An `http://` or `https://host:port/path` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether it is `https://`.
    pub tls: bool,
    /// `host:port`.
    pub authority: String,
    /// `/path?query`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<HttpUrl> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            _ => {
                return Err(ServiceError::Invalid(format!(
                    "{url:?}: only http:// and https:// URLs are supported"
                )))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(ServiceError::Invalid(format!(
                "{url:?}: expected http[s]://host:port/path"
            )));
        }
        let has_port = if authority.starts_with('[') {
            authority.contains("]:")
        } else {
            authority.contains(':')
        };
        let authority = match (has_port, tls) {
            (true, _) => authority.to_string(),
            (false, false) => format!("{authority}:80"),
            (false, true) => format!("{authority}:443"),
        };
        Ok(HttpUrl {
            tls,
            authority,
            path: path.to_string(),
        })
    }

    /// The host part of the authority (without port and brackets), as TLS names it.
    pub fn host(&self) -> &str {
        host_of(&self.authority)
    }
}

fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Where the daemon is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its TCP listener, with the bearer token.
    Tcp {
        /// `host:port`.
        authority: String,
        /// The token.
        token: Option<String>,
        /// For `https://`: the TLS configuration that trusts the daemon's CA.
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix socket {}", p.display()),
            Endpoint::Tcp { authority, tls, .. } => write!(
                f,
                "{}://{authority}",
                if tls.is_some() { "https" } else { "http" }
            ),
        }
    }
}

/// An answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body when the status is 2xx, else the daemon's `{"error": …}` as an error.
    pub fn ok(self) -> Result<Response> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.text());
        Err(ServiceError::Remote {
            status: self.status,
            message,
        })
    }
}

/// One request: `method path` with an optional JSON body, `accept` as the Accept header.
pub async fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    accept: &str,
    timeout: Duration,
) -> Result<Response> {
    let fut = async {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::ACCEPT, accept);
        let host = match endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp {
                authority, token, ..
            } => {
                if let Some(t) = token {
                    builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                authority.clone()
            }
        };
        builder = builder.header(hyper::header::HOST, host);
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ServiceError::Invalid(format!("invalid request {method} {path}: {e}")))?;
        match endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                    ServiceError::Client(format!(
                        "cannot connect to the daemon at {}: {e} (is `ambulance serve` running? \
                         use --socket or --url)",
                        p.display()
                    ))
                })?;
                send(s, req, endpoint).await
            }
            Endpoint::Tcp { authority, tls, .. } => {
                let s = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| {
                        ServiceError::Client(format!("cannot connect to {endpoint}: {e}"))
                    })?;
                match tls {
                    None => send(s, req, endpoint).await,
                    Some(config) => {
                        let name =
                            rustls::pki_types::ServerName::try_from(host_of(authority).to_string())
                                .map_err(|e| ServiceError::Invalid(format!("{endpoint}: {e}")))?;
                        let s = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, s)
                            .await
                            .map_err(|e| {
                                ServiceError::Client(format!("TLS with {endpoint} failed: {e}"))
                            })?;
                        send(s, req, endpoint).await
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        ServiceError::Client(format!(
            "{endpoint} did not answer {method} {path} within {} s",
            timeout.as_secs_f64()
        ))
    })?
}

async fn send<S>(
    stream: S,
    req: hyper::Request<Full<Bytes>>,
    endpoint: &Endpoint,
) -> Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| {
        ServiceError::Client(format!("HTTP exchange with {endpoint} failed: {e}"))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(err)?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(err)?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(err)?
        .to_bytes()
        .to_vec();
    drop(sender);
    conn.abort();
    Ok(Response {
        status,
        content_type,
        body,
    })
}

/// [`request`] from synchronous code (the CLI): runs it on a private runtime.
pub fn blocking_request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    accept: &str,
    timeout: Duration,
) -> Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServiceError::Client(format!("cannot start an I/O runtime: {e}")))?;
    rt.block_on(request(endpoint, method, path, body, accept, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = HttpUrl::parse("http://127.0.0.1:9000/hook?x=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!(u.path, "/hook?x=1");
        let u = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!(u.authority, "localhost:80");
        assert_eq!(u.path, "/");
        let u = HttpUrl::parse("https://ambulance.example/").unwrap();
        assert!(u.tls);
        assert_eq!(u.authority, "ambulance.example:443");
        assert_eq!(u.host(), "ambulance.example");
        assert_eq!(HttpUrl::parse("https://[::1]:7878").unwrap().host(), "::1");
        assert!(HttpUrl::parse("ftp://x/").is_err());
        assert!(HttpUrl::parse("http:///x").is_err());
    }
}
