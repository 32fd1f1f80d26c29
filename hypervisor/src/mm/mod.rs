//! Physical memory: the global frame allocator and helpers over it. Host
//! virtual addresses equal physical ones (identity map, see `paging`).
pub mod frames;

pub use arch::addr::Hpa;
use frames::FrameAllocator;
use spin::Mutex;

/// Lock order: FRAMES is a leaf lock; never take another lock while holding it.
pub static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

pub const PAGE: u64 = 4096;

/// Allocates `size` bytes aligned to `align` and zeroes them.
pub fn alloc_zeroed(size: u64, align: u64) -> Option<Hpa> {
    let size = size.div_ceil(PAGE) * PAGE;
    let p = FRAMES.lock().alloc(size, align).ok()?;
    // SAFETY: the range was just handed out by the allocator and is identity-mapped.
    unsafe { core::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0, size as usize) };
    Some(p)
}

/// Allocates zeroed memory that ends below `limit`.
pub fn alloc_zeroed_below(size: u64, limit: u64) -> Option<Hpa> {
    let size = size.div_ceil(PAGE) * PAGE;
    let p = FRAMES.lock().alloc_below(size, PAGE, limit).ok()?;
    // SAFETY: as in `alloc_zeroed`.
    unsafe { core::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0, size as usize) };
    Some(p)
}

pub fn alloc_zeroed_page() -> Option<Hpa> {
    alloc_zeroed(PAGE, PAGE)
}

/// Zeroes and returns a range to the allocator.
pub fn free_zeroed(start: Hpa, size: u64) {
    let size = size.div_ceil(PAGE) * PAGE;
    // SAFETY: the caller owned the range; scrubbing it keeps one guest's data
    // from reaching the next owner.
    unsafe { core::ptr::write_bytes(start.as_mut_ptr::<u8>(), 0, size as usize) };
    if let Err(e) = FRAMES.lock().free(start, size) {
        log::error!("hv: frame allocator: freeing {start:#x}+{size:#x}: {e:?}");
    }
}

pub fn free_bytes() -> u64 {
    FRAMES.lock().free_bytes()
}

/// The biggest free run in bytes (what one contiguous allocation can get at most).
pub fn largest_free_run() -> u64 {
    FRAMES
        .lock()
        .free_ranges()
        .map(|(s, e)| e - s)
        .max()
        .unwrap_or(0)
}
