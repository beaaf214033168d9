//! `hodei report cost`: worker time and cost by tenant, pool or queue, with
//! recommendations, from `GET /api/v1/reports/cost`.

use clap::Subcommand;
use hodei_core::cost::{CostReport, GroupBy, ReportRow};

use crate::client::{Client, Connection, Output, print_json, table};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Worker time and cost over a window, grouped by tenant, pool or queue, and what to
    /// change. Job time is what attempts held a worker (charged to tenants and queues);
    /// held time is what pools' workers existed for, idle included (what providers bill).
    /// Pool held time is kept by the hour: the window's first hour counts whole.
    Cost {
        /// How far back: a duration such as 24h, 90m or 7d.
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        since: String,
        /// Group by tenant, pool or queue.
        #[arg(long, default_value = "pool", value_parser = parse_group)]
        by: GroupBy,
        #[command(flatten)]
        connection: Connection,
    },
}

fn parse_group(text: &str) -> Result<GroupBy, String> {
    text.parse::<GroupBy>().map_err(|e| e.to_string())
}

fn group_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Tenant => "tenant",
        GroupBy::Pool => "pool",
        GroupBy::Queue => "queue",
    }
}

pub async fn report(command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Cost {
            since,
            by,
            connection,
        } => {
            humantime::parse_duration(&since).map_err(|error| {
                anyhow::anyhow!("--since: {since:?} is not a duration such as 24h or 7d: {error}")
            })?;
            let client = Client::new(&connection)?;
            let query = [("since", since.clone()), ("by", group_name(by).to_owned())];
            let report: CostReport = client.get("/reports/cost", &query).await?;
            match connection.output {
                Output::Json => print_json(&report),
                Output::Csv => print_csv(&report),
                Output::Jsonl => {
                    anyhow::bail!("-o jsonl is for `hodei job export`; use table, json or csv")
                }
                Output::Table => {
                    print_table(&report, &since);
                    Ok(())
                }
            }
        }
    }
}

fn hours(seconds: f64) -> String {
    format!("{:.3}", seconds / 3600.0)
}

fn print_table(report: &CostReport, since: &str) {
    let by = group_name(report.by);
    println!(
        "Cost over the last {since}: jobs {:.4}, pools held {:.4}",
        report.job_cost, report.held_cost
    );
    if report.rows.is_empty() {
        println!("\nNothing ran or was held.");
    } else {
        let pools = report.by == GroupBy::Pool;
        let mut header = vec![
            by.to_uppercase(),
            "ATTEMPTS".into(),
            "JOB HOURS".into(),
            "JOB COST".into(),
        ];
        if pools {
            header.extend(["HELD HOURS".into(), "HELD COST".into(), "IDLE".into()]);
        }
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = table(&header);
        for row in &report.rows {
            let mut cells = vec![
                row.name.clone(),
                row.attempts.to_string(),
                hours(row.job_worker_seconds),
                format!("{:.4}", row.job_cost),
            ];
            if pools {
                cells.push(row.held_worker_seconds.map_or("-".into(), hours));
                cells.push(row.held_cost.map_or("-".into(), |c| format!("{c:.4}")));
                cells.push(
                    row.idle_share
                        .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
                );
            }
            t.add_row(cells);
        }
        println!("\n{t}");
    }
    if report.recommendations.is_empty() {
        println!("\nNo recommendations.");
    } else {
        println!("\nRecommendations:");
        for recommendation in &report.recommendations {
            println!("- {}", recommendation.message());
        }
    }
}

/// One line per row; the recommendations are in the JSON output.
fn print_csv(report: &CostReport) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(std::io::stdout());
    writer.write_record([
        group_name(report.by),
        "attempts",
        "job_worker_seconds",
        "job_cost",
        "held_worker_seconds",
        "held_cost",
        "idle_share",
    ])?;
    let optional = |value: Option<f64>| value.map_or(String::new(), |v| v.to_string());
    for ReportRow {
        name,
        attempts,
        job_worker_seconds,
        job_cost,
        held_worker_seconds,
        held_cost,
        idle_share,
    } in &report.rows
    {
        writer.write_record([
            name.clone(),
            attempts.to_string(),
            job_worker_seconds.to_string(),
            job_cost.to_string(),
            optional(*held_worker_seconds),
            optional(*held_cost),
            optional(*idle_share),
        ])?;
    }
    writer.flush()?;
    Ok(())
}
