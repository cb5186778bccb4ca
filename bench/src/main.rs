//! `easy-mqtt-bench SCENARIO [OPTIONS]`: see `easy-mqtt-bench --help`.

use std::process::ExitCode;

use easy_mqtt_bench::args::{self, Command};
use easy_mqtt_bench::{chart, control};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let command = match args::parse(&argv) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("easy-mqtt-bench: {error}\n(see easy-mqtt-bench --help)");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Command::FreePort => match std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
        {
            Ok(addr) => {
                println!("{}", addr.port());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("easy-mqtt-bench: cannot find a free port: {error}");
                ExitCode::from(1)
            }
        },
        Command::Chart { csv, svg } => match chart::render_file(&csv, &svg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("easy-mqtt-bench: {error}");
                ExitCode::from(1)
            }
        },
        Command::Run(options) if options.shard.is_some() => match control::child(*options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("easy-mqtt-bench (child): {error}");
                ExitCode::from(1)
            }
        },
        Command::Run(options) => match control::run(*options) {
            Ok(report) => {
                for problem in report.problems() {
                    eprintln!("easy-mqtt-bench: {problem}");
                }
                println!("{}", report.result_line());
                ExitCode::from(report.exit_code())
            }
            Err(error) => {
                eprintln!("easy-mqtt-bench: {error}");
                ExitCode::from(1)
            }
        },
    }
}
