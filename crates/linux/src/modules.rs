//! Loaded kernel modules, from the kernel's `modules` list: each one's name, where its
//! code is, its ORC tables (`module.arch`) and its symbols (`module.kallsyms`), so that
//! stacks through module code unwind and read `function+0xoff/0xsize [module]` as the
//! kernel prints them.
//!
//! Layouts come from the program's types: the text is `core_layout.{base,text_size}`
//! before Linux 6.4 and `mem[MOD_TEXT].{base,size}` since. Every list, table and string
//! is bounded; a module that cannot be read is skipped and counted, not trusted.

use std::ops::Range;

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_introspect::program::Program;

use crate::structures::Checked;
use crate::{Error, Result};

/// The name of the module-list root in findings and "structures walked".
pub const MODULES_ROOT: &str = "modules";

/// `MODULE_STATE_UNFORMED`, the last of `enum module_state` (`LIVE`, `COMING`, `GOING`,
/// `UNFORMED`).
pub const MODULE_STATE_MAX: u32 = 3;

/// Most modules read.
pub const MAX_MODULES: usize = 4096;
/// Most symbols read of one module.
pub const MAX_MODULE_SYMBOLS: u64 = 1 << 16;
/// Largest module string table read.
const MAX_STRTAB: u64 = 4 << 20;
/// Most bytes of symbol and string tables read over all modules: a guest that claims
/// huge tables for thousands of modules costs the diagnosis this much, no more.
pub const MAX_SYMBOL_BYTES: u64 = 32 << 20;
/// Largest module text accepted.
const MAX_TEXT: u64 = 1 << 30;
/// `MODULE_NAME_LEN` on 64-bit.
const MODULE_NAME_LEN: usize = 56;
/// `sizeof(Elf64_Sym)`.
const SYM_SIZE: u64 = 24;

/// One loaded module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Its name.
    pub name: String,
    /// Its `struct module`.
    pub address: u64,
    /// Its code.
    pub text: Range<u64>,
    /// Its ORC tables: IP table, entries, count.
    pub orc: Option<(u64, u64, u64)>,
    /// Its symbols in its text: address, size (to the next symbol or the text's end),
    /// name; sorted by address.
    pub symbols: Vec<(u64, u64, String)>,
}

impl Module {
    /// The symbol containing `pc`, and the offset into it.
    pub fn lookup(&self, pc: u64) -> Option<(&str, u64, u64)> {
        if !self.text.contains(&pc) {
            return None;
        }
        let i = self.symbols.partition_point(|s| s.0 <= pc).checked_sub(1)?;
        let (addr, size, name) = &self.symbols[i];
        Some((name, pc - addr, *size))
    }
}

fn overflow(what: &str) -> Error {
    Error::Modules {
        reason: format!("{what} overflows"),
    }
}

/// The layout of `struct module` the reader needs.
struct Layout {
    list: u64,
    name: u64,
    text_base: u64,
    text_size: u64,
    orc: Option<(u64, u64, u64)>,
    kallsyms: Option<(u64, u64, u64, u64)>,
}

impl Layout {
    fn of(program: &Program) -> Result<Layout> {
        let off = |path: &str| program.offset_of("module", path);
        let (text_base, text_size) = match (off("core_layout.base"), off("core_layout.text_size")) {
            (Ok(b), Ok(s)) => (b, s),
            _ => {
                let mem = off("mem")?;
                let base = program.offset_of("module_memory", "base")?;
                let size = program.offset_of("module_memory", "size")?;
                (
                    mem.checked_add(base)
                        .ok_or_else(|| overflow("module.mem"))?,
                    mem.checked_add(size)
                        .ok_or_else(|| overflow("module.mem"))?,
                )
            }
        };
        let orc = match (
            off("arch.num_orcs"),
            off("arch.orc_unwind_ip"),
            off("arch.orc_unwind"),
        ) {
            (Ok(n), Ok(ip), Ok(e)) => Some((n, ip, e)),
            _ => None,
        };
        let kallsyms = (|| -> Result<(u64, u64, u64, u64)> {
            Ok((
                off("kallsyms")?,
                program.offset_of("mod_kallsyms", "symtab")?,
                program.offset_of("mod_kallsyms", "num_symtab")?,
                program.offset_of("mod_kallsyms", "strtab")?,
            ))
        })()
        .ok();
        Ok(Layout {
            list: off("list")?,
            name: off("name")?,
            text_base,
            text_size,
            orc,
            kallsyms,
        })
    }
}

/// Every module on the `modules` list, and how many could not be read (with the first
/// reason).
pub fn modules(program: &Program) -> Result<(Vec<Module>, Vec<String>)> {
    let layout = Layout::of(program)?;
    let head = program.symbol("modules")?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut node = program.read_u64(head)?;
    let mut seen = std::collections::HashSet::new();
    let mut budget = MAX_SYMBOL_BYTES;
    while node != head {
        if out.len() + problems.len() >= MAX_MODULES {
            problems.push(format!(
                "more than {MAX_MODULES} modules; the rest not read"
            ));
            break;
        }
        if !seen.insert(node) {
            problems.push(format!("the modules list loops at {node:#x}"));
            break;
        }
        let module = node
            .checked_sub(layout.list)
            .ok_or_else(|| overflow("module"))?;
        match read_module(program, &layout, module, &mut budget) {
            Ok(m) => out.push(m),
            Err(e) => problems.push(format!("module at {module:#x}: {e}")),
        }
        node = match program.read_u64(node) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("modules list at {node:#x}: {e}"));
                break;
            }
        };
    }
    if budget == 0 {
        problems.push(format!(
            "the modules' symbol tables exceed {MAX_SYMBOL_BYTES} bytes; later modules' symbols not read"
        ));
    }
    Ok((out, problems))
}

fn read_module(program: &Program, l: &Layout, module: u64, budget: &mut u64) -> Result<Module> {
    let at = |off: u64| module.checked_add(off).ok_or_else(|| overflow("module"));
    let mut name = [0u8; MODULE_NAME_LEN];
    program.read_virt(at(l.name)?, &mut name)?;
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = String::from_utf8_lossy(&name[..len]).into_owned();
    let base = program.read_u64(at(l.text_base)?)?;
    let size = u64::from(program.read_u32(at(l.text_size)?)?);
    if size > MAX_TEXT {
        return Err(Error::Modules {
            reason: format!("{name}: text of {size} bytes"),
        });
    }
    let text = base..base
        .checked_add(size)
        .ok_or_else(|| overflow("module text"))?;
    let orc = match l.orc {
        Some((n, ip, e)) => {
            let num = u64::from(program.read_u32(at(n)?)?);
            let ip = program.read_u64(at(ip)?)?;
            let e = program.read_u64(at(e)?)?;
            (num > 0 && ip != 0 && e != 0).then_some((ip, e, num))
        }
        None => None,
    };
    let symbols = match l.kallsyms {
        Some(k) => read_symbols(program, module, k, &text, budget).unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(Module {
        name,
        address: module,
        text,
        orc,
        symbols,
    })
}

fn read_symbols(
    program: &Program,
    module: u64,
    (kallsyms, symtab, num_symtab, strtab): (u64, u64, u64, u64),
    text: &Range<u64>,
    budget: &mut u64,
) -> Result<Vec<(u64, u64, String)>> {
    let at = |base: u64, off: u64| base.checked_add(off).ok_or_else(|| overflow("kallsyms"));
    let ks = program.read_u64(at(module, kallsyms)?)?;
    let symtab = program.read_u64(at(ks, symtab)?)?;
    let num = u64::from(program.read_u32(at(ks, num_symtab)?)?)
        .min(MAX_MODULE_SYMBOLS)
        .min(*budget / SYM_SIZE);
    *budget -= num * SYM_SIZE;
    let strtab = program.read_u64(at(ks, strtab)?)?;
    let mut raw = vec![0u8; (num * SYM_SIZE) as usize];
    program.read_virt(symtab, &mut raw)?;
    let syms: Vec<(u32, u16, u64)> = raw
        .chunks_exact(SYM_SIZE as usize)
        .map(|s| {
            let name = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let shndx = u16::from_le_bytes([s[6], s[7]]);
            let value = u64::from_le_bytes(s[8..16].try_into().unwrap_or([0; 8]));
            (name, shndx, value)
        })
        .filter(|&(_, shndx, value)| shndx != 0 && text.contains(&value))
        .collect();
    let strtab_len = syms
        .iter()
        .map(|s| u64::from(s.0) + 128)
        .max()
        .unwrap_or(0)
        .min(MAX_STRTAB)
        .min(*budget);
    *budget -= strtab_len;
    let mut strings = vec![0u8; strtab_len as usize];
    if strtab_len > 0 && program.read_virt(strtab, &mut strings).is_err() {
        // The last name may end near the end of a mapping: read just what the names need.
        strings.truncate(strtab_len.saturating_sub(128) as usize + 1);
        program.read_virt(strtab, &mut strings)?;
    }
    let mut out: Vec<(u64, u64, String)> = syms
        .iter()
        .filter_map(|&(n, _, value)| {
            let from = strings.get(n as usize..)?;
            let end = from.iter().position(|&b| b == 0)?;
            let name = String::from_utf8_lossy(&from[..end]).into_owned();
            // Mapping symbols and local labels are not functions.
            (!name.is_empty() && !name.starts_with('$') && !name.starts_with(".L"))
                .then_some((value, 0, name))
        })
        .collect();
    out.sort();
    out.dedup_by_key(|s| s.0);
    let ends: Vec<u64> = out
        .iter()
        .skip(1)
        .map(|s| s.0)
        .chain(std::iter::once(text.end))
        .collect();
    for (s, end) in out.iter_mut().zip(ends) {
        s.1 = end - s.0;
    }
    Ok(out)
}

/// The root a registration would have declared for the module list: `modules`, a list
/// of `struct module`s linked through `list`, of at most `max_count` elements, whose
/// writers hold `module_mutex` (a mutex's first word, its owner, is non-zero while held).
pub fn module_list_root(program: &Program, max_count: u64) -> Result<Root> {
    let head = program.symbol("modules")?;
    let list = program.offset_of("module", "list")?;
    let size = program.size_of("module").unwrap_or(0);
    Ok(Root {
        name: MODULES_ROOT.into(),
        type_name: "module".into(),
        kind: RootKind::List,
        flags: 0,
        address: head,
        element_size: size.min(u32::MAX as u64) as u32,
        link_offset: list.min(u32::MAX as u64) as u32,
        max_count: max_count.min(MAX_MODULES as u64) as u32,
        aux: 0,
        lock: program.symbol("module_mutex").unwrap_or(0),
        hints: Vec::new(),
    })
}

/// Where `struct module`'s state and name are, for [`check_module`].
pub struct CheckLayout {
    state: MemberLayout,
    name: MemberLayout,
}

impl CheckLayout {
    /// `struct module` from the program's types.
    pub fn of(program: &Program) -> Result<CheckLayout> {
        Ok(CheckLayout {
            state: program.member_layout("module", "state")?,
            name: program.member_layout("module", "name")?,
        })
    }
}

/// Checks the `struct module` at `module`: its `state` is one of `enum module_state`
/// and its `name` a printable, NUL-terminated module name. Problems go to `out`.
pub fn check_module(program: &Program, layout: &CheckLayout, module: u64, out: &mut Checked) {
    out.count += 1;
    let state = layout.state.object(program, module);
    match state.read_u32().map(u64::from) {
        Ok(s) if s <= u64::from(MODULE_STATE_MAX) => {}
        Ok(s) => out.problem(
            state.address(),
            "module.state",
            format!("0 to {MODULE_STATE_MAX} (enum module_state)"),
            s.to_string(),
            format!("the module at {module:#x} has state {s}, which is no module state"),
        ),
        Err(e) => out.problem(
            state.address(),
            "module.state",
            "readable".into(),
            "unreadable".into(),
            format!("the state of the module at {module:#x} cannot be read: {e}"),
        ),
    }
    let name = layout.name.object(program, module);
    let mut raw = [0u8; MODULE_NAME_LEN];
    let problem = match program.read_virt(name.address(), &mut raw) {
        Err(e) => Some(("unreadable".to_string(), format!("cannot be read: {e}"))),
        Ok(()) => {
            let len = raw.iter().position(|&b| b == 0);
            let shown = String::from_utf8_lossy(&raw[..len.unwrap_or(raw.len())]).into_owned();
            match len {
                None => Some((
                    shown,
                    format!("is not NUL-terminated within {MODULE_NAME_LEN} bytes"),
                )),
                Some(0) => Some((shown, "is empty".into())),
                Some(n) if !raw[..n].iter().all(|b| b.is_ascii_graphic()) => {
                    Some((format!("{:02x?}", &raw[..n]), "is not printable".into()))
                }
                Some(_) => None,
            }
        }
    };
    if let Some((found, why)) = problem {
        out.problem(
            name.address(),
            "module.name",
            "a printable module name".into(),
            found,
            format!("the name of the module at {module:#x} {why}"),
        );
    }
}
