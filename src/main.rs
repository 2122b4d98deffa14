//! The `ambulance` binary; everything lives in the `ambulance-cli` crate.

fn main() -> std::process::ExitCode {
    ambulance_cli::main()
}
