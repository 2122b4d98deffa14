//! The `ambulance` binary; everything lives in the `ambulance-cli` crate.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ambulance_cli::main()
}
