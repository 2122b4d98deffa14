//! Every built-in validator and the rule engine on synthetic guests — RAM with real page
//! tables, a registration descriptor from the ABI's writer, VMCOREINFO layouts — without
//! KVM: a healthy case with no finding, corrupted cases with the finding at the exact
//! address, held-lock variants reported as mid-update, and crafted guests that prove no
//! walk or validator exceeds its budget (asserting on how they stopped, never on time).
//!
//! These run in debug builds on corrupted images: any overflow on a guest value panics.

mod support;

mod budgets;
mod checksum;
mod cpu;
mod descriptor;
mod freelist;
mod heartbeat;
mod lists;
mod locks;
mod log;
mod magic;
mod pointers;
mod rules;
mod stacks;
