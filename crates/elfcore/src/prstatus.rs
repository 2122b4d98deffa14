//! x86-64 `struct elf_prstatus`, the descriptor of an `NT_PRSTATUS` note: one CPU's
//! registers (`pr_reg`, a `struct user_regs_struct`) and `pr_pid`.

use crate::elf::{u32_at, u64_at};
use crate::CoreError;

/// Size of x86-64 `struct elf_prstatus`.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_pid` in `elf_prstatus`.
pub const PR_PID_OFFSET: usize = 32;
/// Offset of `pr_reg` (`struct user_regs_struct`) in `elf_prstatus`.
pub const PR_REG_OFFSET: usize = 112;
/// Number of registers in `user_regs_struct`.
pub const USER_REGS: usize = 27;

/// x86-64 general-purpose registers, in `struct user_regs_struct` order (the layout of
/// `pr_reg` in `NT_PRSTATUS`).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl UserRegs {
    /// From the 27 words of `user_regs_struct`.
    pub fn from_array(r: [u64; USER_REGS]) -> UserRegs {
        UserRegs {
            r15: r[0],
            r14: r[1],
            r13: r[2],
            r12: r[3],
            rbp: r[4],
            rbx: r[5],
            r11: r[6],
            r10: r[7],
            r9: r[8],
            r8: r[9],
            rax: r[10],
            rcx: r[11],
            rdx: r[12],
            rsi: r[13],
            rdi: r[14],
            orig_rax: r[15],
            rip: r[16],
            cs: r[17],
            eflags: r[18],
            rsp: r[19],
            ss: r[20],
            fs_base: r[21],
            gs_base: r[22],
            ds: r[23],
            es: r[24],
            fs: r[25],
            gs: r[26],
        }
    }

    /// The 27 words of `user_regs_struct`.
    pub fn to_array(&self) -> [u64; USER_REGS] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }
}

/// One CPU's `NT_PRSTATUS` note.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrStatus {
    /// Position among the core's `NT_PRSTATUS` notes (QEMU and kdump write one per CPU,
    /// in CPU order). Not stored in the note: the writer writes the notes in the order it
    /// is given them, and the reader numbers them as it finds them.
    pub index: usize,
    /// `pr_pid` (QEMU and Ambulance: the CPU index + 1; kdump: the task that ran on the
    /// CPU).
    pub pid: i32,
    /// The registers.
    pub regs: UserRegs,
}

impl PrStatus {
    /// The `elf_prstatus` bytes: `pr_pid` and `pr_reg`, everything else zero.
    pub fn encode(&self) -> [u8; PRSTATUS_SIZE] {
        let mut b = [0u8; PRSTATUS_SIZE];
        b[PR_PID_OFFSET..PR_PID_OFFSET + 4].copy_from_slice(&self.pid.to_le_bytes());
        for (i, r) in self.regs.to_array().iter().enumerate() {
            let at = PR_REG_OFFSET + i * 8;
            b[at..at + 8].copy_from_slice(&r.to_le_bytes());
        }
        b
    }

    /// Decodes the `index`th `NT_PRSTATUS` note's descriptor. Longer descriptors are
    /// accepted (only `pr_pid` and `pr_reg` are read); shorter ones are refused.
    pub fn decode(index: usize, desc: &[u8]) -> Result<PrStatus, CoreError> {
        let need = PR_REG_OFFSET + USER_REGS * 8;
        if desc.len() < need {
            return Err(crate::error::malformed(format!(
                "NT_PRSTATUS note {index} has {} bytes; an x86-64 elf_prstatus needs at least {need}",
                desc.len()
            )));
        }
        let pid = u32_at(desc, PR_PID_OFFSET).unwrap_or(0) as i32;
        let mut r = [0u64; USER_REGS];
        for (i, w) in r.iter_mut().enumerate() {
            *w = u64_at(desc, PR_REG_OFFSET + i * 8).unwrap_or(0);
        }
        Ok(PrStatus {
            index,
            pid,
            regs: UserRegs::from_array(r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_sit_where_gdb_looks_and_round_trip() {
        let p = PrStatus {
            index: 3,
            pid: -2,
            regs: UserRegs {
                r15: 0x15,
                rip: 0x1122_3344_5566_7788,
                rsp: 0x99,
                gs: 7,
                ..Default::default()
            },
        };
        let b = p.encode();
        let reg = |i: usize| u64::from_le_bytes(b[112 + i * 8..120 + i * 8].try_into().unwrap());
        assert_eq!(reg(0), 0x15);
        assert_eq!(reg(16), 0x1122_3344_5566_7788);
        assert_eq!(reg(19), 0x99);
        assert_eq!(reg(26), 7);
        assert_eq!(i32::from_le_bytes(b[32..36].try_into().unwrap()), -2);
        assert_eq!(PrStatus::decode(3, &b).unwrap(), p);
        let regs = UserRegs::from_array(std::array::from_fn(|i| i as u64));
        assert_eq!(regs.to_array(), std::array::from_fn(|i| i as u64));
        let err = PrStatus::decode(1, &b[..100]).unwrap_err();
        assert!(
            err.to_string().contains("NT_PRSTATUS note 1 has 100 bytes"),
            "{err}"
        );
    }
}
