//! `cargo run -p lg-module --bin switcher-layout`: writes `switcher/layout.h`, the numbers the
//! Switcher's assembly shares with the host, from the Rust constants that define them.
//! `lg-module/src/layout_header.rs` renders the text and says why the file exists.

use std::process::ExitCode;

fn main() -> ExitCode {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../switcher/layout.h");
    match std::fs::write(path, lg_module::layout_header::HEADER.as_bytes()) {
        Ok(()) => {
            println!("wrote switcher/layout.h");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot write {path}: {error}");
            ExitCode::FAILURE
        }
    }
}
