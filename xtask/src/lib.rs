//! Build, disk-image and emulator automation for ferrovisor.
//!
//! The `xtask` binary (`cargo xtask ...`) is a thin command-line front end over this library;
//! the integration tests (`tests/`) call the same functions to lay out an ESP for a manifest
//! and boot it under Bochs or QEMU. Nothing here is needed when the hypervisor runs.

pub mod bench;
pub mod build;
pub mod disk;
pub mod esp;
pub mod flat;
pub mod linux;
pub mod machine;
pub mod manifest;
pub mod ovf;
pub mod paths;
pub mod prereq;
pub mod serial;

/// Runs `cmd`, failing with the command line in the message when it cannot start or exits
/// non-zero.
pub fn run_command(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {shown}: {e}"))?;
    if !status.success() {
        anyhow::bail!("{shown} failed ({status})");
    }
    Ok(())
}
