//! The task list: every `task_struct` on `init_task.tasks`, with its pid, command and
//! state as `ps` would show them — and the root a registration would have declared for
//! it, so that validators check it like any registered list.
//!
//! Layouts come from the program's type sources (BTF or DWARF: Linux's VMCOREINFO does not
//! describe `task_struct`), so this works without a debug-info package whenever the
//! kernel carries BTF.

use ambulance_abi::descriptor::{root_flags, Root, RootKind};
use ambulance_introspect::program::Program;
use ambulance_introspect::walk::{walk_list, ListWalk, WalkLimits};

use crate::{Error, Result};

/// Where the fields of `task_struct` are, looked up once per diagnosis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    /// `sizeof(struct task_struct)`.
    pub size: u64,
    /// `tasks` (the `list_head` on `init_task.tasks`).
    pub tasks: u64,
    /// `pid`.
    pub pid: u64,
    /// `tgid`.
    pub tgid: u64,
    /// `comm` (`TASK_COMM_LEN` = 16 bytes).
    pub comm: u64,
    /// `__state` (Linux ≥ 5.14) or `state`.
    pub state: u64,
    /// Width of the state field: 4 bytes (`unsigned int __state`) or 8 (`long state`).
    pub state_size: u8,
    /// `exit_state`.
    pub exit_state: u64,
    /// `stack` (lowest address of the kernel stack), when the kernel has it.
    pub stack: Option<u64>,
}

/// `TASK_COMM_LEN`.
pub const TASK_COMM_LEN: usize = 16;

/// The name of the task-list root in findings and "structures walked".
pub const TASKS_ROOT: &str = "init_task.tasks";

impl TaskLayout {
    /// The layout of `task_struct` from the program's types.
    pub fn of(program: &Program) -> Result<TaskLayout> {
        Self::find(program).map_err(|source| Error::TaskLayout { source })
    }

    fn find(program: &Program) -> ambulance_introspect::Result<TaskLayout> {
        let off = |m: &str| program.offset_of("task_struct", m);
        let (source, id) = program.find_type("task_struct")?;
        let size = source.get(id)?.size.unwrap_or(0);
        let (state, state_size) = match off("__state") {
            Ok(o) => (o, 4),
            Err(_) => (off("state")?, 8),
        };
        Ok(TaskLayout {
            size,
            tasks: off("tasks")?,
            pid: off("pid")?,
            tgid: off("tgid")?,
            comm: off("comm")?,
            state,
            state_size,
            exit_state: off("exit_state")?,
            stack: off("stack").ok(),
        })
    }
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Address of its `task_struct`.
    pub address: u64,
    /// Thread id.
    pub pid: i32,
    /// Thread-group id.
    pub tgid: i32,
    /// Command name.
    pub comm: String,
    /// State letter as `ps` shows it (see [`state_letter`]).
    pub state: char,
    /// Lowest address of its kernel stack (`task_struct.stack`; 0 once a dead task's
    /// stack was freed).
    pub stack: Option<u64>,
}

/// Reads the task whose `task_struct` is at `address`.
pub fn read_task(program: &Program, layout: &TaskLayout, address: u64) -> Result<Task> {
    let pid = program.read_u32(address + layout.pid)? as i32;
    let tgid = program.read_u32(address + layout.tgid)? as i32;
    let mut comm = [0u8; TASK_COMM_LEN];
    program.read_virt(address + layout.comm, &mut comm)?;
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    let state = if layout.state_size == 4 {
        program.read_u32(address + layout.state)?
    } else {
        program.read_u64(address + layout.state)? as u32
    };
    let exit_state = program.read_u32(address + layout.exit_state)?;
    let stack = match layout.stack {
        Some(o) => Some(program.read_u64(address + o)?),
        None => None,
    };
    Ok(Task {
        address,
        pid,
        tgid,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        state: state_letter(state, exit_state),
        stack,
    })
}

/// The list head of all tasks: `&init_task.tasks`.
pub fn task_list_head(program: &Program, layout: &TaskLayout) -> Result<u64> {
    Ok(program.symbol("init_task")? + layout.tasks)
}

/// Walks `init_task.tasks` (bounded, cycle-checked) and reads every task on it.
/// `init_task` (the idle task of CPU 0, pid 0) is the list head and not among the
/// results, as in `for_each_process`. Tasks that cannot be read are left out; the walk
/// says how the list itself ended.
pub fn tasks(program: &Program, limits: WalkLimits) -> Result<(Vec<Task>, ListWalk)> {
    let layout = TaskLayout::of(program)?;
    let walk = walk_list(program, task_list_head(program, &layout)?, false, limits);
    let tasks = walk
        .links
        .iter()
        .filter_map(|&link| read_task(program, &layout, link.wrapping_sub(layout.tasks)).ok())
        .collect();
    Ok((tasks, walk))
}

/// The root a registration would have declared for the task list: `init_task.tasks`, a
/// list of `task_struct`s linked through `tasks`, of at most `max_count` elements, whose
/// writers hold `tasklist_lock` (a qrwlock whose low byte is set while write-held;
/// readers count above it).
pub fn task_list_root(program: &Program, max_count: u64) -> Result<Root> {
    let layout = TaskLayout::of(program)?;
    let head = task_list_head(program, &layout)?;
    let lock = program.symbol("tasklist_lock").unwrap_or(0);
    Ok(Root {
        name: TASKS_ROOT.into(),
        type_name: "task_struct".into(),
        kind: RootKind::List,
        flags: root_flags::LOCK_BYTE,
        address: head,
        element_size: layout.size.min(u32::MAX as u64) as u32,
        link_offset: layout.tasks as u32,
        max_count: max_count.min(u32::MAX as u64) as u32,
        aux: 0,
        lock,
        hints: Vec::new(),
    })
}

/// The state letter `ps` shows for a task's `__state` and `exit_state`, as the kernel's
/// `task_state_index()` computes it: `R` running, `S` sleeping, `D` disk sleep, `T`
/// stopped, `t` tracing stop, `X` dead, `Z` zombie, `P` parked, `I` idle.
pub fn state_letter(state: u32, exit_state: u32) -> char {
    const TASK_REPORT: u32 = 0x7f;
    const TASK_IDLE: u32 = 0x402; // TASK_UNINTERRUPTIBLE | TASK_NOLOAD
    const TASK_RTLOCK_WAIT: u32 = 0x1000;
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    const TASK_REPORT_IDLE: u32 = TASK_REPORT + 1;
    let mut s = (state | exit_state) & TASK_REPORT;
    if state & TASK_IDLE == TASK_IDLE {
        s = TASK_REPORT_IDLE;
    }
    if state == TASK_RTLOCK_WAIT {
        s = TASK_UNINTERRUPTIBLE;
    }
    let index = (u32::BITS - s.leading_zeros()) as usize; // fls()
    b"RSDTtXZPI"[index] as char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letters_match_the_kernel() {
        assert_eq!(state_letter(0, 0), 'R');
        assert_eq!(state_letter(1, 0), 'S');
        assert_eq!(state_letter(2, 0), 'D');
        assert_eq!(state_letter(4, 0), 'T');
        assert_eq!(state_letter(8, 0), 't');
        assert_eq!(state_letter(0, 0x10), 'X');
        assert_eq!(state_letter(0, 0x20), 'Z');
        assert_eq!(state_letter(0x40, 0), 'P');
        assert_eq!(state_letter(0x402, 0), 'I');
        assert_eq!(state_letter(0x1000, 0), 'D');
        // Bits outside TASK_REPORT (TASK_WAKEKILL, TASK_NOLOAD alone) do not show.
        assert_eq!(state_letter(0x100 | 0x1, 0), 'S');
        assert_eq!(state_letter(u32::MAX, u32::MAX), 'I');
    }
}
