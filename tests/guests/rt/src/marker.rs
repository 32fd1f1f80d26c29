//! "Foreign data" marker: a 16-byte pattern computed at run time (never a
//! literal in any image). Guests plant it in their free RAM; `escape` looks
//! for it in its own RAM, where finding it means memory leaked between guests.

use core::ptr;

/// Size of the marker in bytes; it is planted at 16-byte aligned addresses.
pub const LEN: u64 = 16;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The marker as two little-endian words.
pub fn pattern() -> [u64; 2] {
    // black_box keeps the compiler from folding the result into the image.
    let seed = core::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    let a = mix(seed);
    [a, mix(a ^ seed)]
}

fn aligned(start: u64, end: u64) -> (u64, u64) {
    (start.next_multiple_of(LEN), end & !(LEN - 1))
}

/// Writes the marker at every 16-byte slot in `[start, end)`.
///
/// # Safety
/// The range must be writable memory that nothing else uses.
pub unsafe fn plant(start: u64, end: u64) {
    let [a, b] = pattern();
    let (mut addr, end) = aligned(start, end);
    while addr < end {
        let p = addr as *mut u64;
        // SAFETY: inside the caller's range, 16-byte aligned.
        unsafe {
            ptr::write_volatile(p, a);
            ptr::write_volatile(p.add(1), b);
        }
        addr += LEN;
    }
}

/// Calls `found(addr)` for each 16-byte aligned marker in `[start, end)`;
/// stops early when `found` returns false.
///
/// # Safety
/// The range must be readable memory.
pub unsafe fn scan(start: u64, end: u64, mut found: impl FnMut(u64) -> bool) {
    let [a, b] = pattern();
    let (mut addr, end) = aligned(start, end);
    while addr < end {
        let p = addr as *const u64;
        // SAFETY: inside the caller's range, 16-byte aligned.
        let hit = unsafe { ptr::read_volatile(p) == a && ptr::read_volatile(p.add(1)) == b };
        if hit && !found(addr) {
            return;
        }
        addr += LEN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plant_and_scan() {
        #[repr(align(16))]
        struct Buf([u64; 64]);
        let mut buf = Box::new(Buf([0; 64]));
        let base = buf.0.as_mut_ptr() as u64;
        let mut hits = Vec::new();
        // SAFETY: both ranges lie inside `buf`.
        unsafe {
            scan(base, base + 512, |a| {
                hits.push(a);
                true
            });
            assert!(hits.is_empty());
            plant(base + 64, base + 64 + 48);
            scan(base, base + 512, |a| {
                hits.push(a);
                true
            });
        }
        assert_eq!(hits, [base + 64, base + 80, base + 96]);
        let [a, b] = pattern();
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
