//! Integer formatting that stays away from SSE.
//!
//! On hosts where guest code runs under KVM's instruction emulator (nested set-ups such
//! as PVM), SSE instructions other than plain moves cannot be emulated, and the
//! precompiled `core` formats integers (and pads fields) with SSE. The kernel therefore
//! formats every number through [`N`], which writes digits itself and hands `core` only
//! ready-made strings. Use it as `{}` (decimal), `{:x}` / `{:#x}` (hex, `#` adds `0x`),
//! with an optional zero-padded width such as `{:#010x}`.

use core::fmt;

/// A number to format.
#[derive(Clone, Copy)]
pub struct N(pub u64);

/// Wraps any unsigned integer (or pointer-sized value) for formatting.
pub fn n(v: impl Into<u64>) -> N {
    N(v.into())
}

fn digits(mut v: u64, radix: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v % radix) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= radix;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
}

fn emit(f: &mut fmt::Formatter<'_>, prefix: &str, body: &str) -> fmt::Result {
    f.write_str(prefix)?;
    let width = f.width().unwrap_or(0);
    let mut pad = width.saturating_sub(prefix.len() + body.len());
    while pad > 0 {
        f.write_str("0")?;
        pad -= 1;
    }
    f.write_str(body)
}

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 20];
        emit(f, "", digits(self.0, 10, &mut buf))
    }
}

impl fmt::LowerHex for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 20];
        let prefix = if f.alternate() { "0x" } else { "" };
        emit(f, prefix, digits(self.0, 16, &mut buf))
    }
}
