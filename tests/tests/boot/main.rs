//! Integration tests: boot ferrovisor in an emulator and read its serial console.
//!
//! They need `cargo xtask build` to have run (`cargo xtask test` does both). Each test is one
//! boot with many checks; Bochs boots are CPU-heavy, so run at most two at a time on two cores.

mod bochs_adversarial;
mod bochs_basic;
mod bochs_conformance;
mod bochs_linux;
mod bochs_linux_disk;
mod bochs_linux_nbd;
mod bochs_linux_net;
mod bochs_linux_snapshot;
mod bochs_linux_uplink;
mod bochs_ovf;
mod bochs_snapshot;
mod qemu_no_vtx;
