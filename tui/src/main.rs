//! `rekey`: see `rekey_tui::cli`.

fn main() -> std::process::ExitCode {
    rekey_tui::cli::main()
}
