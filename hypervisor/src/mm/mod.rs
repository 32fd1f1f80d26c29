//! Physical memory: frame allocator, host page tables, guest memory.
pub mod frames;
