//! Validators: checks over a frozen guest's kernel structures that turn corruption into
//! findings a person can act on.
//!
//! A [`Validator`] declares what it applies to and, given a [`Context`] (the guest's
//! [`Program`], the host's boot-time copy of its registration descriptor, the failure,
//! the vCPUs), appends [`Finding`]s. The [`Registry`] holds the built-ins
//! ([`builtins::all`]) plus any declarative [`rules`] loaded from TOML; which validators
//! run, and their walk budgets, come from a [`ValidationConfig`].
//!
//! Walks are shared: the first validator that needs a root's elements walks it (bounded,
//! see [`ambulance_introspect::walk`]) and the result is cached in the context, together
//! with how the walk ended, for the report's "structures walked" section.
//!
//! Everything is bounded: every root enumeration by the walk limits, every validator's
//! loop by the validation budget and the diagnosis deadline, every validator's findings
//! per root by a cap. A validator cut short keeps what it found and says what it did not
//! check in a finding of kind [`FindingKind::Diagnosis`]; a root enumeration cut short
//! says so in its `structures` entry. Inconsistencies in a structure whose lock was held
//! are reported as mid-update, not as corruption. The [`context`] module has the details.

#![forbid(unsafe_code)]

pub mod builtins;
pub mod context;
pub mod log;
pub mod rules;

use std::time::Instant;

pub use ambulance_report::{Finding, FindingKind, Phase, Severity, StructureWalk};
pub use context::{Context, Element};

/// This crate's error type (validators themselves never fail: what they cannot read
/// becomes a finding).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    RuleFileIo {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A rule file is malformed.
    #[error("rule file {path}, line {line}: {reason}")]
    Rule {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The configuration names a validator that does not exist.
    #[error("unknown validator {name:?} in the configuration (known: {known})")]
    UnknownValidator {
        /// The name.
        name: String,
        /// The known names.
        known: String,
    },
}

/// A check over a guest.
pub trait Validator: Send + Sync {
    /// A short, stable name (`list-integrity`), used in findings and configuration.
    fn name(&self) -> &str;
    /// What it applies to, for people (`lists`, `roots with magic hints`, …).
    fn applies_to(&self) -> &str;
    /// Whether it has anything to check in this guest.
    fn applicable(&self, ctx: &Context<'_>) -> bool;
    /// Runs the check, appending findings.
    fn run(&self, ctx: &Context<'_>, findings: &mut Vec<Finding>);
}

/// Which validators run and with what budgets.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Run only these (all when empty).
    pub enabled: Vec<String>,
    /// Never run these.
    pub disabled: Vec<String>,
    /// Most elements any one walk visits.
    pub max_nodes: u64,
    /// Time budget of one walk, in milliseconds.
    pub walk_budget_ms: u64,
    /// Time budget of loading what the guest's kernel keeps about itself (decoding a
    /// Linux kernel's kallsyms, indexing its BTF, reading its printk ring), in
    /// milliseconds: a one-time cost per diagnosis, not a walk.
    pub load_budget_ms: u64,
    /// Time budget of the whole validation, in milliseconds: validators stop when it is
    /// spent (and say what they did not check); those that would start after it are
    /// skipped and say so.
    pub total_budget_ms: u64,
    /// When the whole diagnosis must be done (not part of a configuration file): every
    /// phase stops at it and the report says what was not done. `None`: only the
    /// budgets above bound it. Set it through `ambulance_diagnose::Options`.
    #[serde(skip)]
    pub deadline: Option<Instant>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            enabled: Vec::new(),
            disabled: Vec::new(),
            max_nodes: 1 << 20,
            walk_budget_ms: 250,
            load_budget_ms: 5_000,
            total_budget_ms: 5_000,
            deadline: None,
        }
    }
}

/// The set of validators to run.
pub struct Registry {
    validators: Vec<Box<dyn Validator>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl Registry {
    /// The built-in validators.
    pub fn builtin() -> Registry {
        Registry {
            validators: builtins::all(),
        }
    }

    /// Adds a validator (rules from a file, a plugin).
    pub fn add(&mut self, v: Box<dyn Validator>) {
        self.validators.push(v);
    }

    /// Names of all validators.
    pub fn names(&self) -> Vec<&str> {
        self.validators.iter().map(|v| v.name()).collect()
    }

    /// Checks that a configuration only names known validators.
    pub fn check_config(&self, config: &ValidationConfig) -> Result<(), Error> {
        let names = self.names();
        for name in config.enabled.iter().chain(&config.disabled) {
            if !names.contains(&name.as_str()) {
                return Err(Error::UnknownValidator {
                    name: name.clone(),
                    known: names.join(", "),
                });
            }
        }
        Ok(())
    }

    /// Runs every enabled, applicable validator under the validation budget
    /// (`config.total_budget_ms`, and the context's deadline); returns the findings (most
    /// severe first) and one timeline phase per validator. A validator that would start
    /// after the budget is spent is skipped, and a finding of kind diagnosis says so.
    pub fn run(&self, ctx: &Context<'_>, config: &ValidationConfig) -> (Vec<Finding>, Vec<Phase>) {
        let mut findings = Vec::new();
        let mut phases = Vec::new();
        ctx.start_budget(config.total_budget_ms);
        for v in &self.validators {
            let name = v.name();
            let wanted = (config.enabled.is_empty() || config.enabled.iter().any(|n| n == name))
                && !config.disabled.iter().any(|n| n == name);
            if !wanted || !v.applicable(ctx) {
                continue;
            }
            if let Some(why) = ctx.stop_reason() {
                findings.push(
                    ctx.note(
                        "validation",
                        Severity::Warning,
                        name,
                        format!("validator {name} skipped: {why}"),
                    )
                    .with_kind(FindingKind::Diagnosis),
                );
                continue;
            }
            let t = Instant::now();
            v.run(ctx, &mut findings);
            phases.push(Phase {
                name: format!("validator:{name}"),
                duration_us: t.elapsed().as_micros() as u64,
            });
        }
        ctx.end_budget();
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        (findings, phases)
    }
}
