//! `sealcast`: COSE group object security for IoT fleets, from the command
//! line.
//!
//! The core (`sealcast_core`) is sans-IO; this binary is the thin shell that
//! reads and writes files, reads the clock and draws OS randomness.
#![forbid(unsafe_code)]
// Doc comments in this binary are clap help text (`<ID>.key` is meant literally).
#![allow(rustdoc::invalid_html_tags)]

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod error;
mod files;
mod state;
mod system;
mod text;

use error::CliError;

const EXAMPLES: &str = "\
Examples (a gateway signs commands for the door controllers of one group):
  sealcast keygen --id door-gw
  sealcast keygen --id door-17
  sealcast group create --group fire-doors --epoch 1 --signer door-gw=door-gw.pub:01 --valid-for 30d --out fire-doors.gk
  echo 'unlock all' | sealcast seal --group-key fire-doors.gk --key door-gw.key --target doors/unlock --seq-state door-gw.seq --out cmd.cose
  sealcast open --group-key fire-doors.gk --target doors/unlock --replay-state door-17.replay --in cmd.cose
  sealcast inspect --in cmd.cose";

/// Group and end-to-end object security (COSE) for IoT fleets.
#[derive(Debug, Parser)]
#[command(name = "sealcast", version, after_help = EXAMPLES)]
struct Cli {
    /// More log output from the services (-v debug, -vv trace); RUST_LOG,
    /// when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log output from the services (-q warnings and errors, -qq
    /// errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Keygen(cmd::keygen::KeygenArgs),
    #[command(subcommand)]
    Group(cmd::group::GroupCommand),
    Seal(cmd::seal::SealArgs),
    Open(cmd::open::OpenArgs),
    Inspect(cmd::inspect::InspectArgs),
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    Bench(cmd::bench::BenchArgs),
    #[command(subcommand)]
    Demo(cmd::demo::DemoCommand),
    #[command(subcommand)]
    Manager(cmd::serve::ManagerCommand),
    #[command(subcommand)]
    Agent(cmd::serve::AgentCommand),
    #[command(subcommand)]
    Device(cmd::serve::DeviceCommand),
    #[command(subcommand)]
    Headend(cmd::serve::HeadendCommand),
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    Info(cmd::info::InfoArgs),
    Completions(cmd::manual::CompletionsArgs),
    Man(cmd::manual::ManArgs),
}

fn run(cli: Cli) -> error::Result<()> {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v > 1 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let _ = cmd::serve::LOG_LEVEL.set(level);
    match cli.command {
        Command::Keygen(args) => cmd::keygen::run(&args),
        Command::Group(cmd::group::GroupCommand::Create(args)) => cmd::group::create(&args),
        Command::Group(cmd::group::GroupCommand::Enrol(args)) => cmd::group_admin::enrol(&args),
        Command::Group(cmd::group::GroupCommand::Add(args)) => cmd::group_admin::add(&args),
        Command::Group(cmd::group::GroupCommand::Evict(args)) => cmd::group_admin::evict(&args),
        Command::Group(cmd::group::GroupCommand::Rekey(args)) => cmd::group_admin::rekey(&args),
        Command::Group(cmd::group::GroupCommand::Show(args)) => cmd::group_admin::show(&args),
        Command::Group(cmd::group::GroupCommand::List(args)) => cmd::group_admin::list(&args),
        Command::Node(cmd::node::NodeCommand::Deactivate(args)) => {
            cmd::node::change(&args, sealcast_node::control::TxAction::Deactivate)
        }
        Command::Node(cmd::node::NodeCommand::Activate(args)) => {
            cmd::node::change(&args, sealcast_node::control::TxAction::Activate)
        }
        Command::Node(cmd::node::NodeCommand::Show(args)) => cmd::node::show(&args),
        Command::Node(cmd::node::NodeCommand::Remove(args)) => cmd::node::remove(&args),
        Command::Node(cmd::node::NodeCommand::Suspend(args)) => {
            cmd::node::set_status(&args, sealcast_node::control::StatusAction::Suspend)
        }
        Command::Node(cmd::node::NodeCommand::Revoke(args)) => {
            cmd::node::set_status(&args, sealcast_node::control::StatusAction::Revoke)
        }
        Command::Node(cmd::node::NodeCommand::Reinstate(args)) => {
            cmd::node::set_status(&args, sealcast_node::control::StatusAction::Reinstate)
        }
        Command::Node(cmd::node::NodeCommand::Statuses(args)) => cmd::node::statuses(&args),
        Command::Node(cmd::node::NodeCommand::RotateKey(args)) => cmd::node::rotate_key(&args),
        Command::Seal(args) => cmd::seal::run(&args),
        Command::Open(args) => cmd::open::run(&args),
        Command::Inspect(args) => cmd::inspect::run(&args),
        Command::Audit(cmd::audit::AuditCommand::Verify(args)) => cmd::audit::verify(&args),
        Command::Bench(args) => cmd::bench::run(&args),
        Command::Info(args) => cmd::info::run(&args),
        Command::Demo(cmd::demo::DemoCommand::FireSafety(args)) => cmd::demo::fire_safety(&args),
        Command::Demo(cmd::demo::DemoCommand::SmartMeter(args)) => cmd::demo::smart_meter(&args),
        Command::Manager(cmd::serve::ManagerCommand::Serve(args)) => cmd::serve::manager(&args),
        Command::Agent(cmd::serve::AgentCommand::Serve(args)) => cmd::serve::agent(&args),
        Command::Device(cmd::serve::DeviceCommand::Run(args)) => cmd::serve::device_run(&args),
        Command::Device(cmd::serve::DeviceCommand::Send(args)) => cmd::serve::device_send(&args),
        Command::Device(cmd::serve::DeviceCommand::Report(args)) => {
            cmd::serve::metering::device_report(&args)
        }
        Command::Headend(cmd::serve::HeadendCommand::Serve(args)) => {
            cmd::serve::metering::headend(&args)
        }
        Command::Headend(cmd::serve::HeadendCommand::ConfigureMeters(args)) => {
            cmd::serve::metering::configure_meters(&args)
        }
        Command::Headend(cmd::serve::HeadendCommand::Sa(c)) => cmd::serve::metering::headend_sa(&c),
        Command::Headend(cmd::serve::HeadendCommand::Deactivate(a)) => {
            cmd::serve::metering::headend_transmission(&a, true)
        }
        Command::Headend(cmd::serve::HeadendCommand::Activate(a)) => {
            cmd::serve::metering::headend_transmission(&a, false)
        }
        Command::Headend(cmd::serve::HeadendCommand::Transmission(a)) => {
            cmd::serve::metering::headend_transmission_show(&a)
        }
        Command::Device(cmd::serve::DeviceCommand::Transmission(a)) => {
            cmd::serve::metering::device_transmission(&a)
        }
        Command::Device(cmd::serve::DeviceCommand::Sa(args)) => {
            cmd::serve::metering::device_sa(&args)
        }
        Command::Headend(cmd::serve::HeadendCommand::MeterConfig(args)) => {
            cmd::serve::metering::headend_meter_config(&args)
        }
        Command::Device(cmd::serve::DeviceCommand::Listen(args)) => {
            cmd::serve::metering::device_listen(&args)
        }
        Command::Device(cmd::serve::DeviceCommand::Token(args))
        | Command::Agent(cmd::serve::AgentCommand::Token(args)) => {
            cmd::serve::node::show_token(&args)
        }
        Command::Device(cmd::serve::DeviceCommand::MeterConfig(args)) => {
            cmd::serve::metering::device_meter_config(&args)
        }
        Command::Manager(cmd::serve::ManagerCommand::ConfigTemplate) => {
            template(cmd::templates::MANAGER)
        }
        Command::Agent(cmd::serve::AgentCommand::ConfigTemplate(args)) => template(if args.dap {
            cmd::templates::DAP
        } else {
            cmd::templates::NODE
        }),
        Command::Device(cmd::serve::DeviceCommand::ConfigTemplate(args)) => {
            template(if args.meter {
                cmd::templates::METER
            } else {
                cmd::templates::NODE
            })
        }
        Command::Headend(cmd::serve::HeadendCommand::ConfigTemplate) => {
            template(cmd::templates::HEADEND)
        }
        Command::Completions(args) => {
            use clap::CommandFactory;
            cmd::manual::completions(&args, Cli::command())
        }
        Command::Man(args) => {
            use clap::CommandFactory;
            cmd::manual::man(&args, Cli::command())
        }
    }
}

/// Prints a config template on standard output.
fn template(text: &str) -> error::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| CliError::io("write", std::path::Path::new("standard output"), e))
}

/// Turns a clap error into one line: the first paragraph of its message.
fn usage_error(err: &clap::Error) -> CliError {
    let rendered = err.to_string();
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = first.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    CliError::usage(format!("{msg}; see '{} --help'", command_path()))
}

/// The subcommand the user was running (`sealcast group create`), for
/// pointing at the right `--help`.
fn command_path() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = vec!["sealcast".to_owned()];
    for arg in std::env::args().skip(1) {
        let Some(sub) = cmd.find_subcommand(&arg).cloned() else {
            break;
        };
        path.push(arg);
        cmd = sub;
    }
    path.join(" ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(u8::from(e.use_stderr()) * 2);
                }
                _ => return report(&usage_error(&e)),
            }
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn report(e: &CliError) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {e}");
    ExitCode::from(e.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
