//! Links the guest with its own linker script (linker.ld): loaded at 1 MiB, with a PT_NOTE
//! program header holding both entry notes, which the default layout would not give it.

fn main() {
    // The script is linked from a copy in OUT_DIR, not from the source tree: a target
    // directory shared by two clones (the test cache) would otherwise keep pointing the linker
    // at whichever clone built it first, and cargo does not rerun this script when only the
    // source tree's path changes.
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::copy("linker.ld", format!("{out}/linker.ld")).expect("copy linker.ld to OUT_DIR");
    println!("cargo:rustc-link-arg=-T{out}/linker.ld");
    // x86_64-unknown-none links position-independent executables by default; QEMU and the
    // launcher both load ELF segments at the addresses they name, and the 32-bit boot code uses
    // absolute ones.
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=linker.ld");
}
