//! Stack traces of a Linux guest's CPUs and sleeping tasks, from the kernel's own ORC
//! tables ([`orc`](crate::orc)) and symbolized with the program's symbols (kallsyms
//! without debug info) as the kernel prints them: `function+0xoff/0xsize`.
//!
//! * A CPU is unwound from its registers (the vCPU's, as frozen or dumped): the
//!   panicking CPU through `panic()` to the code that called it, the others from where
//!   they were stopped, across interrupt and exception frames.
//! * A task that is not running is unwound from what `__switch_to_asm` left: its
//!   `thread.sp` points at a `struct inactive_task_frame` (callee-saved registers, `bp`,
//!   and the return address into `__schedule`), above which its stack goes on. The
//!   layouts come from the program's types (BTF or DWARF), never assumed.

use std::ops::Range;

use ambulance_introspect::program::Program;

use crate::modules::{self, Module};
use crate::orc::{self, OrcLocation, OrcTable, OrcVersion, Registers, StackMemory, Start, Unwind};
use crate::{Error, Result};

/// Most ORC entries read over all modules (10 bytes each).
const MAX_MODULE_ORC_ENTRIES: u64 = 1 << 22;

/// Guest memory through the program's translation.
struct ProgramMemory<'p>(&'p Program);

impl StackMemory for ProgramMemory<'_> {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        self.0.read_u64(addr).ok()
    }
}

/// Where a sleeping task's saved frame is.
#[derive(Clone, Debug)]
struct SleepLayout {
    /// Offset of `thread.sp` in `task_struct`.
    thread_sp: u64,
    /// Offsets of `bp` and `ret_addr` in `struct inactive_task_frame`, and its size.
    frame_bp: u64,
    frame_ret: u64,
    frame_size: u64,
}

impl SleepLayout {
    fn of(program: &Program) -> Result<SleepLayout> {
        let thread_sp = program.offset_of("task_struct", "thread.sp")?;
        let frame_bp = program.offset_of("inactive_task_frame", "bp")?;
        let frame_ret = program.offset_of("inactive_task_frame", "ret_addr")?;
        let (types, id) = program.find_type("inactive_task_frame")?;
        let frame_size = types.get(id)?.size.unwrap_or(0);
        if frame_size == 0 || frame_size > 256 || frame_ret >= frame_size || frame_bp >= frame_size
        {
            return Err(Error::Orc {
                reason: format!(
                    "struct inactive_task_frame of {frame_size} bytes (bp at {frame_bp}, ret_addr at {frame_ret}) is implausible"
                ),
            });
        }
        Ok(SleepLayout {
            thread_sp,
            frame_bp,
            frame_ret,
            frame_size,
        })
    }
}

/// What unwinding a guest's stacks needs, looked up once per diagnosis.
#[derive(Clone, Debug)]
pub struct Unwinder {
    table: OrcTable,
    text: Vec<Range<u64>>,
    modules: Vec<(Module, Option<OrcTable>)>,
    problems: Vec<String>,
    ret_from_fork: Vec<u64>,
    sleep: std::result::Result<SleepLayout, String>,
}

impl Unwinder {
    /// The kernel's ORC tables (their layout chosen by `release`, `uname -r`) and the
    /// layouts sleeping tasks need. Fails when the tables are not found or unreadable;
    /// a missing sleeping-task layout only fails [`Unwinder::unwind_sleeping`].
    pub fn new(program: &Program, release: &str) -> Result<Unwinder> {
        let version = OrcVersion::for_release(release).ok_or_else(|| Error::Orc {
            reason: format!("kernel release {release:?} does not say which ORC format it uses"),
        })?;
        let sym = |name: &str| program.symbol(name).map_err(Error::from);
        let range = |a: &str, b: &str| -> Result<Range<u64>> { Ok(sym(a)?..sym(b)?) };
        let mut text = vec![range("_stext", "_etext")?];
        if let Ok(init) = range("_sinittext", "_einittext") {
            text.push(init);
        }
        text.retain(|r| r.start < r.end);
        let at = OrcLocation {
            ip: range("__start_orc_unwind_ip", "__stop_orc_unwind_ip")?,
            entries: range("__start_orc_unwind", "__stop_orc_unwind")?,
            text: text.clone(),
        };
        let read = |va: u64, buf: &mut [u8]| program.read_virt(va, buf).map_err(Error::from);
        let table = OrcTable::read(&at, version, &read)?;
        let ret_from_fork = ["ret_from_fork", "ret_from_fork_asm"]
            .iter()
            .filter_map(|n| program.symbol(n).ok())
            .collect();
        // Modules: their code, ORC tables and symbols, where they can be read.
        let mut problems = Vec::new();
        // What the modules' ORC tables may cost, over all of them.
        let mut orc_budget = MAX_MODULE_ORC_ENTRIES;
        let modules = match modules::modules(program) {
            Ok((list, trouble)) => {
                problems.extend(trouble);
                list.into_iter()
                    .map(|m| {
                        let orc = m.orc.and_then(|(ip, entries, n)| {
                            if n > orc_budget {
                                problems.push(format!(
                                    "module {}: {n} ORC entries exceed what is left of the \
                                     {MAX_MODULE_ORC_ENTRIES} read for all modules",
                                    m.name
                                ));
                                return None;
                            }
                            orc_budget -= n;
                            let at = OrcLocation {
                                ip: ip..ip.checked_add(n.checked_mul(4)?)?,
                                entries: entries..entries.checked_add(n.checked_mul(6)?)?,
                                text: vec![m.text.clone()],
                            };
                            match OrcTable::read(&at, version, &read) {
                                Ok(t) => Some(t),
                                Err(e) => {
                                    problems.push(format!("module {}: {e}", m.name));
                                    None
                                }
                            }
                        });
                        (m, orc)
                    })
                    .collect()
            }
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        Ok(Unwinder {
            table,
            text,
            modules,
            problems,
            ret_from_fork,
            sleep: SleepLayout::of(program).map_err(|e| e.to_string()),
        })
    }

    /// How many ORC entries the kernel has.
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// Whether `addr` is in the kernel's or a module's text.
    pub fn is_text(&self, addr: u64) -> bool {
        self.text.iter().any(|t| t.contains(&addr))
            || self.modules.iter().any(|(m, _)| m.text.contains(&addr))
    }

    /// The modules found (name and text).
    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.modules.iter().map(|(m, _)| m)
    }

    /// What could not be read of the modules (their list, a table).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The ORC entry for `ip`: the kernel's, else the module's whose code holds it.
    fn find(&self, ip: u64) -> Option<orc::OrcEntry> {
        if let Some(e) = self.table.find(ip) {
            return Some(e);
        }
        self.modules
            .iter()
            .find(|(m, _)| m.text.contains(&ip))
            .and_then(|(_, t)| t.as_ref()?.find(ip))
    }

    /// `pc` as the kernel prints it: `function+0xoff/0xsize` in the kernel,
    /// `function+0xoff/0xsize [module]` in a module; `None` without a symbol. A return
    /// address (`return_address`) is looked up one byte back, as the kernel's `%pB`
    /// does: after a call that does not return, it is the next function's first byte.
    pub fn symbolize(&self, program: &Program, pc: u64, return_address: bool) -> Option<String> {
        let back = u64::from(return_address);
        let at = pc.checked_sub(back)?;
        if let Some((m, _)) = self.modules.iter().find(|(m, _)| m.text.contains(&at)) {
            let (name, off, size) = m.lookup(at)?;
            return Some(format!("{name}+{:#x}/{size:#x} [{}]", off + back, m.name));
        }
        symbolize_at(program, at, back)
    }

    /// Unwinds a CPU from its registers (in `pt_regs` order).
    pub fn unwind_registers(&self, program: &Program, regs: Registers) -> Unwind {
        let is_text = |a: u64| self.is_text(a);
        orc::unwind(
            &|ip| self.find(ip),
            &ProgramMemory(program),
            Start::Registers(regs),
            &is_text,
            &[],
        )
    }

    /// Unwinds a task that is not running, from its saved `thread.sp`.
    pub fn unwind_sleeping(&self, program: &Program, task: u64) -> Result<Unwind> {
        let layout = self.sleep.as_ref().map_err(|reason| Error::Orc {
            reason: format!("sleeping tasks cannot be unwound: {reason}"),
        })?;
        let at = |base: u64, off: u64| {
            base.checked_add(off).ok_or_else(|| Error::Orc {
                reason: format!("{base:#x} + {off:#x} overflows"),
            })
        };
        let sp = program.read_u64(at(task, layout.thread_sp)?)?;
        let bp = program.read_u64(at(sp, layout.frame_bp)?)?;
        let ip = program.read_u64(at(sp, layout.frame_ret)?)?;
        let is_text = |a: u64| self.is_text(a);
        let mut u = orc::unwind(
            &|ip| self.find(ip),
            &ProgramMemory(program),
            Start::Saved {
                ip,
                sp: at(sp, layout.frame_size)?,
                bp,
                signal: self.ret_from_fork.contains(&ip),
            },
            &is_text,
            &[],
        );
        if !self.is_text(ip) {
            u.frames.clear();
            u.end = orc::UnwindEnd::NotText(ip);
        }
        Ok(u)
    }
}

/// `pc` as the kernel prints it: `function+0xoff/0xsize` (`function+0xoff` when the
/// size is unknown); `None` without a symbol.
pub fn symbolize(program: &Program, pc: u64) -> Option<String> {
    symbolize_at(program, pc, 0)
}

/// `at` symbolized, its offset shown `extra` bytes further.
fn symbolize_at(program: &Program, at: u64, extra: u64) -> Option<String> {
    let symbols = program.symbols()?;
    let (name, off) = symbols.lookup_addr(at)?;
    let shown = off.checked_add(extra)?;
    // The size as the kernel prints it: to the next symbol (kallsyms has no sizes), the
    // same whether the symbols came from kallsyms or the ELF symbol table.
    let start = at.checked_sub(off)?;
    let size = symbols
        .next_address_after(start)
        .and_then(|next| next.checked_sub(start))
        .filter(|&s| s > off && s <= MAX_SYMBOL_SIZE)
        .or_else(|| symbols.get_sized(name).map(|(_, s)| s).filter(|&s| s > off));
    Some(match size {
        Some(size) => format!("{name}+{shown:#x}/{size:#x}"),
        None => format!("{name}+{shown:#x}"),
    })
}

/// Largest function size believed when sizing a symbol by its successor.
const MAX_SYMBOL_SIZE: u64 = 1 << 20;
