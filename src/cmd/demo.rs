//! `sealcast demo fire-safety`: the whole fire-safety deployment in one
//! process over real sockets on loopback, then the attacks.

use clap::{Args, Subcommand, ValueEnum};

use crate::cmd::say;
use crate::error::{CliError, Result};

/// Demos.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// A fire sensor's alert reaches the gateway, which commands "unlock" to
    /// the door group and "extinguish" to the extinguisher group; every
    /// device hears both, only members open them. Then a forged command, a
    /// replay, a command re-wrapped into another group and an evicted door —
    /// each must be refused. Exits 0 only if everything expected happened
    /// and every attack failed.
    ///
    /// Example: sealcast demo fire-safety --devices 20 --transport coap
    FireSafety(FireSafetyArgs),
    /// Meters report through a Data Aggregation Point to the headend: the
    /// DAP verifies their signatures in batches without reading the
    /// readings, drops forged and replayed reports, and forwards signed
    /// batches; the headend checks the DAP once per batch and decrypts every
    /// reading end to end. Exits 0 only if exactly the genuine reports
    /// arrive.
    ///
    /// Example: sealcast demo smart-meter --meters 1000
    SmartMeter(SmartMeterArgs),
}

/// Arguments of `sealcast demo smart-meter`.
#[derive(Debug, Args)]
pub struct SmartMeterArgs {
    /// Meters.
    #[arg(long, default_value_t = 200)]
    pub meters: usize,
    /// Reports per meter.
    #[arg(long, default_value_t = 3)]
    pub reports: usize,
    /// Use this MQTT broker instead of starting the embedded one.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// The transport: the same link as the fire-safety demo.
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// With --transport onem2m: the IN-CSE's CSEBase URL (the headend's
    /// registrar), then optionally the MN-CSE's (the DAP's and meters').
    #[arg(long, value_name = "URL")]
    pub cse: Vec<String>,
    /// With --transport onem2m: the primitives' serialization.
    #[arg(long, value_enum, default_value_t = CseSerialization::Json)]
    pub cse_serialization: CseSerialization,
}

/// Runs `sealcast demo smart-meter`.
pub fn smart_meter(args: &SmartMeterArgs) -> Result<()> {
    if args.meters < 2 || args.meters > 100_000 || args.reports == 0 || args.reports > 1000 {
        return Err(CliError::usage(
            "--meters must be 2..=100000 and --reports 1..=1000",
        ));
    }
    let transport = link_transport(args.transport, args.broker.as_deref())?;
    let onem2m = onem2m_options(transport, &args.cse, args.cse_serialization)?;
    // The runtimes' logs only when asked for (RUST_LOG=debug …).
    if std::env::var_os("RUST_LOG").is_some() {
        crate::cmd::serve::init_logs();
    }
    let config = sealcast_demo::smart_meter::SmartMeterConfig {
        onem2m,
        meters: args.meters,
        reports_per_meter: args.reports,
        broker: args.broker.clone(),
        transport,
    };
    say(&format!(
        "sealcast smart-meter demo: {} meters × {} reports over {transport} on loopback",
        args.meters, args.reports
    ));
    let report = runtime()?
        .block_on(async {
            let mut log = |line: &str| say(line);
            sealcast_demo::smart_meter::smart_meter(config, &mut log).await
        })
        .map_err(|e| CliError::other(format!("the demo could not run: {e}")))?;
    if let Some(rate) = report.rate {
        say(&format!(
            "DAP batch signature verification: {rate:.0} reports/s"
        ));
    }
    print_report(&report)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))
}

/// Transports the demo can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// MQTT: the embedded broker, or --broker.
    Mqtt,
    /// CoAP: a unicast endpoint per entity (confirmable requests for key
    /// deliveries, acks and pulls) and group channels by multicast, all on
    /// 127.0.0.1 (multicast pinned to the loopback interface).
    Coap,
    /// oneM2M: every entity an AE on a CSE (--cse), every message a
    /// content instance, groups fanned out by the CSE's <group> resources,
    /// receipt by notification. Needs a running CSE (README: ACME).
    Onem2m,
}

/// Arguments of `sealcast demo fire-safety`.
#[derive(Debug, Args)]
pub struct FireSafetyArgs {
    /// Field devices (sensors, door controllers, extinguishers; at least 3).
    #[arg(long, default_value_t = 12)]
    pub devices: usize,
    /// The transport.
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// Use this MQTT broker (e.g. mqtt://127.0.0.1:1883) instead of
    /// starting the embedded one.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// With --transport coap: run the group channels on the MBMS-like
    /// bearer (the gateway is its service; devices get the MSK under their
    /// MUK; frames padded and encrypted beneath COSE).
    #[arg(long)]
    pub bearer: bool,
    /// With --transport onem2m: the IN-CSE's CSEBase URL, then optionally
    /// the MN-CSE's (the field devices' registrar and the groups' host),
    /// e.g. --cse http://127.0.0.1:8080/cse-in --cse http://127.0.0.1:8081/cse-mn.
    #[arg(long, value_name = "URL")]
    pub cse: Vec<String>,
    /// With --transport onem2m: the primitives' serialization.
    #[arg(long, value_enum, default_value_t = CseSerialization::Json)]
    pub cse_serialization: CseSerialization,
}

/// oneM2M serializations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CseSerialization {
    /// application/json.
    Json,
    /// application/cbor.
    Cbor,
}

/// The runtimes' transport of `--transport`, refusing `--broker` with CoAP.
fn link_transport(t: Transport, broker: Option<&str>) -> Result<sealcast_node::link::Transport> {
    match t {
        Transport::Mqtt => Ok(sealcast_node::link::Transport::Mqtt),
        Transport::Coap if broker.is_some() => {
            Err(CliError::usage("--broker is for --transport mqtt"))
        }
        Transport::Coap => Ok(sealcast_node::link::Transport::Coap),
        Transport::Onem2m if broker.is_some() => {
            Err(CliError::usage("--broker is for --transport mqtt"))
        }
        Transport::Onem2m => Ok(sealcast_node::link::Transport::OneM2m),
    }
}

/// The CSEs of `--cse`, checked against the transport.
fn onem2m_options(
    transport: sealcast_node::link::Transport,
    cse: &[String],
    serialization: CseSerialization,
) -> Result<sealcast_demo::OneM2mOptions> {
    let onem2m = transport == sealcast_node::link::Transport::OneM2m;
    if onem2m && !(1..=2).contains(&cse.len()) {
        return Err(CliError::usage(
            "--transport onem2m needs --cse <IN-CSE URL> and optionally a second --cse <MN-CSE URL>, e.g. http://127.0.0.1:8080/cse-in (README: starting ACME)",
        ));
    }
    if !onem2m && !cse.is_empty() {
        return Err(CliError::usage("--cse is for --transport onem2m"));
    }
    Ok(sealcast_demo::OneM2mOptions {
        cse: cse.to_vec(),
        serialization: match serialization {
            CseSerialization::Json => sealcast_onem2m::Serialization::Json,
            CseSerialization::Cbor => sealcast_onem2m::Serialization::Cbor,
        },
    })
}

/// Runs `sealcast demo fire-safety`.
pub fn fire_safety(args: &FireSafetyArgs) -> Result<()> {
    if args.devices < 3 || args.devices > 2000 {
        return Err(CliError::usage("--devices must be between 3 and 2000"));
    }
    let transport = link_transport(args.transport, args.broker.as_deref())?;
    let onem2m = onem2m_options(transport, &args.cse, args.cse_serialization)?;
    if args.bearer && transport != sealcast_node::link::Transport::Coap {
        return Err(CliError::usage(
            "--bearer runs under CoAP multicast: add --transport coap",
        ));
    }
    // The runtimes' logs only when asked for (RUST_LOG=debug …): the
    // timeline is the demo's output.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::cmd::serve::init_logs();
    }
    let runtime = runtime()?;
    let config = sealcast_demo::fire_safety::FireSafetyConfig {
        devices: args.devices,
        broker: args.broker.clone(),
        transport,
        bearer: args.bearer,
        onem2m,
    };
    say(&format!(
        "sealcast fire-safety demo: {} devices over {transport}{} on loopback",
        args.devices,
        if args.bearer { " with the bearer" } else { "" }
    ));
    let report = runtime
        .block_on(async {
            let mut log = |line: &str| say(line);
            sealcast_demo::fire_safety::fire_safety(config, &mut log).await
        })
        .map_err(|e| CliError::other(format!("the demo could not run: {e}")))?;
    print_report(&report)
}

fn print_report(report: &sealcast_demo::fire_safety::DemoReport) -> Result<()> {
    say("");
    say("Summary");
    say(&format!(
        "  {:<78} {:>8} {:>8}  {}",
        "check", "expected", "observed", "result"
    ));
    for c in &report.checks {
        say(&format!(
            "  {:<78} {:>8} {:>8}  {}",
            c.what,
            c.expected,
            c.observed,
            if c.passed() { "ok" } else { "FAILED" }
        ));
    }
    say("");
    say("Time per step");
    for (name, took) in &report.steps {
        say(&format!("  {:>7} ms  {name}", took.as_millis()));
    }
    say("");
    if report.passed() {
        say("PASSED: every expected action happened and every attack was refused.");
        Ok(())
    } else {
        Err(CliError::other(
            "the demo FAILED: see the lines marked FAILED above",
        ))
    }
}
