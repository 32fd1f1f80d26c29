//! The hypervisor heap: a linked-list allocator over one region handed over by the boot stage.
use linked_list_allocator::LockedHeap;

#[cfg_attr(not(test), global_allocator)]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `size` bytes at `start` to the heap.
///
/// # Safety
/// The region must be unused RAM owned by the hypervisor for its whole life,
/// and this must be called once, before the first allocation.
pub unsafe fn init(start: *mut u8, size: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { HEAP.lock().init(start, size) };
}

/// (used, free) bytes.
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
