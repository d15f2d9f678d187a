use clap::Parser;

fn main() -> std::process::ExitCode {
    match memprof::cli::Opt::try_parse() {
        Ok(opt) => memprof::run::main(opt),
        Err(err) => memprof::cli::usage_error(err),
    }
}
