use clap::Parser;

fn main() -> std::process::ExitCode {
    memprof::run::main(memprof::cli::Opt::parse())
}
