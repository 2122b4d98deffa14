//! The port-I/O bus: doorbells (`ambulance_abi::ports`), the COM1 console, the i8042
//! reset request. Everything else reads as all-ones and ignores writes.

use std::time::SystemTime;

use ambulance_abi::descriptor::{self, Descriptor, HEADER_SIZE};
use ambulance_abi::ports::{self, panic_reason, RegistrationStatus};

use crate::event::{EventKind, FailureCause};
use crate::guest::Instance;

/// Longest console line; longer output is split.
pub const CONSOLE_LINE_MAX: usize = 4096;
/// Console lines kept per guest for [`crate::Guest::console_lines`].
pub const CONSOLE_LOG_LINES: usize = 10_000;

/// A descriptor the host accepted: its own copy, taken at the doorbell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedDescriptor {
    /// Guest-physical address the guest registered.
    pub gpa: u64,
    /// The descriptor's bytes (`total_size` of them) as copied at registration.
    pub bytes: Vec<u8>,
    /// The parsed descriptor.
    pub descriptor: Descriptor,
    /// When it was accepted.
    pub at: SystemTime,
}

/// Registration state of one generation.
#[derive(Debug)]
pub(crate) struct RegState {
    pub(crate) latest: Option<AcceptedDescriptor>,
    pub(crate) status: RegistrationStatus,
    /// Bumped by every accepted registration.
    pub(crate) seq: u64,
}

impl Default for RegState {
    fn default() -> Self {
        RegState {
            latest: None,
            status: RegistrationStatus::None,
            seq: 0,
        }
    }
}

/// The console's line buffer.
#[derive(Debug, Default)]
pub(crate) struct Console {
    line: Vec<u8>,
}

impl Console {
    /// Adds output bytes; returns the lines they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(self.take());
            } else {
                self.line.push(b);
                if self.line.len() >= CONSOLE_LINE_MAX {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// The partial line, if any.
    pub(crate) fn flush(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

/// What the vCPU loop does after an exit.
pub(crate) enum Action {
    /// Re-enter the guest.
    Continue,
    /// The vCPU halted.
    Halt,
    /// A fatal exit: report it and stop this vCPU for the generation.
    Fatal(FailureCause, String),
}

/// A doorbell's value: the first four bytes, zero-extended.
fn value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// Handles an `out`.
pub(crate) fn port_out(
    inst: &Instance,
    vcpu: u32,
    register_lo: &mut u32,
    port: u16,
    data: &[u8],
) -> Action {
    match port {
        ports::CONSOLE => {
            let lines = inst.console.lock().push(data);
            inst.console_lines(lines);
        }
        ports::REGISTER_LO => *register_lo = value(data),
        ports::REGISTER_HI => {
            let gpa = (u64::from(value(data)) << 32) | u64::from(*register_lo);
            register(inst, vcpu, gpa);
        }
        ports::PANIC => {
            let code = value(data);
            let reason = panic_reason::name(code);
            return Action::Fatal(
                FailureCause::Panic {
                    code,
                    reason: reason.to_string(),
                },
                format!("vCPU {vcpu} rang the panic doorbell with reason {code:#x} ({reason})"),
            );
        }
        ports::MAINTENANCE_COMPLETE => {
            let status = value(data);
            tracing::info!(
                guest = inst.ctx.id,
                name = %inst.ctx.name(),
                status,
                "maintenance complete"
            );
            inst.ctx
                .emit(inst.generation, EventKind::MaintenanceComplete { status });
        }
        ports::I8042_COMMAND if data.first() == Some(&ports::I8042_RESET) => {
            return Action::Fatal(
                FailureCause::Reset,
                format!("vCPU {vcpu} requested a reset through the i8042 (0xfe to port 0x64)"),
            );
        }
        _ => tracing::trace!(
            guest = inst.ctx.id,
            vcpu,
            port = format_args!("{port:#x}"),
            ?data,
            "write to an unhandled port ignored"
        ),
    }
    Action::Continue
}

/// Handles an `in`.
pub(crate) fn port_in(inst: &Instance, vcpu: u32, port: u16, data: &mut [u8]) {
    match port {
        ports::CONSOLE_LSR => data.fill(ports::CONSOLE_LSR_IDLE),
        ports::REGISTER_HI => {
            let status = inst.reg.lock().status as u32;
            for (d, s) in data.iter_mut().zip(status.to_le_bytes().iter().cycle()) {
                *d = *s;
            }
        }
        // i8042 status: both buffers empty, so a reset sequence that polls first proceeds.
        ports::I8042_COMMAND => data.fill(0),
        _ => {
            tracing::trace!(
                guest = inst.ctx.id,
                vcpu,
                port = format_args!("{port:#x}"),
                len = data.len(),
                "read from an unhandled port returns all-ones"
            );
            data.fill(0xff);
        }
    }
}

/// Reads `len` bytes of guest RAM at `gpa`, or says why not.
fn read_ram(inst: &Instance, gpa: u64, len: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    inst.ram.read(gpa, &mut buf).ok_or_else(|| {
        format!(
            "the {what} at guest-physical {gpa:#x}..+{len:#x} is not inside guest RAM \
             ({} bytes)",
            inst.ram.size()
        )
    })?;
    Ok(buf)
}

fn check(inst: &Instance, gpa: u64) -> Result<AcceptedDescriptor, String> {
    descriptor::check_registration_gpa(gpa).map_err(|e| e.to_string())?;
    let header = read_ram(inst, gpa, HEADER_SIZE, "descriptor header")?;
    let size = descriptor::declared_size(&header).map_err(|e| e.to_string())?;
    let bytes = read_ram(inst, gpa, size, "descriptor")?;
    let descriptor = descriptor::parse(&bytes).map_err(|e| e.to_string())?;
    if !inst.ram.contains(descriptor.heartbeat_gpa, 8) {
        return Err(format!(
            "heartbeat_gpa {:#x} is not inside guest RAM ({} bytes)",
            descriptor.heartbeat_gpa,
            inst.ram.size()
        ));
    }
    Ok(AcceptedDescriptor {
        gpa,
        bytes,
        descriptor,
        at: SystemTime::now(),
    })
}

/// Commits a registration: validates, copies, reports. The guest keeps running either way.
fn register(inst: &Instance, vcpu: u32, gpa: u64) {
    let ctx = &inst.ctx;
    match check(inst, gpa) {
        Ok(reg) => {
            let d = &reg.descriptor;
            let build_id: String = d.build_id.iter().map(|b| format!("{b:02x}")).collect();
            let roots: Vec<String> = d.roots.iter().map(|r| r.name.clone()).collect();
            let vmcoreinfo = d.vmcoreinfo.is_some();
            tracing::info!(
                guest = ctx.id,
                name = %ctx.name(),
                vcpu,
                gpa = format_args!("{gpa:#x}"),
                size = reg.bytes.len(),
                %build_id,
                roots = roots.len(),
                "descriptor registered"
            );
            {
                let mut st = inst.reg.lock();
                st.latest = Some(reg);
                st.status = RegistrationStatus::Accepted;
                st.seq += 1;
            }
            ctx.emit(
                inst.generation,
                EventKind::Registered {
                    gpa,
                    build_id,
                    roots,
                    vmcoreinfo,
                },
            );
        }
        Err(reason) => {
            tracing::warn!(
                guest = ctx.id,
                name = %ctx.name(),
                vcpu,
                gpa = format_args!("{gpa:#x}"),
                %reason,
                "descriptor registration refused"
            );
            inst.reg.lock().status = RegistrationStatus::Refused;
            ctx.emit(
                inst.generation,
                EventKind::RegistrationRefused { gpa, reason },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_splits_lines_and_caps_them() {
        let mut c = Console::default();
        assert_eq!(c.push(b"hel"), Vec::<String>::new());
        assert_eq!(c.push(b"lo\r\nwor"), vec!["hello".to_string()]);
        assert_eq!(c.flush(), Some("wor".to_string()));
        assert_eq!(c.flush(), None);
        let long = vec![b'x'; CONSOLE_LINE_MAX + 10];
        let lines = c.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), CONSOLE_LINE_MAX);
        assert_eq!(c.flush().unwrap().len(), 10);
        assert_eq!(c.push(&[0xff, b'\n']), vec!["\u{fffd}".to_string()]);
    }

    #[test]
    fn doorbell_values_are_zero_extended() {
        assert_eq!(value(&[1]), 1);
        assert_eq!(value(&[1, 2, 3, 4]), 0x0403_0201);
        assert_eq!(value(&[]), 0);
    }
}
