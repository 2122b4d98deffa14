//! The task list: every `task_struct` on `init_task.tasks`, with its pid, command and
//! state as `ps` would show them — and the root a registration would have declared for
//! it, so that validators check it like any registered list.
//!
//! Layouts come from the program's type sources (BTF or DWARF: Linux's VMCOREINFO does not
//! describe `task_struct`), so this works without a debug-info package whenever the
//! kernel carries BTF. Tasks are read as [`Object`]s, with every member found once per
//! diagnosis ([`TaskLayout`]) and read with the width the kernel gives it, so that a type
//! source that does not know widths (VMCOREINFO's layouts) serves as well.

use std::sync::Arc;

use ambulance_abi::descriptor::{root_flags, Root, RootKind};
use ambulance_introspect::object::{MemberLayout, Object};
use ambulance_introspect::program::Program;
use ambulance_introspect::types::{TypeId, TypeSource};
use ambulance_introspect::walk::{walk_list, ListWalk, WalkLimits};

use crate::{Error, Result};

/// `TASK_COMM_LEN`.
pub const TASK_COMM_LEN: usize = 16;

/// The name of the task-list root in findings and "structures walked".
pub const TASKS_ROOT: &str = "init_task.tasks";

/// `task_struct` and where its members are, looked up once per diagnosis.
#[derive(Clone)]
pub struct TaskLayout {
    types: Arc<dyn TypeSource>,
    task_struct: TypeId,
    size: u64,
    tasks: MemberLayout,
    pid: MemberLayout,
    tgid: MemberLayout,
    comm: MemberLayout,
    /// `__state` (Linux ≥ 5.14, `unsigned int`) or `state` (`long`), and whether it is
    /// the 8-byte `state`.
    state: (MemberLayout, bool),
    exit_state: MemberLayout,
    stack: Option<MemberLayout>,
}

impl std::fmt::Debug for TaskLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLayout")
            .field("types", &self.types.describe())
            .field("size", &self.size)
            .field("tasks", &self.tasks.offset())
            .field("pid", &self.pid.offset())
            .field("tgid", &self.tgid.offset())
            .field("comm", &self.comm.offset())
            .field("state", &(self.state.0.path(), self.state.0.offset()))
            .field("exit_state", &self.exit_state.offset())
            .field("stack", &self.stack.as_ref().map(MemberLayout::offset))
            .finish()
    }
}

impl TaskLayout {
    /// The layout of `task_struct` from the first of the program's type sources that has
    /// it.
    pub fn of(program: &Program) -> Result<TaskLayout> {
        let unknown = |source| Error::TaskLayout { source };
        let (types, task_struct) = program.find_type("task_struct").map_err(unknown)?;
        let member = |path: &str| MemberLayout::resolve(types.clone(), task_struct, path);
        let size = types.get(task_struct).map_err(unknown)?.size.unwrap_or(0);
        let state = match member("__state") {
            Ok(m) => (m, false),
            Err(_) => (member("state").map_err(unknown)?, true),
        };
        Ok(TaskLayout {
            size,
            tasks: member("tasks").map_err(unknown)?,
            pid: member("pid").map_err(unknown)?,
            tgid: member("tgid").map_err(unknown)?,
            comm: member("comm").map_err(unknown)?,
            state,
            exit_state: member("exit_state").map_err(unknown)?,
            stack: member("stack").ok(),
            types,
            task_struct,
        })
    }

    /// `sizeof(struct task_struct)` (0 when the type source does not say).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset of `tasks`, the `list_head` on `init_task.tasks`.
    pub fn tasks_offset(&self) -> u64 {
        self.tasks.offset()
    }

    /// Where `stack` (the lowest address of the kernel stack) is, when the kernel has it.
    pub fn stack(&self) -> Option<&MemberLayout> {
        self.stack.as_ref()
    }

    /// The `task_struct` at `address`.
    pub fn object<'p>(&'p self, program: &'p Program, address: u64) -> Object<'p> {
        Object::new_borrowed(program, &self.types, address, self.task_struct)
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
    let task = layout.object(program, address);
    let pid = task.member_at(&layout.pid)?.read_u32()? as i32;
    let tgid = task.member_at(&layout.tgid)?.read_u32()? as i32;
    let comm = task.member_at(&layout.comm)?.read_cstr(TASK_COMM_LEN)?;
    let (state, wide) = &layout.state;
    let state = task.member_at(state)?;
    let state = if *wide {
        state.read_u64()? as u32
    } else {
        state.read_u32()?
    };
    let exit_state = task.member_at(&layout.exit_state)?.read_u32()?;
    let stack = match &layout.stack {
        Some(m) => Some(task.member_at(m)?.read_u64()?),
        None => None,
    };
    Ok(Task {
        address,
        pid,
        tgid,
        comm,
        state: state_letter(state, exit_state),
        stack,
    })
}

/// The list head of all tasks: `&init_task.tasks`.
pub fn task_list_head(program: &Program, layout: &TaskLayout) -> Result<u64> {
    Ok(program
        .symbol("init_task")?
        .wrapping_add(layout.tasks_offset()))
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
        .filter_map(|&link| {
            read_task(program, &layout, link.wrapping_sub(layout.tasks_offset())).ok()
        })
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
        element_size: layout.size().min(u32::MAX as u64) as u32,
        link_offset: layout.tasks_offset().min(u32::MAX as u64) as u32,
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
    use ambulance_introspect::memory::RawImage;
    use ambulance_introspect::translate::{PageTableBuilder, Paging};
    use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
    use std::time::Duration;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const TASKS: u64 = 0x10_0000;
    const SIZE: u64 = 256;
    const COMMS: [&str; 4] = [
        "swapper/0",
        "init",
        "kthreadd",
        "a-very-long-name-cut-at-16",
    ];

    /// Four `task_struct`s on `init_task.tasks` (the first is `init_task`), laid out by
    /// VMCOREINFO alone, which gives every member the placeholder type `u64`: with
    /// garbage next to each 4-byte member, only reads of the kernel's widths see the
    /// right values.
    fn guest(layout: &str) -> Program {
        let mut b =
            PageTableBuilder::new(vec![0u8; 2 << 20], 0x1000, 0x8_0000, Paging::Four).unwrap();
        b.map_range(DIRECT, 0, 2 << 20, 2 << 20, true, true)
            .unwrap();
        let ram = b.ram_mut();
        let mut put = |at: u64, v: &[u8]| {
            ram[at as usize..at as usize + v.len()].copy_from_slice(v);
        };
        for i in 0..4u64 {
            let at = TASKS + i * SIZE;
            put(
                at + 24,
                &[1u32.to_le_bytes(), 0xdeadu32.to_le_bytes()].concat(),
            );
            put(at + 32, &(DIRECT + 0x4_0000 * (i + 1)).to_le_bytes());
            let next = TASKS + (i + 1) % 4 * SIZE + 64;
            let prev = TASKS + (i + 3) % 4 * SIZE + 64;
            put(at + 64, &(DIRECT + next).to_le_bytes());
            put(at + 72, &(DIRECT + prev).to_le_bytes());
            put(at + 128, &(i as u32).to_le_bytes());
            put(at + 132, &(i as u32 + 100).to_le_bytes());
            put(
                at + 136,
                &[(i as u32 / 3 * 0x20).to_le_bytes(), [0xff; 4]].concat(),
            );
            let comm = COMMS[i as usize].as_bytes();
            put(at + 160, &comm[..comm.len().min(16)]);
        }
        let root = b.root();
        let v = Vmcoreinfo::parse(&format!(
            "SYMBOL(init_task)={:x}\nSYMBOL(tasklist_lock)={:x}\n{layout}",
            DIRECT + TASKS,
            DIRECT + 0x20_0000 - 8,
        ))
        .unwrap();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
        .with_vmcoreinfo(v)
    }

    const LAYOUT: &str = "SIZE(task_struct)=256\nOFFSET(task_struct.__state)=24\n\
        OFFSET(task_struct.stack)=32\nOFFSET(task_struct.tasks)=64\n\
        OFFSET(task_struct.pid)=128\nOFFSET(task_struct.tgid)=132\n\
        OFFSET(task_struct.exit_state)=136\nOFFSET(task_struct.comm)=160\n";

    #[test]
    fn the_task_list_read_as_objects() {
        let p = guest(LAYOUT);
        let (all, walk) = tasks(&p, WalkLimits::default()).unwrap();
        assert_eq!(walk.end, ambulance_introspect::walk::WalkEnd::Complete);
        let got: Vec<(i32, i32, &str, char)> = all
            .iter()
            .map(|t| (t.pid, t.tgid, t.comm.as_str(), t.state))
            .collect();
        assert_eq!(
            got,
            [
                (1, 101, "init", 'S'),
                (2, 102, "kthreadd", 'S'),
                (3, 103, "a-very-long-name", 'Z'),
            ],
            "init_task is the head, not a task"
        );
        assert_eq!(all[0].address, DIRECT + TASKS + SIZE);
        assert_eq!(all[1].stack, Some(DIRECT + 0x4_0000 * 3));

        let layout = TaskLayout::of(&p).unwrap();
        assert_eq!((layout.size(), layout.tasks_offset()), (SIZE, 64));
        let t = read_task(&p, &layout, DIRECT + TASKS).unwrap();
        assert_eq!((t.pid, t.comm.as_str()), (0, "swapper/0"));
        let root = task_list_root(&p, 1 << 40).unwrap();
        assert_eq!(root.name, TASKS_ROOT);
        assert_eq!(root.address, DIRECT + TASKS + 64);
        assert_eq!((root.element_size, root.link_offset), (256, 64));
        assert_eq!(root.max_count, u32::MAX);
        assert_eq!(root.lock, DIRECT + 0x20_0000 - 8);
        // A task past the end of memory is an error, not a panic.
        assert!(read_task(&p, &layout, u64::MAX - 8).is_err());
        assert!(read_task(&p, &layout, DIRECT + (2 << 20)).is_err());
        // Bounded by the walk limits.
        let (few, walk) = tasks(&p, WalkLimits::new(2, Duration::from_secs(1))).unwrap();
        assert_eq!(few.len(), 2);
        assert!(matches!(
            walk.end,
            ambulance_introspect::walk::WalkEnd::LimitHit { .. }
        ));
    }

    #[test]
    fn an_unknown_layout_says_what_is_missing() {
        let p = guest(&LAYOUT.replace("OFFSET(task_struct.pid)=128\n", ""));
        let e = TaskLayout::of(&p).unwrap_err();
        assert!(matches!(e, Error::TaskLayout { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "layout of task_struct unknown: type task_struct has no member \"pid\""
            ),
            "{e}"
        );
        let e = task_list_root(&p, 10).unwrap_err();
        assert!(e.to_string().contains("task_struct"), "{e}");
        let p = guest("");
        let e = TaskLayout::of(&p).unwrap_err();
        assert!(e.to_string().contains("no type \"task_struct\""), "{e}");
        // The older `long state` instead of `__state`.
        let p = guest(&LAYOUT.replace("__state", "state"));
        let t = read_task(&p, &TaskLayout::of(&p).unwrap(), DIRECT + TASKS).unwrap();
        assert_eq!(t.state, 'S', "the low half of the 8-byte state");
    }

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
