//! The commands that talk to a running daemon: `status`, `reports`, `report`,
//! `diagnose --guest`, `release`. They reach it over its Unix socket (`--socket`, default
//! the default data directory's) or over TCP (`--url` with `--token`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use ambulance_service::client::{blocking_request, Endpoint, HttpUrl, Response};
use clap::Args;
use serde_json::Value;

use crate::diagnose::Format;
use crate::CliError;

/// Where the daemon is.
#[derive(Clone, Debug, Default, Args)]
pub struct ClientArgs {
    /// The daemon's Unix socket (default: `ambulance.sock` in the default data directory).
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub socket: Option<PathBuf>,
    /// The daemon's TCP listener, e.g. http://127.0.0.1:7878, or https://host:7878 with
    /// --ca (needs --token).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The bearer token of the TCP listener.
    #[arg(long, value_name = "TOKEN", requires = "url")]
    pub token: Option<String>,
    /// With an https:// --url: the CA certificate (PEM) that signed the daemon's.
    #[arg(long, value_name = "PEM", requires = "url")]
    pub ca: Option<PathBuf>,
}

/// The endpoint of an API's TCP listener at `url` (`http://` or `https://`, address
/// only): `ca` is the CA certificate an `https://` `who` (daemon, controller) is
/// checked against.
pub(crate) fn tcp_endpoint(
    url: &str,
    token: Option<String>,
    ca: Option<&std::path::Path>,
    who: &str,
) -> Result<Endpoint, CliError> {
    let u = HttpUrl::parse(url)?;
    if u.path != "/" {
        return Err(CliError::Usage(format!(
            "--url {url}: give the {who}'s address only, e.g. http://127.0.0.1:7878"
        )));
    }
    let tls = match (u.tls, ca) {
        (true, Some(ca)) => Some(ambulance_service::tls::client_config(ca)?),
        (true, None) => {
            return Err(CliError::Usage(format!(
                "--url {url}: an https:// {who} needs --ca, the CA certificate that signed its certificate"
            )))
        }
        (false, Some(_)) => {
            return Err(CliError::Usage(format!(
                "--ca goes with an https:// --url, not {url}"
            )))
        }
        (false, None) => None,
    };
    Ok(Endpoint::Tcp {
        authority: u.authority,
        token,
        tls,
    })
}

impl ClientArgs {
    fn endpoint(&self) -> Result<Endpoint, CliError> {
        match &self.url {
            Some(url) => tcp_endpoint(url, self.token.clone(), self.ca.as_deref(), "daemon"),
            None => Ok(Endpoint::Unix(
                self.socket
                    .clone()
                    .unwrap_or_else(ambulance_service::config::default_socket),
            )),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        accept: &str,
        timeout: Duration,
    ) -> Result<Response, CliError> {
        let endpoint = self.endpoint()?;
        let body = body.map(|b| b.to_string().into_bytes());
        Ok(blocking_request(&endpoint, method, path, body, accept, timeout)?.ok()?)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CliError> {
        let r = self.call(method, path, body, "application/json", timeout)?;
        serde_json::from_slice(&r.body)
            .map_err(|e| CliError::Failed(format!("the daemon's answer is not JSON: {e}")))
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `ambulance status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the daemon's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `ambulance reports`.
#[derive(Debug, Args)]
pub struct ReportsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this guest's reports.
    #[arg(long, value_name = "ID")]
    pub guest: Option<String>,
    /// Only this cause (panic, watchdog_stall, degraded, operator, …).
    #[arg(long)]
    pub cause: Option<String>,
    /// Only failures since this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Print the daemon's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `ambulance report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The report id.
    pub id: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Options of `ambulance release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The guest.
    pub id: String,
    /// Destroy it instead of restarting it.
    #[arg(long)]
    pub destroy: bool,
}

/// Writes `text` to standard output (a closed pipe is not an error).
pub(crate) fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// A JSON value for a table cell: `-` for null, strings without quotes.
pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `ambulance status`.
pub fn status(args: StatusArgs) -> Result<(), CliError> {
    let guests = args.client.json("GET", "/v1/guests", None, TIMEOUT)?;
    if args.json {
        out(&format!("{guests:#}\n"));
        return Ok(());
    }
    let list = guests.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out("no guests (add [[guest]] entries to the daemon's configuration)\n");
        return Ok(());
    }
    let mut text = format!(
        "{:<16} {:<12} {:<12} {:<12} {:<8} {:>12} {:>8}  {}\n",
        "GUEST", "STATE", "IMAGE", "POLICY", "FLAG", "HEARTBEAT", "FAILURES", "LAST REPORT"
    );
    for g in &list {
        text += &format!(
            "{:<16} {:<12} {:<12} {:<12} {:<8} {:>12} {:>8}  {}{}\n",
            s(&g["name"]),
            s(&g["state"]),
            s(&g["image"]),
            s(&g["policy"]),
            s(&g["boot_flag"]),
            s(&g["heartbeat"]),
            s(&g["failures"]),
            s(&g["last_report"]),
            g["boot_error"]
                .as_str()
                .map(|e| format!("  (boot failed: {e})"))
                .unwrap_or_default()
        );
    }
    out(&text);
    Ok(())
}

/// `?k=v&…` of the pairs that are set, percent-encoded.
pub(crate) fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q += if q.is_empty() { "?" } else { "&" };
            q += k;
            q += "=";
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    q.push(b as char);
                } else {
                    q += &format!("%{b:02X}");
                }
            }
        }
    }
    q
}

/// Runs `ambulance reports`.
pub fn reports(args: ReportsArgs) -> Result<(), CliError> {
    let q = query(&[
        ("guest", &args.guest),
        ("cause", &args.cause),
        ("since", &args.since),
    ]);
    let list = args
        .client
        .json("GET", &format!("/v1/reports{q}"), None, TIMEOUT)?;
    print_reports(&list, args.json, false);
    Ok(())
}

/// Prints a report index answer: as JSON, or as a table (with a HOST column for the
/// fleet's).
pub(crate) fn print_reports(list: &Value, json: bool, host_column: bool) {
    if json {
        out(&format!("{list:#}\n"));
        return;
    }
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out("no reports\n");
        return;
    }
    let host = |h: &str| {
        if host_column {
            format!("{h:<16} ")
        } else {
            String::new()
        }
    };
    let mut text = format!(
        "{}{:<44} {:<14} {:<16} {:<24} {:<9} {}\n",
        host("HOST"),
        "ID",
        "GUEST",
        "CAUSE",
        "TIME",
        "WORST",
        "STATUS"
    );
    for r in &list {
        let status = match r["status"].as_str() {
            Some("ok") => "ok".to_string(),
            _ => s(&r["error"]),
        };
        text += &format!(
            "{}{:<44} {:<14} {:<16} {:<24} {:<9} {}\n",
            host(&s(&r["host"])),
            s(&r["id"]),
            s(&r["guest"]),
            s(&r["cause"]),
            s(&r["time"]),
            s(&r["severity"]["worst"]),
            status
        );
    }
    out(&text);
}

/// `id` if it is safe as one path segment of an API URL.
pub(crate) fn path_segment(id: &str) -> Result<&str, CliError> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(CliError::Usage(format!(
            "{id:?} is not a valid id (letters, digits, - _ .)"
        )));
    }
    Ok(id)
}

/// Runs `ambulance report ID`.
pub fn report(args: ReportArgs) -> Result<(), CliError> {
    let id = path_segment(&args.id)?;
    let accept = match args.format {
        Format::Json => "application/json",
        Format::Text => "text/plain",
    };
    let r = args
        .client
        .call("GET", &format!("/v1/reports/{id}"), None, accept, TIMEOUT)?;
    let mut text = r.text();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    out(&text);
    Ok(())
}

/// Runs `ambulance diagnose --guest ID`: the daemon freezes the guest briefly, diagnoses
/// it and resumes it; the report goes to stdout.
pub fn diagnose_guest(client: &ClientArgs, guest: &str, format: Format) -> Result<(), CliError> {
    let guest = path_segment(guest)?;
    let entry = client.json(
        "POST",
        &format!("/v1/guests/{guest}/diagnose"),
        Some(serde_json::json!({})),
        Duration::from_secs(600),
    )?;
    if entry["status"] != "ok" {
        return Err(CliError::Failed(format!(
            "{guest}: {} (index entry {})",
            s(&entry["error"]),
            s(&entry["id"])
        )));
    }
    report(ReportArgs {
        client: client.clone(),
        id: s(&entry["id"]),
        format,
    })
}

/// Runs `ambulance release ID`.
pub fn release(args: ReleaseArgs) -> Result<(), CliError> {
    let id = path_segment(&args.id)?;
    let action = if args.destroy { "destroy" } else { "restart" };
    let g = args.client.json(
        "POST",
        &format!("/v1/guests/{id}/release"),
        Some(serde_json::json!({ "action": action })),
        TIMEOUT,
    )?;
    out(&format!(
        "{id}: released ({action}); now {} on its {} image\n",
        s(&g["state"]),
        s(&g["image"])
    ));
    Ok(())
}
