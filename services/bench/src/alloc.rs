//! A counting allocator: live heap bytes, for the memory-per-cached-key benchmark. It counts
//! only while `counting` is on: an atomic add on every allocation, from every thread, costs
//! the in-process server measurable time (about a tenth of its CPU when listing keys).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ON: AtomicBool = AtomicBool::new(false);

pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts or stops counting. Memory freed while counting but allocated before counts as a
/// negative (the counter wraps), so only differences between two readings mean anything.
pub fn counting(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Heap bytes allocated and not freed while counting.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}
