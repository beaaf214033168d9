//! `hodei simulate`: replay a trace against configurations; `hodei simulate generate`:
//! write a synthetic trace. Both run offline, in this process (see `hodei-sim`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use hodei_sim::generate::{self, Params, Profile};
use hodei_sim::trace::{self, Format};
use hodei_sim::{RunReport, SimConfig};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimulateArgs {
    #[command(subcommand)]
    command: Option<SimulateCommand>,
    /// The trace to replay: CSV, or JSON Lines for .jsonl / .ndjson / .json (see README).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// A configuration to replay it against (pools, tenants, queues, [sim]); repeat to
    /// compare several side by side.
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    configs: Vec<PathBuf>,
    /// table: the figures side by side; json: an array, one object per configuration in
    /// the order given; html: one self-contained page with the table and, per
    /// configuration, plots of queue depth and workers by state over time and of the waits.
    #[arg(long, short, value_enum, default_value_t = SimOutput::Table)]
    output: SimOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimOutput {
    Table,
    Json,
    Html,
}

#[derive(Debug, Subcommand)]
enum SimulateCommand {
    /// Write a synthetic trace (a documented workday model, see README) to stdout or -o.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// ci-day (office-hours arrivals, merge bursts, heavy-tailed run times), bursty or
    /// steady.
    #[arg(long, default_value = "ci-day")]
    profile: String,
    /// Tenants t01, t02, ... (their tiers cycle platinum, gold, silver, bronze).
    #[arg(long, default_value_t = 10)]
    tenants: u32,
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write it; stdout when absent.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    out: Option<PathBuf>,
    /// csv or jsonl; from --out's extension when absent, else csv.
    #[arg(long)]
    format: Option<String>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(SimulateCommand::Generate(args)) = args.command {
        return generate(args);
    }
    let Some(trace_path) = args.trace else {
        anyhow::bail!("--trace FILE is needed (or `hodei simulate generate` to make one)");
    };
    if args.configs.is_empty() {
        anyhow::bail!("--config FILE is needed at least once");
    }
    let configs = args
        .configs
        .iter()
        .map(|path| SimConfig::load(path).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jobs = trace::read_file(&trace_path)
        .with_context(|| format!("cannot read the trace {}", trace_path.display()))?;
    // One thread per configuration: they share nothing but the trace.
    let reports = std::thread::scope(|scope| {
        let runs: Vec<_> = configs
            .iter()
            .map(|config| scope.spawn(|| hodei_sim::simulate(config, &jobs)))
            .collect();
        runs.into_iter()
            .zip(&configs)
            .map(|(run, config)| {
                run.join()
                    .map_err(|_| anyhow::anyhow!("the simulation panicked"))?
                    .with_context(|| format!("configuration {}", config.name()))
            })
            .collect::<anyhow::Result<Vec<RunReport>>>()
    })?;
    let mut out = std::io::stdout().lock();
    match args.output {
        SimOutput::Table => out.write_all(hodei_sim::report::table(&reports).as_bytes())?,
        SimOutput::Json => {
            serde_json::to_writer_pretty(&mut out, &reports)?;
            out.write_all(b"\n")?;
        }
        SimOutput::Html => out.write_all(hodei_sim::html::page(&reports)?.as_bytes())?,
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse().map_err(anyhow::Error::msg)?;
    if args.tenants == 0 || args.tenants > 1000 {
        anyhow::bail!("--tenants: is {}, 1 to 1000 expected", args.tenants);
    }
    if args.jobs == 0 || args.jobs > 10_000_000 {
        anyhow::bail!("--jobs: is {}, 1 to 10000000 expected", args.jobs);
    }
    let format = match args.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl") => Format::JsonLines,
        Some(other) => anyhow::bail!("--format: {other:?} is not csv or jsonl"),
        None => args.out.as_deref().map_or(Format::Csv, Format::of),
    };
    let jobs = generate::generate(Params {
        profile,
        tenants: args.tenants,
        jobs: args.jobs,
        seed: args.seed,
    });
    match args.out {
        Some(path) => {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            trace::write(&jobs, format, file)?;
        }
        None => trace::write(&jobs, format, std::io::stdout().lock())?,
    }
    Ok(())
}
