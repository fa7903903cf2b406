//! Links the guest with its own linker script (linker.ld): loaded at 1 MiB, with a PT_NOTE
//! program header holding both entry notes, which the default layout would not give it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/linker.ld");
    // x86_64-unknown-none links position-independent executables by default; QEMU and the
    // launcher both load ELF segments at the addresses they name, and the 32-bit boot code uses
    // absolute ones.
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=linker.ld");
}
