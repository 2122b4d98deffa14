//! `ambulance fleet …`: the controller (`init`, `serve`) and the operator's commands
//! against its API (`bootstrap`, `hosts`, `reports`, `report`, `command`, `txn`, `revoke`,
//! `reenrol`, `image`, `pool`). See `ambulance_fleet`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use ambulance_fleet::controller::ControllerConfig;
use ambulance_fleet::FleetError;
use ambulance_service::client::Endpoint;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{out, path_segment, print_reports, query, s};
use crate::diagnose::Format;
use crate::CliError;

impl From<FleetError> for CliError {
    fn from(e: FleetError) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// `ambulance fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

impl FleetArgs {
    /// Whether this runs the controller (which logs at info).
    pub fn serves(&self) -> bool {
        matches!(self.command, FleetCommand::Serve(_))
    }
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Write the fleet CA, the certificates and the NATS server configuration the
    /// controller and the engine need (keeps what exists); prints the server's
    /// configuration file.
    Init(ConfigArg),
    /// Run the controller: enrolment, registry, transactions, the fleet API.
    Serve(ConfigArg),
    /// Have the controller sign a zero certificate for a subscriber (the key is made
    /// here) and write DIR/zero.pem and DIR/ca.pem for its hosts' [fleet] bootstrap.
    Bootstrap(BootstrapArgs),
    /// List the enrolled hosts and whether each is available.
    Hosts(ListArgs),
    /// List the diagnoses hosts published.
    Reports(ReportsArgs),
    /// Show one report, as the host stored it.
    Report(ReportArgs),
    /// Run an instruction on a host, by transaction.
    Command(CommandArgs),
    /// Show a transaction and its result.
    Txn(TxnArgs),
    /// Remove a host's access to the engine at once.
    Revoke(HostArg),
    /// Let an enrolled or revoked host id enrol again (once).
    Reenrol(HostArg),
    /// The image library: add, list, remove role images.
    Image(ImageArgs),
    /// The pool: desired counts per role, what runs, what is being repurposed;
    /// `pool set web=2 batch=1` sets counts.
    Pool(PoolArgs),
}

#[derive(Debug, Args)]
struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
    #[command(flatten)]
    client: FleetClient,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Store a kernel under its SHA-256 with the role's boot settings.
    Add {
        /// The role it boots.
        role: String,
        /// The kernel (an ELF file; `test` for the built-in test kernel).
        kernel: String,
        /// The kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// RAM (e.g. 32M, 1G).
        #[arg(long, default_value = "32M")]
        memory: String,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
    },
    /// List the library.
    Ls {
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (refused while a slot runs it).
    Rm {
        /// Its digest (SHA-256, hex).
        digest: String,
        /// Only this role's manifest of it.
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Debug, Args)]
struct PoolArgs {
    #[command(subcommand)]
    command: Option<PoolCommand>,
    #[command(flatten)]
    client: FleetClient,
    /// Print the controller's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Set desired counts: role=N … (0 removes a role; roles not named keep theirs).
    Set {
        /// role=N pairs.
        #[arg(required = true, value_name = "ROLE=N")]
        counts: Vec<String>,
    },
}

/// Where the controller is (the options may follow a subcommand: `fleet pool set --config F …`).
#[derive(Clone, Debug, Default, Args)]
pub struct FleetClient {
    /// The controller's configuration (its API socket is read from it).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The controller's Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["url", "config"], global = true)]
    pub socket: Option<PathBuf>,
    /// The controller's TCP listener, e.g. http://127.0.0.1:7979 (needs --token).
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// The bearer token of the TCP listener.
    #[arg(long, value_name = "TOKEN", requires = "url", global = true)]
    pub token: Option<String>,
    /// The CA certificate that signed an https:// controller's certificate.
    #[arg(long, value_name = "PEM", requires = "url", global = true)]
    pub ca: Option<PathBuf>,
}

impl FleetClient {
    fn endpoint(&self) -> Result<Endpoint, CliError> {
        if let Some(url) = &self.url {
            return crate::client::tcp_endpoint(
                url,
                self.token.clone(),
                self.ca.as_deref(),
                "controller",
            );
        }
        if let Some(s) = &self.socket {
            return Ok(Endpoint::Unix(s.clone()));
        }
        let config = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("fleet.toml"));
        let cfg = ControllerConfig::load(&config).map_err(|e| {
            CliError::Usage(format!(
                "{e} (name the controller with --config FILE, --socket PATH or --url URL)"
            ))
        })?;
        Ok(Endpoint::Unix(cfg.api.socket))
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        t: Duration,
    ) -> Result<Value, CliError> {
        Ok(ambulance_fleet::client::json(
            &self.endpoint()?,
            method,
            path,
            body,
            t,
        )?)
    }
}

/// `--config FILE` of the controller.
#[derive(Debug, Args)]
struct ConfigArg {
    /// The controller's configuration.
    #[arg(long, value_name = "FILE", default_value = "fleet.toml")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct BootstrapArgs {
    #[command(flatten)]
    client: FleetClient,
    /// The subscriber the zero certificate carries.
    #[arg(long)]
    subscriber: String,
    /// Where to write zero.pem and ca.pem.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    client: FleetClient,
    /// Print the controller's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReportsArgs {
    #[command(flatten)]
    client: FleetClient,
    /// Only this host's.
    #[arg(long)]
    host: Option<String>,
    /// Only this guest's.
    #[arg(long)]
    guest: Option<String>,
    /// Only this cause.
    #[arg(long)]
    cause: Option<String>,
    /// Only failures since this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    since: Option<String>,
    /// Print the controller's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReportArgs {
    #[command(flatten)]
    client: FleetClient,
    /// The report id.
    id: String,
    /// The host (when two hosts published the same id).
    #[arg(long)]
    host: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Debug, Args)]
struct CommandArgs {
    #[command(flatten)]
    client: FleetClient,
    /// The host.
    host: String,
    #[command(subcommand)]
    instruction: Instruction,
    /// Return at once with the transaction id instead of waiting for its end.
    #[arg(long, global = true)]
    no_wait: bool,
    /// How long the host has to take it (default: the controller's command_timeout_ms).
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The subscriber (checked against the host's).
    #[arg(long, global = true)]
    subscriber: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Instruction {
    /// Diagnose a running guest now (freeze, diagnose, resume).
    Diagnose {
        /// The guest.
        guest: String,
    },
    /// Release a held guest.
    Release {
        /// The guest.
        guest: String,
        /// Destroy it instead of restarting it.
        #[arg(long)]
        destroy: bool,
    },
    /// Set a guest's boot flag.
    BootFlag {
        /// The guest.
        guest: String,
        /// primary or rescue.
        #[arg(value_parser = ["primary", "rescue"])]
        flag: String,
    },
    /// Repurpose a slot: boot it from a library image of a role.
    Repurpose {
        /// The slot (a configured guest).
        guest: String,
        /// The role.
        role: String,
        /// The image's digest (SHA-256, hex).
        digest: String,
        /// How long its kernel has to register (default 30 s).
        #[arg(long, value_parser = humantime::parse_duration)]
        register_timeout: Option<Duration>,
    },
}

#[derive(Debug, Args)]
struct TxnArgs {
    #[command(flatten)]
    client: FleetClient,
    /// The transaction id.
    id: String,
    /// Print the controller's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HostArg {
    #[command(flatten)]
    client: FleetClient,
    /// The host id.
    host: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `ambulance fleet …`.
pub fn run(args: FleetArgs) -> Result<(), CliError> {
    match args.command {
        FleetCommand::Init(a) => {
            let cfg = ControllerConfig::load(&a.config)?;
            let done = ambulance_fleet::controller::init(&cfg)?;
            for f in &done.created {
                eprintln!("created {}", f.display());
            }
            eprintln!(
                "run the engine with: nats-server -c {}",
                done.server_config.display()
            );
            out(&format!("{}\n", done.server_config.display()));
            Ok(())
        }
        FleetCommand::Serve(a) => {
            let cfg = ControllerConfig::load(&a.config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ambulance-fleet")
                .build()
                .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
            rt.block_on(ambulance_fleet::controller::serve(cfg))?;
            Ok(())
        }
        FleetCommand::Bootstrap(a) => {
            let until =
                ambulance_fleet::client::bootstrap(&a.client.endpoint()?, &a.subscriber, &a.out)?;
            out(&format!(
                "zero certificate of subscriber {} written to {} (zero.pem, ca.pem); valid until {until}\n",
                a.subscriber,
                a.out.display()
            ));
            Ok(())
        }
        FleetCommand::Hosts(a) => {
            let v = a.client.json("GET", "/v1/hosts", None, TIMEOUT)?;
            if a.json {
                out(&format!("{v:#}\n"));
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                out("no hosts enrolled\n");
                return Ok(());
            }
            let mut text = format!(
                "{:<20} {:<14} {:<12} {:<26} {:>7} {:>7}  {}\n",
                "HOST",
                "SUBSCRIBER",
                "STATE",
                "LAST SEEN",
                "GUESTS",
                "REPORTS",
                "CERTIFICATE UNTIL"
            );
            for h in &list {
                let state = if h["revoked"] == true {
                    "revoked"
                } else if h["available"] == true {
                    "available"
                } else {
                    "unavailable"
                };
                text += &format!(
                    "{:<20} {:<14} {:<12} {:<26} {:>7} {:>7}  {}\n",
                    s(&h["host"]),
                    s(&h["subscriber"]),
                    state,
                    s(&h["last_seen"]),
                    h["health"]["guests"]
                        .as_array()
                        .map(|g| g.len().to_string())
                        .unwrap_or("-".into()),
                    s(&h["reports"]),
                    s(&h["not_after"]),
                );
            }
            out(&text);
            Ok(())
        }
        FleetCommand::Reports(a) => {
            let q = query(&[
                ("host", &a.host),
                ("guest", &a.guest),
                ("cause", &a.cause),
                ("since", &a.since),
            ]);
            let v = a
                .client
                .json("GET", &format!("/v1/reports{q}"), None, TIMEOUT)?;
            print_reports(&v, a.json, true);
            Ok(())
        }
        FleetCommand::Report(a) => {
            let id = path_segment(&a.id)?;
            let accept = match a.format {
                Format::Json => "application/json",
                Format::Text => "text/plain",
            };
            let q = query(&[("host", &a.host)]);
            let r = ambulance_fleet::client::call(
                &a.client.endpoint()?,
                "GET",
                &format!("/v1/reports/{id}{q}"),
                None,
                accept,
                TIMEOUT,
            )?;
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&r.body);
            let _ = o.flush();
            Ok(())
        }
        FleetCommand::Command(a) => command(a),
        FleetCommand::Image(a) => image(a),
        FleetCommand::Pool(a) => pool(a),
        FleetCommand::Txn(a) => {
            let id = path_segment(&a.id)?;
            let v = a
                .client
                .json("GET", &format!("/v1/transactions/{id}"), None, TIMEOUT)?;
            if a.json {
                out(&format!("{v:#}\n"));
            } else {
                out(&describe_txn(&v));
            }
            Ok(())
        }
        FleetCommand::Revoke(a) => {
            let h = path_segment(&a.host)?;
            a.client.json(
                "POST",
                &format!("/v1/hosts/{h}/revoke"),
                Some(&json!({})),
                TIMEOUT,
            )?;
            out(&format!(
                "host {h} revoked: its certificate no longer reaches the engine\n"
            ));
            Ok(())
        }
        FleetCommand::Reenrol(a) => {
            let h = path_segment(&a.host)?;
            a.client.json(
                "POST",
                &format!("/v1/hosts/{h}/reenrol"),
                Some(&json!({})),
                TIMEOUT,
            )?;
            out(&format!("host {h} may enrol again (once)\n"));
            Ok(())
        }
    }
}

fn image(a: ImageArgs) -> Result<(), CliError> {
    let client = a.client;
    match a.command {
        ImageCommand::Add {
            role,
            kernel,
            cmdline,
            memory,
            vcpus,
        } => {
            let path = crate::kernels::resolve(&kernel)?;
            let bytes = std::fs::read(&path).map_err(|e| {
                CliError::Usage(format!("cannot read kernel {}: {e}", path.display()))
            })?;
            let q = query(&[
                ("role", &Some(role)),
                ("cmdline", &Some(cmdline)),
                ("memory", &Some(memory)),
                ("vcpus", &Some(vcpus.to_string())),
            ]);
            let v = ambulance_fleet::client::send_bytes(
                &client.endpoint()?,
                "POST",
                &format!("/v1/images{q}"),
                bytes,
                Duration::from_secs(600),
            )?;
            out(&format!(
                "image {} added for role {} ({} bytes)\n",
                s(&v["digest"]),
                s(&v["role"]),
                s(&v["size"])
            ));
            Ok(())
        }
        ImageCommand::Ls { json } => {
            let v = client.json("GET", "/v1/images", None, TIMEOUT)?;
            if json {
                out(&format!("{v:#}\n"));
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                out("the library is empty\n");
                return Ok(());
            }
            let mut text = format!(
                "{:<12} {:<64} {:>10} {:>8} {:>5}  {}\n",
                "ROLE", "DIGEST", "SIZE", "MEMORY", "VCPUS", "CMDLINE"
            );
            for m in &list {
                text += &format!(
                    "{:<12} {:<64} {:>10} {:>7}M {:>5}  {}\n",
                    s(&m["role"]),
                    s(&m["digest"]),
                    s(&m["size"]),
                    m["memory_bytes"].as_u64().unwrap_or(0) >> 20,
                    s(&m["vcpus"]),
                    s(&m["cmdline"])
                );
            }
            out(&text);
            Ok(())
        }
        ImageCommand::Rm { digest, role } => {
            let d = path_segment(&digest)?;
            let q = query(&[("role", &role)]);
            let v = client.json("DELETE", &format!("/v1/images/{d}{q}"), None, TIMEOUT)?;
            for m in v.as_array().cloned().unwrap_or_default() {
                out(&format!(
                    "image {} of role {} removed\n",
                    s(&m["digest"]),
                    s(&m["role"])
                ));
            }
            Ok(())
        }
    }
}

/// Parses `role=N` pairs.
fn counts(pairs: &[String]) -> Result<std::collections::BTreeMap<String, u32>, CliError> {
    let mut out = std::collections::BTreeMap::new();
    for p in pairs {
        let Some((role, n)) = p.split_once('=') else {
            return Err(CliError::Usage(format!(
                "{p:?}: expected ROLE=N, e.g. web=2"
            )));
        };
        let n: u32 = n
            .parse()
            .map_err(|_| CliError::Usage(format!("{p:?}: {n:?} is not a count (0 or more)")))?;
        if out.insert(role.to_string(), n).is_some() {
            return Err(CliError::Usage(format!("role {role} is named twice")));
        }
    }
    Ok(out)
}

fn describe_pool(v: &Value) -> String {
    let desired = v["desired"].as_object().cloned().unwrap_or_default();
    let actual = v["actual"].as_object().cloned().unwrap_or_default();
    let missing = v["missing"].as_object().cloned().unwrap_or_default();
    let mut roles: Vec<&String> = desired.keys().chain(actual.keys()).collect();
    roles.sort();
    roles.dedup();
    let mut text = format!(
        "pool: {}; {} spare slot(s)\n{:<16} {:>8} {:>8} {:>8}\n",
        if v["converged"] == true {
            "converged"
        } else {
            "converging"
        },
        s(&v["spare"]),
        "ROLE",
        "DESIRED",
        "ACTUAL",
        "MISSING"
    );
    for r in roles {
        text += &format!(
            "{:<16} {:>8} {:>8} {:>8}\n",
            r,
            desired.get(r).map(s).unwrap_or_else(|| "0".into()),
            actual.get(r).map(s).unwrap_or_else(|| "0".into()),
            missing.get(r).map(s).unwrap_or_else(|| "0".into()),
        );
    }
    let flights = v["in_flight"].as_array().cloned().unwrap_or_default();
    if !flights.is_empty() {
        text += "in flight:\n";
        for f in &flights {
            text += &format!(
                "  {} {}/{}: {} -> {} (image {})\n",
                s(&f["txn"]),
                s(&f["host"]),
                s(&f["guest"]),
                f["from"].as_str().unwrap_or("spare"),
                s(&f["role"]),
                &s(&f["digest"]).chars().take(12).collect::<String>()
            );
        }
    }
    for b in v["blocked"].as_array().cloned().unwrap_or_default() {
        text += &format!("blocked: {}\n", s(&b));
    }
    text
}

fn pool(a: PoolArgs) -> Result<(), CliError> {
    let v = match a.command {
        Some(PoolCommand::Set { counts: c }) => {
            let body = json!({ "desired": counts(&c)? });
            a.client.json("PUT", "/v1/pool", Some(&body), TIMEOUT)?
        }
        None => a.client.json("GET", "/v1/pool", None, TIMEOUT)?,
    };
    if a.json {
        out(&format!("{v:#}\n"));
    } else {
        out(&describe_pool(&v));
    }
    Ok(())
}

fn describe_txn(v: &Value) -> String {
    let mut text = format!(
        "transaction {} on host {}: {}\n",
        s(&v["txn"]),
        s(&v["host"]),
        s(&v["status"])
    );
    let steps = v["result"]["steps"].as_array().cloned().unwrap_or_default();
    if let (Some(e), true) = (v["result"]["error"].as_str(), steps.is_empty()) {
        text += &format!("  {e}\n");
    }
    for step in &steps {
        let what = if step["ok"] == true {
            match step["output"]["id"].as_str() {
                Some(id) => format!("ok, report {id}"),
                None => match step["output"]["state"].as_str() {
                    Some(st) => format!("ok, guest now {st}"),
                    None => "ok".to_string(),
                },
            }
        } else {
            s(&step["error"])
        };
        text += &format!("  {} {}: {what}\n", s(&step["op"]), s(&step["guest"]));
    }
    text
}

fn command(a: CommandArgs) -> Result<(), CliError> {
    let host = path_segment(&a.host)?;
    let instruction = match &a.instruction {
        Instruction::Diagnose { guest } => json!({"op": "diagnose", "guest": guest}),
        Instruction::Release { guest, destroy } => json!({
            "op": "release", "guest": guest,
            "action": if *destroy { "destroy" } else { "restart" }
        }),
        Instruction::BootFlag { guest, flag } => {
            json!({"op": "boot-flag", "guest": guest, "flag": flag})
        }
        Instruction::Repurpose {
            guest,
            role,
            digest,
            register_timeout,
        } => {
            let mut i = json!({"op": "repurpose", "guest": guest, "role": role, "digest": digest});
            if let Some(t) = register_timeout {
                i["register_timeout_ms"] = json!(t.as_millis() as u64);
            }
            i
        }
    };
    let mut body = json!({ "host": host, "instructions": [instruction], "no_wait": a.no_wait });
    if let Some(t) = a.timeout {
        body["timeout_ms"] = json!(t.as_millis() as u64);
    }
    if let Some(s) = &a.subscriber {
        body["subscriber"] = json!(s);
    }
    let wait = a.timeout.unwrap_or(Duration::from_secs(3600)) + Duration::from_secs(660);
    let v = a
        .client
        .json("POST", "/v1/transactions", Some(&body), wait)?;
    if a.no_wait {
        out(&format!("{}\n", s(&v["txn"])));
        return Ok(());
    }
    out(&describe_txn(&v));
    match v["status"].as_str() {
        Some("ok") => Ok(()),
        Some(st) => Err(CliError::Failed(format!(
            "transaction {} {st}: {}",
            s(&v["txn"]),
            v["result"]["error"].as_str().unwrap_or("")
        ))),
        None => Err(CliError::Failed(
            "the controller's answer has no status".into(),
        )),
    }
}
