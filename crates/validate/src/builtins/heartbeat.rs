//! The heartbeat: when the guest was diagnosed because its heartbeat stalled or slowed
//! down, say where the counter is and what it did.

use ambulance_report::{Address, Finding, FindingKind, Hex, Severity, StructureRef};

use crate::{Context, Validator};

/// See the module documentation.
pub struct Heartbeat;

const NAME: &str = "heartbeat";

impl Validator for Heartbeat {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "guests diagnosed for a stalled or slow heartbeat"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.descriptor.is_some()
            && matches!(ctx.failure.cause.as_str(), "degraded" | "watchdog_stall")
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let Some(d) = ctx.descriptor else { return };
        let gpa = d.heartbeat_gpa;
        // The root that declares the counter, if any.
        let root = ctx
            .roots()
            .iter()
            .find(|r| ctx.program.translate(r.address).ok() == Some(gpa));
        let mut buf = [0u8; 8];
        let value = ctx
            .program
            .memory()
            .read(gpa, &mut buf)
            .ok()
            .map(|_| u64::from_le_bytes(buf));
        let data = &ctx.failure.data;
        let num = |k: &str| data.get(k).and_then(|v| v.as_f64());
        let (expected, found, message) = if ctx.failure.cause == "degraded" {
            let measured = num("measured_hz").unwrap_or(f64::NAN);
            let threshold = num("threshold_hz").unwrap_or(f64::NAN);
            (
                format!("at least {threshold} beats/s"),
                format!("{measured:.1} beats/s"),
                format!(
                    "the heartbeat slowed down to {measured:.1} beats/s (threshold {threshold}/s) \
                     while still beating: the guest is alive but degraded"
                ),
            )
        } else {
            let stalled = num("stalled_for_ms").unwrap_or(f64::NAN);
            (
                "a heartbeat that keeps advancing".into(),
                format!(
                    "stuck at {} for {stalled} ms",
                    value.map(|v| v.to_string()).unwrap_or("?".into())
                ),
                format!(
                    "the heartbeat stopped for {stalled} ms: the CPU that advances it is stuck"
                ),
            )
        };
        // What the host saw (the counter stopped or slowed) said again, at the counter:
        // the event, not something memory analysis found.
        out.push(Finding {
            validator: NAME.into(),
            severity: Severity::Error,
            kind: FindingKind::Event,
            structure: StructureRef {
                root: root
                    .map(|r| r.name.clone())
                    .unwrap_or_else(|| "heartbeat".into()),
                index: None,
                path: None,
            },
            address: Address {
                virt: root.map(|r| Hex(r.address)),
                phys: Some(Hex(gpa)),
            },
            expected,
            found,
            message,
        });
    }
}
