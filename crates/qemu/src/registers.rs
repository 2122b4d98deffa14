//! vCPU registers from QEMU's `info registers -a` (x86-64).
//!
//! The text has one section per vCPU, headed `CPU#N`, of `NAME=value` fields: `RAX=` …
//! `R15=`, `RIP=`, `RFL=`, segment lines (`FS =sel base limit flags`), `CR0=` … `CR4=`,
//! `EFER=`, and `HLT=` (1 when the vCPU is halted). A vCPU outside long mode shows 32-bit
//! names (`EAX=`, `EIP=`, `EFL=`) and no `R8`–`R15`. Names may be padded before the `=`
//! (`R8 =`), lines end in CRLF. Anything else is ignored; missing registers are an error,
//! never a panic.

use std::collections::HashMap;

use ambulance_report::{Hex, VcpuRegisters};

use crate::{Error, Result};

/// The most vCPUs one text may describe (QEMU's x86 limit is far lower in practice).
const MAX_VCPUS: usize = 4096;

/// Parses `info registers -a` (or a single vCPU's `info registers`, which has no `CPU#`
/// header and is taken as vCPU 0). The result is ordered by vCPU index.
pub fn parse_registers(text: &str) -> Result<Vec<VcpuRegisters>> {
    let mut sections: Vec<(u32, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r').trim();
        if let Some(rest) = line.strip_prefix("CPU#") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let index: u32 = digits
                .parse()
                .map_err(|_| Error::Registers(format!("bad vCPU header {line:?}")))?;
            if sections.iter().any(|(i, _)| *i == index) {
                return Err(Error::Registers(format!("vCPU {index} appears twice")));
            }
            if sections.len() >= MAX_VCPUS {
                return Err(Error::Registers(format!("more than {MAX_VCPUS} vCPUs")));
            }
            sections.push((index, Vec::new()));
        } else if !line.is_empty() {
            match sections.last_mut() {
                Some((_, lines)) => lines.push(line),
                None => sections.push((0, vec![line])),
            }
        }
    }
    if sections.is_empty() {
        return Err(Error::Registers("no vCPU in the output".into()));
    }
    let mut out = sections
        .iter()
        .map(|(index, lines)| vcpu(*index, lines))
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|r| r.vcpu);
    Ok(out)
}

/// The `NAME=value` fields of a section, and for segment registers the base (the word
/// after the selector).
fn fields<'a>(lines: &[&'a str]) -> HashMap<&'a str, &'a str> {
    let mut map = HashMap::new();
    for line in lines {
        // Join "R8 =value" into one token: a word followed by a word starting with '='.
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            let (name, value, next) = if let Some(eq) = w.find('=') {
                (&w[..eq], &w[eq + 1..], i + 1)
            } else if let Some(v) = words.get(i + 1).and_then(|n| n.strip_prefix('=')) {
                (w, v, i + 2)
            } else {
                i += 1;
                continue;
            };
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                map.entry(name).or_insert(value);
                if matches!(name, "FS" | "GS") {
                    if let Some(base) = words.get(next) {
                        map.entry(if name == "FS" { "FS.base" } else { "GS.base" })
                            .or_insert(base);
                    }
                }
            }
            i = next;
        }
    }
    map
}

fn vcpu(index: u32, lines: &[&str]) -> Result<VcpuRegisters> {
    let f = fields(lines);
    let long = f.contains_key("RIP");
    let hex = |names: &[&str]| -> Result<Hex> {
        let (name, text) = names
            .iter()
            .find_map(|n| f.get(n).map(|v| (*n, *v)))
            .ok_or_else(|| {
                Error::Registers(format!("vCPU {index}: no {}= field", names.join("= or ")))
            })?;
        if text.is_empty() || text.len() > 16 {
            return Err(Error::Registers(format!(
                "vCPU {index}: {name}={text:?} is not a 64-bit hex value"
            )));
        }
        u64::from_str_radix(text, 16)
            .map(Hex)
            .map_err(|_| Error::Registers(format!("vCPU {index}: {name}={text:?} is not hex")))
    };
    // R8-R15 exist only in long mode's dump.
    let ext = |name: &str| if long { hex(&[name]) } else { Ok(Hex(0)) };
    let halted = match f.get("HLT").copied() {
        Some("0") => false,
        Some("1") => true,
        Some(v) => {
            return Err(Error::Registers(format!(
                "vCPU {index}: HLT={v:?} is neither 0 nor 1"
            )))
        }
        None => return Err(Error::Registers(format!("vCPU {index}: no HLT= field"))),
    };
    Ok(VcpuRegisters {
        vcpu: index,
        activity: if halted { "halted" } else { "running" }.into(),
        rip: hex(&["RIP", "EIP"])?,
        rsp: hex(&["RSP", "ESP"])?,
        rbp: hex(&["RBP", "EBP"])?,
        rflags: hex(&["RFL", "EFL"])?,
        rax: hex(&["RAX", "EAX"])?,
        rbx: hex(&["RBX", "EBX"])?,
        rcx: hex(&["RCX", "ECX"])?,
        rdx: hex(&["RDX", "EDX"])?,
        rsi: hex(&["RSI", "ESI"])?,
        rdi: hex(&["RDI", "EDI"])?,
        r8: ext("R8")?,
        r9: ext("R9")?,
        r10: ext("R10")?,
        r11: ext("R11")?,
        r12: ext("R12")?,
        r13: ext("R13")?,
        r14: ext("R14")?,
        r15: ext("R15")?,
        cr0: hex(&["CR0"])?,
        cr2: hex(&["CR2"])?,
        cr3: hex(&["CR3"])?,
        cr4: hex(&["CR4"])?,
        efer: hex(&["EFER"])?,
        fs_base: hex(&["FS.base"])?,
        gs_base: hex(&["GS.base"])?,
        kernel_gs_base: None,
        segments: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../fixtures/qemu/info-registers-a-2vcpu.txt");

    #[test]
    fn a_captured_two_vcpu_sample_parses() {
        let regs = parse_registers(SAMPLE).unwrap();
        assert_eq!(regs.len(), 2);
        let (a, b) = (&regs[0], &regs[1]);
        assert_eq!((a.vcpu, b.vcpu), (0, 1));
        assert_eq!(a.activity, "halted");
        assert_eq!(b.activity, "running");
        assert_eq!(a.rip, Hex(0xffff_ffff_bb43_d023));
        assert_eq!(a.rax, Hex(0xffff_ffff_bb46_ab00));
        assert_eq!(a.rsp, Hex(0xffff_d4c5_4000_3fc0));
        assert_eq!(a.r8, Hex(0xffff_ffff_ffa3_a57e));
        assert_eq!(a.r9, Hex(0x314d_e22f));
        assert_eq!(a.r11, Hex(0xffff_d4c5_4000_3ff8));
        assert_eq!(a.rflags, Hex(0x93));
        assert_eq!(b.rip, Hex(0xffff_ffff_c04a_4230));
        for r in &regs {
            assert_eq!(r.cr0, Hex(0x8005_0033));
            assert_ne!(r.cr3, Hex(0));
            assert_eq!(r.efer, Hex(0xd01));
            assert_ne!(r.gs_base, Hex(0), "GS base is the per-CPU area");
        }
        assert_eq!(a.gs_base, Hex(0xffff_8e93_cf80_0000));
        assert_eq!(b.gs_base, Hex(0xffff_8e93_cf90_0000));
        assert_eq!(b.fs_base, Hex(0xabf_73c0));
    }

    #[test]
    fn lf_endings_and_a_single_vcpu_without_header() {
        let one = SAMPLE
            .split("CPU#1")
            .next()
            .unwrap()
            .replace("CPU#0", "")
            .replace("\r\n", "\n");
        let regs = parse_registers(&one).unwrap();
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].vcpu, 0);
        assert_eq!(regs[0].rip, Hex(0xffff_ffff_bb43_d023));
    }

    #[test]
    fn a_vcpu_outside_long_mode_reads_its_32_bit_registers() {
        let text = "CPU#0\nEAX=00000001 EBX=00000002 ECX=00000003 EDX=00000004\n\
            ESI=00000005 EDI=00000006 EBP=00000007 ESP=00000008\n\
            EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
            ES =0000 00000000 0000ffff 00009300\n\
            FS =0000 00000000 0000ffff 00009300\nGS =0000 00000000 0000ffff 00009300\n\
            CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000\nEFER=0000000000000000\n";
        let r = &parse_registers(text).unwrap()[0];
        assert_eq!(
            (r.rip, r.rsp, r.rax, r.r8),
            (Hex(0xfff0), Hex(8), Hex(1), Hex(0))
        );
        assert_eq!(r.activity, "halted");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let bad = [
            "",
            "\r\n\r\n",
            "CPU#",
            "CPU#x\nRAX=1",
            "CPU#0\nCPU#0\n",
            "RAX=zz",
            "CPU#0\nRIP=",
            "CPU#0\nR8 =",
            "CPU#0\n= = == R8 = =1 FS =",
            "CPU#99999999999999999999",
            "\u{0}\u{ff}é=ü",
        ];
        for text in bad {
            assert!(parse_registers(text).is_err(), "{text:?}");
        }
        // Every prefix and a field-by-field corruption of the real sample.
        for end in (0..SAMPLE.len())
            .filter(|&i| SAMPLE.is_char_boundary(i))
            .step_by(7)
        {
            let _ = parse_registers(&SAMPLE[..end]);
        }
        let e = parse_registers(&SAMPLE.replace("CR3=", "CRX=")).unwrap_err();
        assert!(e.to_string().contains("vCPU 0: no CR3= field"), "{e}");
        let e =
            parse_registers(&SAMPLE.replacen("RIP=ffffffffbb43d023", "RIP=ffffffffbb43d0231", 1))
                .unwrap_err();
        assert!(e.to_string().contains("not a 64-bit hex value"), "{e}");
        let e = parse_registers(&SAMPLE.replace("HLT=1", "HLT=7")).unwrap_err();
        assert!(e.to_string().contains("HLT"), "{e}");
    }
}
