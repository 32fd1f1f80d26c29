//! Links this guest at 0x8000 instead of link.ld's 1 MiB.
fn main() {
    println!("cargo:rustc-link-arg-bins=--defsym=__image_base=0x8000");
}
