//! `rekeyd`: see `rekey_server::cli`. The server allocates with mimalloc:
//! a read allocates often, and glibc's allocator cost a tenth more CPU per
//! read in the benchmark (`bench`, figures in the README).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rekey_server::cli::main()
}
