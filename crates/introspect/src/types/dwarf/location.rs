//! Locations: the small DWARF expressions of `DW_AT_data_member_location` (a constant
//! offset) and of a global variable's `DW_AT_location` (an address), evaluated without a
//! machine.

use gimli::{Expression, Operation};

use super::sections::R;
use super::units::UnitCtx;
use super::DwarfTypes;
use crate::Result;

/// How a DWARF expression for a member location or a variable is read.
fn eval_simple(expr: Expression<R>, encoding: gimli::Encoding) -> Option<SimpleLoc> {
    let mut ops = expr.operations(encoding);
    let mut stack: Vec<u64> = vec![0];
    let mut addr = None;
    for _ in 0..16 {
        let op = match ops.next() {
            Ok(Some(op)) => op,
            Ok(None) => {
                return Some(match addr {
                    Some(a) if stack.len() == 1 => SimpleLoc::Addr(a),
                    Some(_) => return None,
                    None => SimpleLoc::Offset(*stack.last()?),
                })
            }
            Err(_) => return None,
        };
        match op {
            Operation::PlusConstant { value } => {
                let top = stack.last_mut()?;
                *top = top.wrapping_add(value);
            }
            Operation::UnsignedConstant { value } => stack.push(value),
            Operation::SignedConstant { value } => stack.push(value as u64),
            Operation::Plus => {
                let a = stack.pop()?;
                let b = stack.last_mut()?;
                *b = b.wrapping_add(a);
            }
            Operation::Address { address } if addr.is_none() && stack.len() == 1 => {
                addr = Some(Ok(address));
            }
            Operation::AddressIndex { index } if addr.is_none() && stack.len() == 1 => {
                addr = Some(Err(index));
            }
            _ => return None,
        }
        if stack.len() > 8 {
            return None;
        }
    }
    None
}

enum SimpleLoc {
    /// An offset from the containing object.
    Offset(u64),
    /// An address (`DW_OP_addr`) or an index into `.debug_addr` (`DW_OP_addrx`).
    Addr(std::result::Result<u64, gimli::DebugAddrIndex<usize>>),
}

impl DwarfTypes {
    pub(super) fn location_address(&self, u: &UnitCtx, expr: Expression<R>) -> Option<u64> {
        match eval_simple(expr, u.unit.encoding())? {
            SimpleLoc::Addr(Ok(a)) => Some(a),
            SimpleLoc::Addr(Err(index)) => self.dwarf.address(&u.unit, index).ok(),
            SimpleLoc::Offset(_) => None,
        }
    }

    pub(super) fn member_offset(
        &self,
        u: &UnitCtx,
        expr: Expression<R>,
        off: u64,
        what: &dyn Fn() -> String,
    ) -> Result<u64> {
        match eval_simple(expr, u.unit.encoding()) {
            Some(SimpleLoc::Offset(o)) => Ok(o),
            _ => Err(self.err(
                off,
                format!(
                    "member {}: location expression is not a constant offset",
                    what()
                ),
            )),
        }
    }
}
