//! Declarative rules: checks on a root's elements written in TOML, no code needed.
//!
//! ```toml
//! [[rule]]
//! name = "pid-range"          # findings say validator = "rule:pid-range"
//! root = "tasks"              # a declared root
//! field = "pid"               # member of the element type (DWARF or VMCOREINFO), or
//! # offset = 8                # a byte offset instead of a field name
//! size = 4                    # bytes to read: 1, 2, 4 or 8 (default: the member's size, else 8)
//! check = "range"             # equals | in | range | non_null | points_into
//! min = 1                     # range: min and/or max (inclusive)
//! max = 64
//! # value = 0x57ac6e9d        # equals
//! # values = [0, 1, 2]        # in
//! # into_root = "tasks"       # points_into: the elements of another root, or
//! # lo = "0xffff888000000000"  # points_into: an explicit [lo, hi)
//! # hi = "0xffff888100000000"
//! # allow_null = true         # points_into: null is fine too
//! severity = "error"          # info | warning | error | critical (default error)
//! message = "pid out of range" # optional, added to every finding
//! ```
//!
//! Numbers may be TOML integers or `"0x…"` strings. A rule file is checked completely
//! at load; the first problem is refused with its line and the reason.

use std::ops::Range;

use ambulance_report::{Finding, Severity};
use serde::Deserialize;

use crate::context::RootFindings;
use crate::{Context, Error, Validator};

/// A number: a TOML integer or a `"0x…"`/decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => Ok(Num(i as u64)),
            Raw::Str(s) => {
                let t = s.trim();
                let v = match t.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => t.parse(),
                };
                v.map(Num)
                    .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number")))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    root: String,
    field: Option<String>,
    offset: Option<u64>,
    size: Option<u8>,
    check: String,
    min: Option<Num>,
    max: Option<Num>,
    value: Option<Num>,
    values: Option<Vec<Num>>,
    into_root: Option<String>,
    lo: Option<Num>,
    hi: Option<Num>,
    allow_null: Option<bool>,
    severity: Option<Severity>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleSpec>>,
}

/// Where a rule reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// A member of the element type, by name.
    Named(String),
    /// A byte offset.
    Offset(u64),
}

/// What a rule checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The field equals a value.
    Equals(u64),
    /// The field is one of these values.
    In(Vec<u64>),
    /// The field lies in `[min, max]`.
    Range { min: u64, max: u64 },
    /// The field is not zero.
    NonNull,
    /// The field points into another root's elements.
    IntoRoot { root: String, allow_null: bool },
    /// The field points into `[lo, hi)`.
    Into { range: Range<u64>, allow_null: bool },
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// The root whose elements it checks.
    pub root: String,
    /// The field it reads.
    pub field: Field,
    /// Bytes to read (`None`: the member's size, else 8).
    pub size: Option<u8>,
    /// The check.
    pub check: Check,
    /// Severity of its findings.
    pub severity: Severity,
    /// Extra words for its findings.
    pub message: Option<String>,
}

/// Rules loaded from a file; a [`Validator`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Loads and checks a rule file.
    pub fn load(path: &std::path::Path) -> Result<RuleSet, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::RuleFileIo {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks rule text (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<RuleSet, Error> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: RuleFile = toml::from_str(text).map_err(|e| Error::Rule {
            path: path.to_string(),
            line: e.span().map_or(0, |s| line_of(s.start)),
            reason: e.message().to_string(),
        })?;
        let mut rules = Vec::new();
        for spanned in file.rule {
            let line = line_of(spanned.span().start);
            let bad = |reason: String| Error::Rule {
                path: path.to_string(),
                line,
                reason,
            };
            let r = spanned.into_inner();
            if r.name.trim().is_empty() || r.root.trim().is_empty() {
                return Err(bad("a rule needs a non-empty name and root".into()));
            }
            if rules.iter().any(|x: &Rule| x.name == r.name) {
                return Err(bad(format!("rule {:?} is defined twice", r.name)));
            }
            let field = match (r.field, r.offset) {
                (Some(f), None) => Field::Named(f),
                (None, Some(o)) => Field::Offset(o),
                _ => {
                    return Err(bad(format!(
                        "rule {:?}: give exactly one of field and offset",
                        r.name
                    )))
                }
            };
            if let Some(s) = r.size {
                if !matches!(s, 1 | 2 | 4 | 8) {
                    return Err(bad(format!(
                        "rule {:?}: size must be 1, 2, 4 or 8, not {s}",
                        r.name
                    )));
                }
            }
            let need = |v: Option<Num>, what: &str| {
                v.map(|n| n.0).ok_or_else(|| {
                    bad(format!(
                        "rule {:?}: check {:?} needs {what}",
                        r.name, r.check
                    ))
                })
            };
            let check = match r.check.as_str() {
                "equals" => Check::Equals(need(r.value, "value")?),
                "in" => match r.values {
                    Some(v) if !v.is_empty() => Check::In(v.into_iter().map(|n| n.0).collect()),
                    _ => {
                        return Err(bad(format!(
                            "rule {:?}: check \"in\" needs a non-empty values list",
                            r.name
                        )))
                    }
                },
                "range" => {
                    if r.min.is_none() && r.max.is_none() {
                        return Err(bad(format!(
                            "rule {:?}: check \"range\" needs min and/or max",
                            r.name
                        )));
                    }
                    let (min, max) = (r.min.map_or(0, |n| n.0), r.max.map_or(u64::MAX, |n| n.0));
                    if min > max {
                        return Err(bad(format!(
                            "rule {:?}: min {min} is greater than max {max}",
                            r.name
                        )));
                    }
                    Check::Range { min, max }
                }
                "non_null" => Check::NonNull,
                "points_into" => {
                    let allow_null = r.allow_null.unwrap_or(false);
                    match (r.into_root, r.lo, r.hi) {
                        (Some(root), None, None) => Check::IntoRoot { root, allow_null },
                        (None, Some(lo), Some(hi)) if lo.0 < hi.0 => Check::Into {
                            range: lo.0..hi.0,
                            allow_null,
                        },
                        (None, Some(_), Some(_)) => {
                            return Err(bad(format!("rule {:?}: lo must be below hi", r.name)))
                        }
                        _ => {
                            return Err(bad(format!(
                                "rule {:?}: points_into needs into_root, or lo and hi",
                                r.name
                            )))
                        }
                    }
                }
                other => {
                    return Err(bad(format!(
                    "rule {:?}: unknown check {other:?} (equals, in, range, non_null, points_into)",
                    r.name
                )))
                }
            };
            rules.push(Rule {
                name: r.name,
                root: r.root,
                field,
                size: r.size,
                check,
                severity: r.severity.unwrap_or(Severity::Error),
                message: r.message,
            });
        }
        Ok(RuleSet { rules })
    }
}

/// The name of the member of `type_name` at `offset`, from DWARF.
pub fn member_name_at(ctx: &Context<'_>, type_name: &str, offset: u64) -> Option<String> {
    let (source, id) = ctx.program.find_type(type_name).ok()?;
    let ty = source.get(id).ok()?;
    ty.members
        .iter()
        .find(|m| m.offset == offset)
        .and_then(|m| m.name.clone())
}

impl Validator for RuleSet {
    fn name(&self) -> &str {
        "rules"
    }

    fn applies_to(&self) -> &str {
        "the roots named by the loaded rule files"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        !self.rules.is_empty() && ctx.descriptor.is_some()
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        for rule in &self.rules {
            let validator = format!("rule:{}", rule.name);
            let Some(root) = ctx.root(&rule.root) else {
                out.push(ctx.note(
                    &validator,
                    Severity::Warning,
                    &rule.root,
                    format!(
                        "rule {} names root {:?}, which the guest did not declare",
                        rule.name, rule.root
                    ),
                ));
                continue;
            };
            // A named field's offset and size, found once in the element type.
            let (offset, member_size, name) = match &rule.field {
                Field::Offset(o) => (Some(*o), None, None),
                Field::Named(f) => {
                    let m = ctx.member(&root.type_name, f);
                    let size = m.as_ref().and_then(|m| m.size().ok());
                    (m.map(|m| m.offset()), size, Some(f.clone()))
                }
            };
            let Some(offset) = offset else {
                out.push(ctx.note(
                    &validator,
                    Severity::Warning,
                    &root.name,
                    format!(
                        "rule {}: type {} has no member {:?} in the debug info or VMCOREINFO",
                        rule.name,
                        root.type_name,
                        name.unwrap_or_default()
                    ),
                ));
                continue;
            };
            let size = rule
                .size
                .map(u64::from)
                .or(member_size)
                .filter(|s| matches!(s, 1 | 2 | 4 | 8))
                .unwrap_or(8);
            let into_root = match &rule.check {
                Check::IntoRoot { root, .. } => ctx.root(root).map(|r| {
                    let len = r.max_count as u64 * r.element_size as u64;
                    r.address..r.address.saturating_add(len)
                }),
                _ => None,
            };
            let elements = ctx.elements(root);
            let mut found = RootFindings::new(out);
            let mut pace = ctx.pace();
            for e in elements.elements.iter() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        &validator,
                        &root.name,
                        &elements.rest_from(e.index),
                    ));
                    break;
                }
                // The rule's size, not the member's type, says how many bytes to read.
                let at = e.addr.wrapping_add(offset);
                let v = match size {
                    1 => ctx.program.read_u8(at).map(u64::from),
                    2 => ctx.program.read_u16(at).map(u64::from),
                    4 => ctx.program.read_u32(at).map(u64::from),
                    _ => ctx.program.read_u64(at),
                };
                let Ok(v) = v else { continue };
                let (ok, expected) = match &rule.check {
                    Check::Equals(x) => (v == *x, format!("{x:#x}")),
                    Check::In(xs) => (
                        xs.contains(&v),
                        format!(
                            "one of {}",
                            xs.iter()
                                .map(|x| format!("{x:#x}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    Check::Range { min, max } => {
                        ((*min..=*max).contains(&v), format!("{min}..={max}"))
                    }
                    Check::NonNull => (v != 0, "non-null".into()),
                    Check::IntoRoot {
                        root: r,
                        allow_null,
                    } => match &into_root {
                        Some(range) => (
                            (v == 0 && *allow_null) || range.contains(&v),
                            format!("a pointer into {r} [{:#x}, {:#x})", range.start, range.end),
                        ),
                        None => (true, String::new()),
                    },
                    Check::Into { range, allow_null } => (
                        (v == 0 && *allow_null) || range.contains(&v),
                        format!("a pointer into [{:#x}, {:#x})", range.start, range.end),
                    ),
                };
                if !ok {
                    found.push(ctx.finding(
                        &validator,
                        rule.severity,
                        &root.name,
                        Some(e.index),
                        name.as_deref(),
                        Some(at),
                        expected,
                        format!("{v:#x}"),
                        format!(
                            "rule {} failed on {} element {}{}",
                            rule.name,
                            root.name,
                            e.index,
                            rule.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                        ),
                    ));
                }
            }
            found.finish(ctx, &validator, &root.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rules_load() {
        let set = RuleSet::parse(
            r#"
[[rule]]
name = "pid-range"
root = "tasks"
field = "pid"
check = "range"
min = 1
max = 64

[[rule]]
name = "magic"
root = "tasks"
offset = 0
check = "equals"
value = "0x6b736174756d6261"
severity = "critical"
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(set.rules.len(), 2);
        assert_eq!(set.rules[0].check, Check::Range { min: 1, max: 64 });
        assert_eq!(set.rules[1].check, Check::Equals(0x6b73_6174_756d_6261));
        assert_eq!(set.rules[1].severity, Severity::Critical);
    }

    fn refused(text: &str) -> (usize, String) {
        match RuleSet::parse(text, "bad.toml").unwrap_err() {
            Error::Rule { line, reason, path } => {
                assert_eq!(path, "bad.toml");
                (line, reason)
            }
            e => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn bad_rules_are_refused_with_line_and_reason() {
        let (line, reason) = refused(
            "[[rule]]\nname = \"a\"\nroot = \"tasks\"\nfield = \"pid\"\ncheck = \"between\"\n",
        );
        assert_eq!(line, 1);
        assert!(reason.contains("unknown check \"between\""), "{reason}");

        let (line, reason) = refused(
            "# header\n\n[[rule]]\nname = \"a\"\nroot = \"t\"\nfield = \"f\"\ncheck = \"range\"\nmin = 9\nmax = 3\n",
        );
        assert_eq!(line, 3);
        assert!(reason.contains("min 9 is greater than max 3"), "{reason}");

        let (line, reason) = refused(
            "[[rule]]\nname = \"a\"\nroot = \"t\"\nfield = \"f\"\ncheck = \"equals\"\ncolour = 1\n",
        );
        assert!(line >= 1, "{line}");
        assert!(reason.contains("colour"), "{reason}");

        let (_, reason) = refused("[[rule]]\nname = \"a\"\nroot = \"t\"\ncheck = \"non_null\"\n");
        assert!(
            reason.contains("exactly one of field and offset"),
            "{reason}"
        );

        let (line, reason) = refused("[[rule]\nname = 1\n");
        assert_eq!(line, 1, "{reason}");

        let (_, reason) = refused("[[rule]]\nname = \"a\"\nroot = \"t\"\nfield = \"f\"\ncheck = \"equals\"\nvalue = \"0xZZ\"\n");
        assert!(reason.contains("not a number"), "{reason}");
    }
}
