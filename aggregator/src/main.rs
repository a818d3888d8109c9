//! `fl-aggregator`: the header node's command line. Thin: each subcommand's flags are
//! parsed into a validated config by the library, which then runs it.

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "\
fl-aggregator: the federated learning aggregator (header node)

usage: fl-aggregator <command> [flags]

commands:
  average     FedAvg of model files:  average --out FILE MODEL...
  simulate    the paper's experiment in one process, without chain or IPFS
  deploy      deploy the registry contract, print its address
  learners    manage learners:  learners add|remove|replace|list
  owner       move the registry to another key:  owner transfer ADDRESS | owner accept
  status      round, global model and each learner's latest update
  run         aggregate rounds from the chain and IPFS
  verify      recompute a round's global model and compare its digest

Run `fl-aggregator <command> --help` for a command's flags.
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<OsString> = args.collect();
    let result = match command.to_str().unwrap_or("") {
        "average" => fl_aggregator::average::main(rest),
        "simulate" => fl_aggregator::simulate::main(rest),
        "deploy" | "learners" | "owner" | "status" => fl_aggregator::operator::main(command.to_str().unwrap_or(""), rest),
        "run" => fl_aggregator::run::main(rest),
        "verify" => fl_aggregator::verify::main(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "-V" | "--version" => {
            println!("fl-aggregator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => {
            eprintln!("fl-aggregator: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    fl_core::flags::exit_code("fl-aggregator", result)
}
