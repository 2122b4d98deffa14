//! The CLI's side of the fleet API: requests over the controller's Unix socket or its TCP
//! listener (bearer token), through the host client's HTTP code, and the one command that
//! makes files — `fleet bootstrap`, whose key is made here and never leaves.

use std::path::Path;
use std::time::Duration;

use ambulance_service::client::{blocking_request, Endpoint, Response};
use serde_json::Value;

use crate::error::{FleetError, Result};
use crate::pki;

/// One request; a non-2xx answer is [`FleetError::Remote`] with the controller's message
/// (and, for an expired transaction, the transaction in `extra`).
pub fn call(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&Value>,
    accept: &str,
    timeout: Duration,
) -> Result<Response> {
    let body = body.map(|b| b.to_string().into_bytes());
    let r = blocking_request(endpoint, method, path, body, accept, timeout)
        .map_err(|e| FleetError::Client(e.to_string()))?;
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    let message = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| r.text());
    Err(FleetError::Remote {
        status: r.status,
        message,
    })
}

/// A request with a raw body (an image), its answer as JSON.
pub fn send_bytes(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Value> {
    let r = blocking_request(
        endpoint,
        method,
        path,
        Some(body),
        "application/json",
        timeout,
    )
    .map_err(|e| FleetError::Client(e.to_string()))?;
    let v = serde_json::from_slice::<Value>(&r.body);
    if (200..300).contains(&r.status) {
        return v
            .map_err(|e| FleetError::Client(format!("the controller's answer is not JSON: {e}")));
    }
    let message = v
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| r.text());
    Err(FleetError::Remote {
        status: r.status,
        message,
    })
}

/// [`call`], its answer as JSON.
pub fn json(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value> {
    let r = call(endpoint, method, path, body, "application/json", timeout)?;
    serde_json::from_slice(&r.body)
        .map_err(|e| FleetError::Client(format!("the controller's answer is not JSON: {e}")))
}

/// `ambulance fleet bootstrap`: makes a key and a signing request here, has the
/// controller sign a zero certificate for `subscriber`, and writes `out/zero.pem` (the
/// certificate and key, 0600) and `out/ca.pem`. The zero certificate's expiry.
pub fn bootstrap(endpoint: &Endpoint, subscriber: &str, out: &Path) -> Result<String> {
    crate::names::check("subscriber", subscriber)?;
    let (key, csr) = pki::key_and_csr("zero")?;
    let answer = json(
        endpoint,
        "POST",
        &format!("/v1/subscribers/{subscriber}/zero"),
        Some(&serde_json::json!({ "csr": csr })),
        Duration::from_secs(30),
    )?;
    let (Some(cert), Some(ca)) = (answer["certificate"].as_str(), answer["ca"].as_str()) else {
        return Err(FleetError::Client(
            "the controller's answer has no certificate".into(),
        ));
    };
    pki::create_private_dir(out)?;
    pki::write_private(&out.join("zero.pem"), &format!("{cert}{key}"))?;
    pki::write_public(&out.join("ca.pem"), ca)?;
    Ok(pki::cert_info(cert)?.not_after.to_string())
}
