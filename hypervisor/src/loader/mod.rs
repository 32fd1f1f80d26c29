//! Guest image loaders.
pub mod elf;
