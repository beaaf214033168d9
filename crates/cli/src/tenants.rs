//! `hodei tenant`: tenants' weights and quotas, what they hold, and their share of starts.

use clap::{Args, Subcommand, ValueEnum};
use hodei_server::TenantSettings;
use hodei_server::api::{CreateTenantToken, CreatedToken, TenantList, TenantView};

use crate::client::{Client, Connection, show_list, show_one, table};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// List tenants: weight, quotas, jobs running and queued, burst state, share of the
    /// jobs started over the last hour.
    Ls {
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one tenant: weight, each quota with what it uses now, burst state and share.
    Get {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create a tenant or change its weight and quotas. Only what is given changes; the
    /// quotas given are hard unless `--soft` (a soft quota may be passed by the burst
    /// factor, 1.5x by default, for at most an hour while workers would otherwise idle).
    /// Running jobs are never stopped by a lower quota.
    SetQuota(SetQuotaArgs),
    /// Remove a tenant's settings. With tenants.auto_create on (the default), its jobs carry
    /// on as a bronze tenant without quotas.
    Rm {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Tenant tokens: credentials that act for one tenant only.
    Token {
        #[command(subcommand)]
        command: TenantTokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantTokenCommand {
    /// Mint a token for tenant NAME and print it once (it is stored only hashed). With it,
    /// `hodei job submit|ls|get|logs|cancel` reach only NAME's jobs (another tenant's job is
    /// "not found", a submission naming another tenant is refused) and `hodei tenant get
    /// NAME` its own tenant; everything else is refused (403). `hodei token ls` lists it,
    /// `hodei token revoke ID` revokes it.
    Create {
        name: String,
        /// What it is for, shown by `hodei token ls`.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Args)]
pub struct SetQuotaArgs {
    name: String,
    /// Weight by tier: bronze (1), silver (2), gold (3) or platinum (5).
    #[arg(long, conflicts_with = "weight", value_name = "NAME")]
    tier: Option<String>,
    /// An explicit weight, 1 to 1000: the tenant's share of scarce workers relative to
    /// the others'.
    #[arg(long, value_name = "N")]
    weight: Option<u32>,
    /// Most jobs assigned or running at once.
    #[arg(long, value_name = "N")]
    max_running_jobs: Option<u32>,
    /// Most cpu cores asked by its running jobs together.
    #[arg(long, value_name = "N")]
    max_cpu: Option<u32>,
    /// Most memory (MiB) asked by its running jobs together.
    #[arg(long, value_name = "N")]
    max_memory_mb: Option<u64>,
    /// Most distinct workers holding its jobs.
    #[arg(long, value_name = "N")]
    max_workers: Option<u32>,
    /// Most it may spend per day (pools' cost_per_hour), reset at 00:00 UTC; past it no
    /// new job starts.
    #[arg(long, value_name = "X")]
    max_daily_cost: Option<f64>,
    /// Most jobs queued at once; more are refused (429 / RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N")]
    max_queued: Option<u32>,
    /// The quotas given in this command are soft (may burst) instead of hard.
    #[arg(long)]
    soft: bool,
    /// Removes a quota (the tenant is no longer limited by it); repeat for several.
    #[arg(long, value_enum, value_name = "QUOTA")]
    remove: Vec<Quota>,
    #[command(flatten)]
    connection: Connection,
}

/// A quota `set-quota --remove` takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Quota {
    RunningJobs,
    Cpu,
    MemoryMb,
    Workers,
    DailyCost,
    Queued,
}

impl SetQuotaArgs {
    /// A quota both given and removed in one command.
    fn contradiction(&self) -> Option<Quota> {
        self.remove.iter().copied().find(|quota| match quota {
            Quota::RunningJobs => self.max_running_jobs.is_some(),
            Quota::Cpu => self.max_cpu.is_some(),
            Quota::MemoryMb => self.max_memory_mb.is_some(),
            Quota::Workers => self.max_workers.is_some(),
            Quota::DailyCost => self.max_daily_cost.is_some(),
            Quota::Queued => self.max_queued.is_some(),
        })
    }

    /// `current` with this command's changes.
    fn apply(&self, mut settings: TenantSettings) -> TenantSettings {
        settings.name.clone_from(&self.name);
        if let Some(tier) = &self.tier {
            settings.tier = Some(tier.clone());
            settings.weight = None;
        }
        if let Some(weight) = self.weight {
            settings.weight = Some(weight);
            settings.tier = None;
        }
        let quotas: [(&str, bool); 5] = [
            ("running_jobs", self.max_running_jobs.is_some()),
            ("cpu", self.max_cpu.is_some()),
            ("memory_mb", self.max_memory_mb.is_some()),
            ("workers", self.max_workers.is_some()),
            ("daily_cost", self.max_daily_cost.is_some()),
        ];
        settings.max_running_jobs = self.max_running_jobs.or(settings.max_running_jobs);
        settings.max_cpu = self.max_cpu.or(settings.max_cpu);
        settings.max_memory_mb = self.max_memory_mb.or(settings.max_memory_mb);
        settings.max_workers = self.max_workers.or(settings.max_workers);
        settings.max_daily_cost = self.max_daily_cost.or(settings.max_daily_cost);
        settings.max_queued = self.max_queued.or(settings.max_queued);
        for (quota, given) in quotas {
            if !given {
                continue;
            }
            settings.soft.retain(|s| s != quota);
            if self.soft {
                settings.soft.push(quota.to_owned());
            }
        }
        for quota in &self.remove {
            let name = match quota {
                Quota::RunningJobs => settings.max_running_jobs.take().map(|_| "running_jobs"),
                Quota::Cpu => settings.max_cpu.take().map(|_| "cpu"),
                Quota::MemoryMb => settings.max_memory_mb.take().map(|_| "memory_mb"),
                Quota::Workers => settings.max_workers.take().map(|_| "workers"),
                Quota::DailyCost => settings.max_daily_cost.take().map(|_| "daily_cost"),
                Quota::Queued => settings.max_queued.take().map(|_| "queued"),
            };
            if let Some(name) = name {
                settings.soft.retain(|s| s != name);
            }
        }
        settings
    }
}

pub async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Token {
            command:
                TenantTokenCommand::Create {
                    name,
                    description,
                    connection,
                },
        } => {
            let client = Client::new(&connection)?;
            let created: CreatedToken = client
                .post(
                    &format!("/tenants/{name}/tokens"),
                    &CreateTenantToken { description },
                )
                .await?;
            show_one(connection.output, &created, || {
                println!("{}", created.token);
                eprintln!(
                    "tenant token {} for {name}; the token above is shown only now",
                    created.info.id
                );
            })
        }
        TenantCommand::Ls { connection } => {
            let client = Client::new(&connection)?;
            let list: TenantList = client.get("/tenants", &[]).await?;
            show_list(
                connection.output,
                &list,
                &list.tenants,
                "No tenants.",
                print_tenants,
            )
        }
        TenantCommand::Get { name, connection } => {
            let client = Client::new(&connection)?;
            let tenant: TenantView = client.get(&format!("/tenants/{name}"), &[]).await?;
            show_one(connection.output, &tenant, || {
                print_tenant(&tenant);
            })
        }
        TenantCommand::SetQuota(args) => {
            if let Some(quota) = args.contradiction() {
                let flag = quota.to_possible_value().map(|v| v.get_name().to_owned());
                anyhow::bail!(
                    "--remove {} and --max-{} in one command: give the quota or remove it",
                    flag.as_deref().unwrap_or("?"),
                    flag.as_deref().unwrap_or("?"),
                );
            }
            let client = Client::new(&args.connection)?;
            let path = format!("/tenants/{}", args.name);
            let current = client
                .get_optional::<TenantView>(&path)
                .await?
                .filter(|view| view.configured)
                .map(|view| view.settings)
                .unwrap_or_default();
            let tenant: TenantView = client.put(&path, &args.apply(current)).await?;
            show_one(args.connection.output, &tenant, || {
                print_tenant(&tenant);
            })
        }
        TenantCommand::Rm { name, connection } => {
            let client = Client::new(&connection)?;
            client.delete(&format!("/tenants/{name}")).await?;
            println!("tenant {name} removed");
            Ok(())
        }
    }
}

fn weight_text(t: &TenantView) -> String {
    match &t.settings.tier {
        Some(tier) => format!("{} ({tier})", t.weight),
        None => t.weight.to_string(),
    }
}

fn quota_text(settings: &TenantSettings, quota: &str, value: Option<String>) -> String {
    match value {
        None => "-".to_owned(),
        Some(value) if settings.soft.iter().any(|s| s == quota) => format!("{value} soft"),
        Some(value) => value,
    }
}

fn print_tenants(tenants: &[TenantView]) {
    let mut t = table(&[
        "NAME",
        "WEIGHT",
        "RUNNING",
        "MAX RUNNING",
        "QUEUED",
        "BURST",
        "SHARE 1H",
    ]);
    for tenant in tenants {
        let name = if tenant.configured {
            tenant.name.clone()
        } else {
            format!("{} (auto)", tenant.name)
        };
        t.add_row(vec![
            name,
            weight_text(tenant),
            tenant.usage.running_jobs.to_string(),
            quota_text(
                &tenant.settings,
                "running_jobs",
                tenant.settings.max_running_jobs.map(|v| v.to_string()),
            ),
            tenant.queued.to_string(),
            tenant.burst.clone(),
            format!("{:.1}%", tenant.share_last_hour * 100.0),
        ]);
    }
    println!("{t}");
}

fn print_tenant(tenant: &TenantView) {
    let s = &tenant.settings;
    println!(
        "tenant {}{}: weight {}, {} queued (cap {}), burst {}, {:.1}% of the {} starts of the last hour",
        tenant.name,
        if tenant.configured {
            ""
        } else {
            " (auto-created)"
        },
        weight_text(tenant),
        tenant.queued,
        s.max_queued.map_or("none".to_owned(), |v| v.to_string()),
        tenant.burst,
        tenant.share_last_hour * 100.0,
        tenant.started_last_hour,
    );
    let mut t = table(&["QUOTA", "LIMIT", "USED NOW"]);
    let u = &tenant.usage;
    let rows = [
        (
            "running_jobs",
            s.max_running_jobs.map(|v| v.to_string()),
            u.running_jobs.to_string(),
        ),
        ("cpu", s.max_cpu.map(|v| v.to_string()), u.cpu.to_string()),
        (
            "memory_mb",
            s.max_memory_mb.map(|v| v.to_string()),
            u.memory_mb.to_string(),
        ),
        (
            "workers",
            s.max_workers.map(|v| v.to_string()),
            u.workers.to_string(),
        ),
        (
            "daily_cost",
            s.max_daily_cost.map(|v| format!("{v:.2}")),
            format!("{:.4}", u.daily_cost),
        ),
    ];
    for (quota, limit, used) in rows {
        t.add_row(vec![quota.to_owned(), quota_text(s, quota, limit), used]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: TenantCommand,
    }

    fn set(args: &[&str]) -> SetQuotaArgs {
        let mut argv = vec!["x", "set-quota"];
        argv.extend(args);
        match Cli::parse_from(argv).command {
            TenantCommand::SetQuota(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_quota_removes_a_quota_and_its_soft_mark() {
        let current = TenantSettings {
            name: "ci".into(),
            max_cpu: Some(8),
            max_running_jobs: Some(4),
            soft: vec!["cpu".into()],
            ..TenantSettings::default()
        };
        let next = set(&["ci", "--remove", "cpu"]).apply(current);
        assert_eq!(next.max_cpu, None);
        assert_eq!(next.max_running_jobs, Some(4), "only what is named goes");
        assert!(next.soft.is_empty());
        assert_eq!(
            set(&["ci", "--remove", "queued", "--max-queued", "3"]).contradiction(),
            Some(Quota::Queued)
        );
        assert_eq!(set(&["ci", "--remove", "queued"]).contradiction(), None);
    }

    #[test]
    fn set_quota_changes_only_what_is_given() {
        let current = TenantSettings {
            name: "ci".into(),
            tier: Some("gold".into()),
            max_running_jobs: Some(4),
            max_cpu: Some(8),
            soft: vec!["cpu".into()],
            ..TenantSettings::default()
        };
        let next = set(&["ci", "--max-running-jobs", "6", "--soft"]).apply(current.clone());
        assert_eq!(next.max_running_jobs, Some(6));
        assert_eq!(next.max_cpu, Some(8));
        assert_eq!(next.tier.as_deref(), Some("gold"));
        assert_eq!(next.soft, ["cpu", "running_jobs"]);

        let next = set(&["ci", "--max-cpu", "8", "--weight", "7"]).apply(current);
        assert_eq!((next.tier, next.weight), (None, Some(7)));
        assert!(
            next.soft.is_empty(),
            "cpu given without --soft is hard again"
        );
        assert!(
            Cli::try_parse_from(["x", "set-quota", "ci", "--tier", "gold", "--weight", "2"])
                .is_err()
        );
    }
}
