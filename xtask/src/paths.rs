//! Where things live in the repository and its build output.

use std::path::{Path, PathBuf};

/// UEFI target the boot application is built for.
pub const UEFI_TARGET: &str = "x86_64-unknown-uefi";
/// Bare-metal target the test guests are built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// The repository root (the directory holding the root `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The root workspace's target directory (`CARGO_TARGET_DIR` if set, else `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The UEFI application built by `cargo xtask build`.
pub fn boot_efi() -> PathBuf {
    target_dir()
        .join(UEFI_TARGET)
        .join("release")
        .join("boot.efi")
}

/// The separate cargo workspace holding the test guest kernels.
pub fn guests_workspace() -> PathBuf {
    root().join("tests").join("guests")
}

/// Target directory of the guest workspace (always its own, see [`crate::build`]).
pub fn guests_target_dir() -> PathBuf {
    guests_workspace().join("target")
}

/// Directory holding the built guest ELF binaries (`hello`, `cpuid`, ...).
pub fn guest_bin_dir() -> PathBuf {
    guests_target_dir().join(GUEST_TARGET).join("release")
}

/// Directory holding the manifests used by `cargo xtask run` and the integration tests.
pub fn manifests_dir() -> PathBuf {
    root().join("tests").join("manifests")
}

/// The manifest `cargo xtask run` and `cargo xtask image` use by default.
pub fn default_manifest() -> PathBuf {
    manifests_dir().join("demo.toml")
}

/// Default ESP directory written by `cargo xtask image`.
pub fn default_esp_dir() -> PathBuf {
    target_dir().join("esp")
}

/// Default raw GPT disk image written by `cargo xtask image`.
pub fn default_disk_image() -> PathBuf {
    target_dir().join("ferrovisor.img")
}

/// Working directory of one emulator run (ESP, emulator configuration, logs).
pub fn run_dir(scenario: &str) -> PathBuf {
    target_dir().join("runs").join(scenario)
}

/// `path` relative to the repository root when it lies inside it (for messages).
pub fn display(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}
