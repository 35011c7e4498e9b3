//! `utopia`: the command-line client and admin tool.

fn main() {
    let code = tokio::runtime::Runtime::new()
        .map(|rt| rt.block_on(utopia::cli::main_with_args(std::env::args_os())))
        .unwrap_or(1);
    std::process::exit(code)
}
