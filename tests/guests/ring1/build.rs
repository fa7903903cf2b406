//! Links the guest with its own linker script (linker.ld): a fixed address, and a PT_NOTE
//! program header for the lguest note, which the default layout would not give it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/linker.ld");
    // x86_64-unknown-none links position-independent executables by default; the launcher
    // loads ELF executables (ET_EXEC) at the addresses they name, and so does this script.
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=linker.ld");
}
