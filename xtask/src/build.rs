//! Building the UEFI application and the test guests.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths::{self, GUEST_TARGET, UEFI_TARGET};
use crate::run_command;

/// The `cargo` that started us (so the pinned toolchain is used), else `cargo` from `PATH`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(paths::root());
    cmd
}

/// Makes sure the toolchain pinned by `rust-toolchain.toml` has the cross targets.
///
/// rustup installs the targets listed there only when it installs the toolchain itself; a
/// toolchain that was already present keeps whatever targets it had, so add missing ones here.
pub fn ensure_rust_targets() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(paths::root())
        .output();
    let Ok(installed) = installed else {
        eprintln!("xtask: rustup not found; assuming the {UEFI_TARGET} and {GUEST_TARGET} targets are installed");
        return Ok(());
    };
    let listed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = [UEFI_TARGET, GUEST_TARGET]
        .into_iter()
        .filter(|target| !listed.lines().any(|line| line.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Rust targets {}", missing.join(" "));
    run_command(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing)
            .current_dir(paths::root()),
    )
}

/// Builds `boot.efi` (release) and returns its path.
pub fn build_boot() -> Result<PathBuf> {
    eprintln!("xtask: building the UEFI application (boot, release, {UEFI_TARGET})");
    run_command(cargo().args(["build", "-p", "boot", "--release", "--target", UEFI_TARGET]))
        .context("building the UEFI application failed (see the compiler output above)")?;
    let efi = paths::boot_efi();
    if !efi.is_file() {
        bail!(
            "the build succeeded but {} is missing",
            paths::display(&efi)
        );
    }
    Ok(efi)
}

/// Builds every member of the test guest workspace (release) and returns the names of the
/// guest binaries found afterwards. A checkout without `tests/guests/Cargo.toml` has no guests.
pub fn build_guests() -> Result<Vec<String>> {
    let workspace = paths::guests_workspace();
    if !workspace.join("Cargo.toml").is_file() {
        eprintln!(
            "xtask: no test guests ({} is missing), skipping",
            paths::display(&workspace.join("Cargo.toml"))
        );
        return Ok(Vec::new());
    }
    eprintln!("xtask: building the test guests (release, {GUEST_TARGET})");
    // The guest workspace has its own .cargo/config.toml, so it must be the working directory;
    // its target directory is pinned so that a CARGO_TARGET_DIR meant for the root workspace
    // does not move the guests' output.
    let mut cmd = cargo();
    cmd.current_dir(&workspace)
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(paths::guests_target_dir());
    run_command(&mut cmd)
        .context("building the test guests failed (see the compiler output above)")?;
    crate::flat::write_flat_guests(&paths::guest_bin_dir())?;
    built_guests()
}

/// Names of the guest binaries present in the guest build directory, sorted.
pub fn built_guests() -> Result<Vec<String>> {
    let dir = paths::guest_bin_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Cargo leaves `<name>` (the ELF) and `<name>.d` (dependency info) here.
        if entry.file_type()?.is_file() && !name.contains('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `cargo xtask build`: the UEFI application and the test guests.
pub fn build_all() -> Result<()> {
    ensure_rust_targets()?;
    let efi = build_boot()?;
    let guests = build_guests()?;
    println!("boot.efi: {}", efi.display());
    if guests.is_empty() {
        println!("guests:   none");
    } else {
        println!(
            "guests:   {} (in {})",
            guests.join(", "),
            paths::guest_bin_dir().display()
        );
    }
    // The Linux guest's kernel and initramfs: only the Linux tests need them, so a machine
    // without the packages (or the network) still builds and runs everything else.
    match crate::linux::prepare() {
        Ok(linux) => println!(
            "linux:    {}, {}",
            linux.kernel.display(),
            linux.initrd.display()
        ),
        Err(e) => eprintln!("xtask: warning: the Linux guest files are not ready: {e:#}"),
    }
    // Debian's generic and 32-bit kernels, for tests/manifests/linux-more.toml.
    match crate::linux::prepare_more() {
        Ok(more) => println!(
            "linux:    {}, {}, {}",
            more.generic_kernel.display(),
            more.kernel32.display(),
            more.initrd32.display()
        ),
        Err(e) => eprintln!(
            "xtask: warning: the generic and 32-bit Linux guest files are not ready: {e:#}"
        ),
    }
    Ok(())
}
