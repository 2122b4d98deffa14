//! A slab-style allocator: each cache owns one contiguous slab of equal-sized objects in
//! the direct map and keeps its free objects on a singly linked free list (LIFO). A free
//! object holds the next pointer at offset 0 and the free poison at offset 8; an
//! allocated object keeps its own magic at offset 8. Every allocation and free checks the
//! list entries it touches, like SLUB's debug checks.

use core::fmt;
use core::ptr;
use core::sync::atomic::{compiler_fence, Ordering};

use ambulance_guest_agent::abi::ports::panic_reason;

use crate::kfmt::n;
use crate::mem;
use crate::sync::{lock, lock_id, Spinlock};

/// `SlabCache::magic`.
pub const SLAB_MAGIC: u64 = 0x6261_6c73_6275_6d61; // "ambuslab"
/// Offset-8 word of every free object (SLUB's `POISON_FREE` byte, repeated).
pub const FREE_POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;
/// `KObject::magic`.
pub const KOBJECT_MAGIC: u64 = 0x2174_6365_6a62_6f6b; // "kobject!"
/// `Buffer::magic`.
pub const BUFFER_MAGIC: u64 = 0x2172_6566_6675_6221; // "!buffer!"

/// A free object.
#[repr(C)]
pub struct FreeObject {
    pub next: *mut FreeObject,
    pub poison: u64,
}

/// A kernel object with a magic field (cache `kobject`).
#[repr(C)]
pub struct KObject {
    pub header: u64,
    pub magic: u64,
    pub serial: u64,
    pub owner_pid: u32,
    pub refcount: u32,
    pub payload: [u64; 4],
}

/// A scratch buffer (cache `buffer`).
#[repr(C)]
pub struct Buffer {
    pub header: u64,
    pub magic: u64,
    pub len: u64,
    pub data: [u8; 232],
}

/// One cache.
#[repr(C)]
pub struct SlabCache {
    pub magic: u64,
    pub name: [u8; 16],
    pub object_size: u32,
    pub capacity: u32,
    /// Direct-map address of the first object.
    pub base: u64,
    /// One past the last object.
    pub end: u64,
    /// Head of the free list, or null.
    pub free_list: *mut FreeObject,
    pub nr_free: u32,
    /// Index of the lock protecting this cache.
    pub lock_id: u32,
    pub allocs: u64,
    pub frees: u64,
}

const EMPTY_CACHE: SlabCache = SlabCache {
    magic: 0,
    name: [0; 16],
    object_size: 0,
    capacity: 0,
    base: 0,
    end: 0,
    free_list: ptr::null_mut(),
    nr_free: 0,
    lock_id: 0,
    allocs: 0,
    frees: 0,
};

/// Cache indices.
pub const KOBJECT: usize = 0;
pub const BUFFER: usize = 1;
/// Number of caches.
pub const NR_CACHES: usize = 2;
/// Root names of the caches' free lists, by cache index.
pub const FREELIST_ROOTS: [&str; NR_CACHES] = ["freelist.kobject", "freelist.buffer"];

/// All caches.
pub static mut SLAB_CACHES: [SlabCache; NR_CACHES] = [EMPTY_CACHE; NR_CACHES];

/// The cache with this index.
///
/// # Safety
/// Mutation only with the cache's lock held (or during single-CPU boot).
pub unsafe fn cache(idx: usize) -> &'static mut SlabCache {
    // SAFETY: forwarded.
    unsafe { &mut (*ptr::addr_of_mut!(SLAB_CACHES))[idx] }
}

/// The lock of cache `idx`.
pub fn cache_lock(idx: usize) -> &'static Spinlock {
    lock(if idx == KOBJECT {
        lock_id::SLAB_KOBJECT
    } else {
        lock_id::SLAB_BUFFER
    })
}

/// Creates cache `idx` with `capacity` objects (boot CPU, after the direct map is live).
pub fn init_cache(idx: usize, name: &str, object_size: u32, capacity: u32) {
    let bytes = object_size as u64 * capacity as u64;
    let pa = mem::alloc_pages(bytes.div_ceil(mem::PAGE));
    let base = mem::phys_to_virt(pa);
    // SAFETY: single-CPU boot.
    let c = unsafe { cache(idx) };
    c.name = [0; 16];
    c.name[..name.len()].copy_from_slice(name.as_bytes());
    c.object_size = object_size;
    c.capacity = capacity;
    c.base = base;
    c.end = base + bytes;
    c.lock_id = cache_lock(idx).id;
    c.free_list = ptr::null_mut();
    for i in (0..capacity as u64).rev() {
        let obj = (base + i * object_size as u64) as *mut FreeObject;
        // SAFETY: inside the slab just allocated.
        unsafe {
            (*obj).poison = FREE_POISON;
            (*obj).next = c.free_list;
        }
        c.free_list = obj;
    }
    c.nr_free = capacity;
    c.magic = SLAB_MAGIC;
}

/// What is wrong with a cache's free list.
pub enum SlabError {
    /// An entry outside the slab or misaligned.
    Outside { entry: u64 },
    /// An entry without the free poison.
    NotFree { entry: u64, found: u64 },
    /// More entries than the cache has objects.
    Cycle { walked: u32 },
    /// Freeing an object that is already free.
    DoubleFree { entry: u64 },
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SlabError::Outside { entry } => {
                write!(f, "free list entry {:#x} outside its slab", n(entry))
            }
            SlabError::NotFree { entry, found } => write!(
                f,
                "free list entry {:#x} is not free (poison {:#x}): double allocation",
                n(entry),
                n(found)
            ),
            SlabError::Cycle { walked } => {
                write!(f, "free list cycle: more than {} entries", n(walked))
            }
            SlabError::DoubleFree { entry } => write!(f, "double free of {:#x}", n(entry)),
        }
    }
}

impl SlabCache {
    fn contains(&self, p: u64) -> bool {
        p >= self.base && p < self.end && (p - self.base).is_multiple_of(self.object_size as u64)
    }

    fn check_entry(&self, p: *mut FreeObject) -> Result<(), SlabError> {
        let entry = p as u64;
        if !self.contains(entry) {
            return Err(SlabError::Outside { entry });
        }
        // SAFETY: inside the slab.
        let found = unsafe { ptr::read_volatile(&(*p).poison) };
        if found != FREE_POISON {
            return Err(SlabError::NotFree { entry, found });
        }
        Ok(())
    }

    /// Walks the whole free list (bounded by the capacity).
    pub fn check_free_list(&self) -> Result<u32, SlabError> {
        let mut n = 0;
        let mut p = self.free_list;
        while !p.is_null() {
            self.check_entry(p)?;
            n += 1;
            if n > self.capacity {
                return Err(SlabError::Cycle {
                    walked: self.capacity,
                });
            }
            // SAFETY: checked inside the slab.
            p = unsafe { ptr::read_volatile(&(*p).next) };
        }
        Ok(n)
    }
}

fn fail(idx: usize, cpu: u32, err: SlabError) -> ! {
    crate::panic::panic_begin(cpu);
    cache_lock(idx).unlock(cpu);
    crate::panic::kernel_panic(
        panic_reason::SLAB_CORRUPTION,
        format_args!("slab {}: {err}", FREELIST_ROOTS[idx]),
    )
}

/// Allocates an object from cache `idx`, or `None` when it is exhausted.
pub fn alloc(idx: usize, cpu: u32) -> Option<*mut u8> {
    let l = cache_lock(idx);
    l.lock(cpu);
    // SAFETY: the cache lock is held.
    let c = unsafe { cache(idx) };
    let head = c.free_list;
    if head.is_null() {
        l.unlock(cpu);
        return None;
    }
    if let Err(e) = c.check_entry(head) {
        fail(idx, cpu, e);
    }
    // SAFETY: `head` was checked to be a free object of this slab.
    let next = unsafe { ptr::read_volatile(&(*head).next) };
    if !next.is_null() {
        if let Err(e) = c.check_entry(next) {
            fail(idx, cpu, e);
        }
    }
    // Unlink before un-poisoning, in this order even for the compiler: a host that
    // freezes the guest between the two stores must see a consistent free list.
    // SAFETY: `c.free_list` is a field of the locked cache.
    unsafe { ptr::write_volatile(&mut c.free_list, next) };
    compiler_fence(Ordering::SeqCst);
    c.nr_free -= 1;
    c.allocs += 1;
    // SAFETY: the object is ours now.
    unsafe { ptr::write_volatile(&mut (*head).poison, 0) };
    l.unlock(cpu);
    Some(head as *mut u8)
}

/// Returns `obj` to cache `idx`.
pub fn free(idx: usize, cpu: u32, obj: *mut u8) {
    let l = cache_lock(idx);
    l.lock(cpu);
    // SAFETY: the cache lock is held.
    let c = unsafe { cache(idx) };
    let entry = obj as u64;
    if !c.contains(entry) {
        fail(idx, cpu, SlabError::Outside { entry });
    }
    let f = obj as *mut FreeObject;
    // SAFETY: inside the slab.
    unsafe {
        if ptr::read_volatile(&(*f).poison) == FREE_POISON {
            fail(idx, cpu, SlabError::DoubleFree { entry });
        }
        ptr::write_volatile(&mut (*f).poison, FREE_POISON);
        ptr::write_volatile(&mut (*f).next, c.free_list);
    }
    compiler_fence(Ordering::SeqCst);
    // Publish only once the entry is poisoned and linked (see `alloc`).
    // SAFETY: `c.free_list` is a field of the locked cache.
    unsafe { ptr::write_volatile(&mut c.free_list, f) };
    c.nr_free += 1;
    c.frees += 1;
    l.unlock(cpu);
}
