//! The rule engine: rules from TOML, evaluated on a synthetic guest.

use ambulance_report::Severity;
use ambulance_validate::rules::RuleSet;

use crate::support::*;

const RULES: &str = r#"
[[rule]]
name = "pid-range"
root = "tasks"
field = "pid"
size = 4
check = "range"
min = 1
max = 64
severity = "error"
message = "pids are 1..=64"

[[rule]]
name = "magic"
root = "tasks"
offset = 0
check = "equals"
value = "0x6b736174756d6261"
severity = "critical"

[[rule]]
name = "stack-in-vmalloc"
root = "tasks"
field = "stack_base"
check = "points_into"
lo = "0xffffc90000000000"
hi = "0xffffc90100000000"

[[rule]]
name = "nobody"
root = "nonexistent"
field = "pid"
check = "non_null"
"#;

fn guest() -> (Guest, u64) {
    let mut g = Guest::new();
    let table = g.tasks(5);
    g.tasks_root(table, 5);
    (g, table)
}

#[test]
fn healthy_elements_pass_and_an_unknown_root_is_said() {
    let rules = RuleSet::parse(RULES, "rules.toml").unwrap();
    let (g, _) = guest();
    let found = g.build().run(&rules);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].validator, "rule:nobody");
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].message.contains("did not declare"));
}

#[test]
fn each_failing_rule_is_found_at_the_field() {
    let rules = RuleSet::parse(RULES, "rules.toml").unwrap();
    let (mut g, table) = guest();
    let t3 = table + 3 * task::SIZE;
    g.put_u32(t3 + task::PID, 999);
    let t1 = table + task::SIZE;
    g.put_u64(t1 + task::MAGIC, 7);
    g.put_u64(t1 + task::STACK_BASE, 0xffff_8880_0000_0000);
    let found = g.build().run(&rules);
    let pid = the_one(&found, t3 + task::PID);
    assert_eq!(pid.validator, "rule:pid-range");
    assert_eq!(pid.severity, Severity::Error);
    assert_eq!(
        (pid.found.as_str(), pid.expected.as_str()),
        ("0x3e7", "1..=64")
    );
    assert_eq!(pid.structure.index, Some(3));
    assert!(pid.message.ends_with(": pids are 1..=64"));
    let magic = the_one(&found, t1 + task::MAGIC);
    assert_eq!(magic.validator, "rule:magic");
    assert_eq!(magic.severity, Severity::Critical);
    let stack = the_one(&found, t1 + task::STACK_BASE);
    assert_eq!(stack.validator, "rule:stack-in-vmalloc");
}

#[test]
fn out_of_time_rules_say_what_they_did_not_check() {
    let rules = RuleSet::parse(RULES, "rules.toml").unwrap();
    let (g, _) = guest();
    let found = g.build().run_out_of_time(&rules);
    assert_eq!(
        budget_notes(&found, "rule:pid-range").len(),
        1,
        "{found:#?}"
    );
    assert_eq!(budget_notes(&found, "rule:magic").len(), 1);
}
