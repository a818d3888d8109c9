//! `fl-agent`: the learner's command line. Thin: each subcommand's flags are parsed and
//! run by the library (`fl_agent::cli`).

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "\
fl-agent: the federated learning agent (learner)

usage: fl-agent <command> [flags]

commands:
  summary     the model's layers and parameter counts
  train       train the model on MNIST:  train --data DIR [--epochs N] [--out FILE] ...
  eval        a model file's test accuracy:  eval --model FILE --data DIR
  export      a model for other tools:  export --model FILE --format safetensors|onnx --out PATH
  run         the learner's federated loop:  run --config agent.toml
  status      what this board's learner last did, from its state folder alone (no chain,
              no IPFS):  status --config agent.toml

Run `fl-agent <command> --help` for a command's flags.
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<OsString> = args.collect();
    let result = match command.to_str().unwrap_or("") {
        "summary" => fl_agent::cli::summary(rest),
        "train" => fl_agent::cli::train(rest),
        "eval" => fl_agent::cli::eval(rest),
        "export" => fl_agent::cli::export(rest),
        "run" => fl_agent::learner::main(rest),
        "status" => fl_agent::learner::status::main(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "-V" | "--version" => {
            println!("fl-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => {
            eprintln!("fl-agent: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    fl_core::flags::exit_code("fl-agent", result)
}
