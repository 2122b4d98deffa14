//! Intrusive circular doubly linked lists (Linux's `list_head`), with the integrity checks
//! of `CONFIG_DEBUG_LIST`: every insertion and removal first checks that the neighbours
//! still point at each other, and a violation is a kernel panic.

use core::fmt;
use core::ptr;

use crate::kfmt::n;

/// A link: embedded in each element, and used alone as the list head (a sentinel).
#[repr(C)]
pub struct ListHead {
    pub next: *mut ListHead,
    pub prev: *mut ListHead,
}

impl ListHead {
    /// An unlinked head; call [`init`] before use.
    pub const fn new() -> Self {
        ListHead {
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        }
    }
}

/// What is wrong with a list.
pub enum ListError {
    /// `node.next.prev` is not `node`.
    NextPrev { node: u64, next: u64, found: u64 },
    /// `node.prev.next` is not `node`.
    PrevNext { node: u64, prev: u64, found: u64 },
    /// More nodes than the list can hold: a cycle that does not pass the head.
    TooLong { limit: usize },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ListError::NextPrev { node, next, found } => {
                let (node, next, found) = (n(node), n(next), n(found));
                write!(
                f,
                "list corruption. next->prev should be {node:#x}, but was {found:#x} (next={next:#x})"
            )
            }
            ListError::PrevNext { node, prev, found } => {
                let (node, prev, found) = (n(node), n(prev), n(found));
                write!(
                f,
                "list corruption. prev->next should be {node:#x}, but was {found:#x} (prev={prev:#x})"
            )
            }
            ListError::TooLong { limit } => {
                write!(
                    f,
                    "list corruption. more than {} entries: cycle",
                    n(limit as u64)
                )
            }
        }
    }
}

/// Makes `head` an empty list.
///
/// # Safety
/// `head` must be valid for writes.
pub unsafe fn init(head: *mut ListHead) {
    // SAFETY: forwarded.
    unsafe {
        (*head).next = head;
        (*head).prev = head;
    }
}

/// Checks that `node`'s neighbours point back at it.
///
/// # Safety
/// `node` and its neighbours must be readable (the list's lock is held).
pub unsafe fn check_node(node: *mut ListHead) -> Result<(), ListError> {
    // SAFETY: forwarded.
    unsafe {
        let next = (*node).next;
        let prev = (*node).prev;
        let found = (*next).prev;
        if found != node {
            return Err(ListError::NextPrev {
                node: node as u64,
                next: next as u64,
                found: found as u64,
            });
        }
        let found = (*prev).next;
        if found != node {
            return Err(ListError::PrevNext {
                node: node as u64,
                prev: prev as u64,
                found: found as u64,
            });
        }
    }
    Ok(())
}

/// Walks the whole list checking every link, with at most `limit` elements.
///
/// # Safety
/// As for [`check_node`], for every node.
pub unsafe fn check_list(head: *mut ListHead, limit: usize) -> Result<usize, ListError> {
    let mut n = 0;
    let mut node = head;
    loop {
        // SAFETY: forwarded.
        unsafe { check_node(node)? };
        // SAFETY: forwarded.
        node = unsafe { (*node).next };
        if node == head {
            return Ok(n);
        }
        n += 1;
        if n > limit {
            return Err(ListError::TooLong { limit });
        }
    }
}

/// Adds `new` before `head` (at the tail).
///
/// # Safety
/// The list's lock is held; `new` is not on any list.
pub unsafe fn add_tail(new: *mut ListHead, head: *mut ListHead) -> Result<(), ListError> {
    // SAFETY: forwarded.
    unsafe {
        let prev = (*head).prev;
        check_node(head)?;
        (*new).next = head;
        (*new).prev = prev;
        (*prev).next = new;
        (*head).prev = new;
    }
    Ok(())
}

/// Removes `entry` from its list.
///
/// # Safety
/// The list's lock is held; `entry` is on the list.
pub unsafe fn del(entry: *mut ListHead) -> Result<(), ListError> {
    // SAFETY: forwarded.
    unsafe {
        check_node(entry)?;
        let next = (*entry).next;
        let prev = (*entry).prev;
        (*next).prev = prev;
        (*prev).next = next;
        (*entry).next = ptr::null_mut();
        (*entry).prev = ptr::null_mut();
    }
    Ok(())
}

/// Whether the list is empty.
///
/// # Safety
/// `head` must be readable.
pub unsafe fn is_empty(head: *const ListHead) -> bool {
    // SAFETY: forwarded.
    unsafe { core::ptr::eq((*head).next, head) }
}
