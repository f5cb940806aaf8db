//! `rekeyd`: see `rekey_server::cli`.

fn main() -> std::process::ExitCode {
    rekey_server::cli::main()
}
