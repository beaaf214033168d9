//! The command-line client: talks to the REST API and prints readable tables.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets};
use hodei_server::api::{ErrorBody, PoolList, PoolView, WorkerList, WorkerView};
use serde::de::DeserializeOwned;

/// Where the server is and how to authenticate.
#[derive(Debug, Args)]
pub struct Connection {
    /// Server URL, or several separated by commas (replicas): requests go to the leader,
    /// found by trying them in turn and following a follower's pointer to it.
    #[arg(
        long,
        env = "HODEI_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL[,URL...]",
        global = true
    )]
    pub(crate) server: String,
    /// Bearer token. When absent, ./.hodei/token (written by `hodei dev`) is used.
    #[arg(
        long,
        env = "HODEI_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    token: Option<String>,
    /// With several servers: how long a request waits for a leader while the replicas that
    /// answer say they do not lead (a takeover under way), trying them again with backoff.
    #[arg(
        long,
        env = "HODEI_LEADER_WAIT",
        default_value = "15s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION",
        global = true
    )]
    leader_wait: Duration,
    /// PEM CA certificate(s) to trust for an https:// server instead of the system's roots.
    #[arg(long, env = "HODEI_CA_CERT", value_name = "FILE", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format (csv: `hodei report cost` and `hodei job export`; jsonl: `hodei job
    /// export` only).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
    Jsonl,
}

/// The formats of every command but the report: a table or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shown {
    Table,
    Json,
}

impl Output {
    pub(crate) fn shown(self) -> anyhow::Result<Shown> {
        match self {
            Output::Table => Ok(Shown::Table),
            Output::Json => Ok(Shown::Json),
            Output::Csv | Output::Jsonl => {
                bail!(
                    "-o csv and -o jsonl are for `hodei report cost` and `hodei job export`; use table or json"
                )
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// List workers.
    Ls {
        /// Only workers of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only workers in this state (provisioning, registering, idle, busy, cleaning,
        /// draining, unhealthy, terminated).
        #[arg(long)]
        state: Option<String>,
        /// Include terminated workers.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one worker.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Terminate a worker now: unregister it and stop it at its provider.
    Terminate {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Drain a worker: it takes no new job and finishes the one it runs, then is
    /// terminated (its pool replaces it) or, with `--then keep`, stays drained.
    Drain {
        id: String,
        /// What becomes of it once its job is done: terminate or keep.
        #[arg(long, default_value = "terminate", value_parser = ["terminate", "keep"])]
        then: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Let a drained worker take jobs again.
    Undrain {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List pools: kind, bounds, what the autoscaler wants, workers by state, cost.
    Ls {
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one pool and its recent autoscaler decisions with their reasons.
    Get {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create pools, or change those that exist, from a file: TOML (`[[pool]]` tables as in
    /// hodei.toml, or one pool's keys bare) or JSON (an object, a list, or `{"pool": [...]}`). Running workers keep running: a smaller
    /// pool drains idle workers only, and a new template applies to new workers.
    Apply {
        /// The pool file; `-` reads standard input.
        #[arg(long, short, value_name = "FILE")]
        file: std::path::PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// Set a static pool's size, or a dynamic pool's minimum.
    Scale {
        name: String,
        workers: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove a pool: no new workers; idle ones stop now, busy ones after their job.
    Rm {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(crate) struct Client {
    http: reqwest::Client,
    /// Every server URL given, in order.
    servers: Vec<String>,
    /// The one that answered last (the leader, among replicas).
    base: std::sync::Mutex<String>,
    token: String,
    /// See [`Connection::leader_wait`].
    leader_wait: Duration,
}

/// What one round over the servers came to.
enum Round {
    /// A server answered as itself (the leader, or a single server): any status.
    Answered(reqwest::Response),
    /// Servers answered that they do not lead, and none that does was reached: the last
    /// refusal's message.
    NoLeader(String),
}

/// The delays between rounds while waiting for a leader: 250 ms doubling up to 2 s.
fn leader_retry_delay(round: u32) -> Duration {
    hodei_core::backoff::exponential(Duration::from_millis(250), round, Duration::from_secs(2))
}

/// The server URLs of `--server a,b,c`, without trailing slashes; an error when none is a URL.
pub(crate) fn server_urls(text: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| url.trim_end_matches('/').to_owned())
        .collect();
    if urls.is_empty() {
        bail!("--server: no URL given");
    }
    if let Some(bad) = urls
        .iter()
        .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
    {
        bail!("--server: {bad:?} is not an http:// or https:// URL");
    }
    Ok(urls)
}

impl Client {
    pub(crate) fn new(connection: &Connection) -> anyhow::Result<Self> {
        let token = match &connection.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(".hodei/token")
                .map(|t| t.trim().to_owned())
                .context("no token: pass --token or set HODEI_TOKEN (hodei dev prints it)")?,
        };
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30));
        if let Some(path) = &connection.ca_cert {
            let pem = hodei_proto::tls::read_ca_certificates(path, "--ca-cert")?;
            http = http.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert: cannot read {}", path.display()))?
            {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().context("cannot build the HTTP client")?;
        let servers = server_urls(&connection.server)?;
        Ok(Self {
            http,
            base: std::sync::Mutex::new(servers[0].clone()),
            servers,
            token,
            leader_wait: connection.leader_wait,
        })
    }

    fn base(&self) -> String {
        self.base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base())
    }

    /// Sends with the token; any answer, error statuses included. With several servers, a
    /// server that cannot be reached, or a follower that refuses naming the leader (503 with
    /// `x-hodei-leader`), sends the request on to the leader or the next server; nothing
    /// reached a server that was not connected to, and a follower refuses before acting.
    ///
    /// When the servers that answer all say they do not lead (a takeover under way), the
    /// request is tried again with backoff for up to `--leader-wait`, saying so on stderr,
    /// then fails naming the servers.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let request = request
            .bearer_auth(&self.token)
            .build()
            .context("cannot build the request")?;
        let started = std::time::Instant::now();
        let mut round = 0u32;
        loop {
            let refusal = match self.send_round(&request).await? {
                Round::Answered(response) => return Ok(response),
                Round::NoLeader(refusal) => refusal,
            };
            let delay = leader_retry_delay(round);
            let waited = started.elapsed();
            if waited + delay > self.leader_wait {
                bail!(
                    "no leader among {} after waiting {:.1} s: {refusal}",
                    self.servers.join(", "),
                    waited.as_secs_f64()
                );
            }
            eprintln!(
                "hodei: no leader yet ({refusal}); trying again in {} ms ({:.1} s of {} s waited)",
                delay.as_millis(),
                waited.as_secs_f64(),
                self.leader_wait.as_secs()
            );
            tokio::time::sleep(delay).await;
            round = round.saturating_add(1);
        }
    }

    /// One round: the last server that answered, then a follower's pointer to the leader or
    /// the next server, until one answers as itself or all were tried.
    async fn send_round(&self, request: &reqwest::Request) -> anyhow::Result<Round> {
        let first = self.base();
        let rest = request
            .url()
            .as_str()
            .strip_prefix(first.as_str())
            .unwrap_or_default()
            .to_owned();
        let safe = matches!(
            *request.method(),
            reqwest::Method::GET | reqwest::Method::HEAD
        );
        let mut tried: Vec<String> = Vec::new();
        let mut next = Some(first);
        let mut last_error = None;
        let mut refusal = None;
        while let Some(base) = next.take() {
            tried.push(base.clone());
            let mut attempt = request
                .try_clone()
                .context("cannot repeat a streamed request")?;
            *attempt.url_mut() = reqwest::Url::parse(&format!("{base}{rest}"))
                .with_context(|| format!("invalid server URL {base}"))?;
            let untried = |url: &String| !tried.contains(url);
            match self.http.execute(attempt).await {
                Ok(response) => {
                    let leader = response
                        .headers()
                        .get(hodei_server::LEADER_HEADER)
                        .and_then(|value| value.to_str().ok())
                        .map(|url| url.trim_end_matches('/').to_owned());
                    let refused = response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && (leader.is_some()
                            || response
                                .headers()
                                .contains_key(hodei_server::FOLLOWER_HEADER));
                    if !refused {
                        *self
                            .base
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = base;
                        return Ok(Round::Answered(response));
                    }
                    next = match leader {
                        Some(leader) if untried(&leader) => Some(leader),
                        _ => self.servers.iter().find(|url| untried(url)).cloned(),
                    };
                    let text = response.text().await.unwrap_or_default();
                    refusal = Some(match serde_json::from_str::<ErrorBody>(&text) {
                        Ok(body) => format!("{base}: {}", body.error.message),
                        Err(_) => format!("{base}: 503 {text}"),
                    });
                }
                // A request that reached no server, or a read (safe to repeat) whose
                // connection broke: a server stopping or killed mid-way.
                Err(error) if error.is_connect() || (safe && !error.is_timeout()) => {
                    last_error = Some(
                        anyhow::Error::new(error)
                            .context(format!("cannot reach the server at {base}")),
                    );
                    next = self.servers.iter().find(|url| untried(url)).cloned();
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("cannot reach the server at {base}")));
                }
            }
        }
        match refusal {
            Some(refusal) => Ok(Round::NoLeader(refusal)),
            None => Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no server answered"))),
        }
    }

    /// Sends with the token; an error status becomes an error naming the server's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        Self::check(self.send_raw(request).await?).await
    }

    /// The response if its status is a success, else an error naming the server's message.
    async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => bail!("{} ({})", body.error.message, body.error.code),
            Err(_) => bail!("server answered {status}: {text}"),
        }
    }

    async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
        response
            .json()
            .await
            .context("cannot decode the server's answer")
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let request = self.http.get(self.url(path)).query(query);
        Self::decode(self.send(request).await?).await
    }

    /// `GET` that tells a 404 apart: `None`.
    pub(crate) async fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let response = self.send_raw(self.http.get(self.url(path))).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(Self::decode(Self::check(response).await?).await?))
    }

    /// A JSON body sent with `method`, a JSON answer.
    async fn with_body<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let request = self.http.request(method, self.url(path)).json(body);
        Self::decode(self.send(request).await?).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        self.with_body(reqwest::Method::POST, path, body).await
    }

    pub(crate) async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        self.with_body(reqwest::Method::PUT, path, body).await
    }

    /// `DELETE` with a JSON answer.
    pub(crate) async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Self::decode(self.send(self.http.delete(self.url(path))).await?).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(header.to_vec());
    table
}

/// Time since an RFC 3339 instant, like `kubectl`: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn age(rfc3339: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    let seconds = SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs();
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A list command's output: JSON, `empty` when there is nothing, or `print`'s table.
pub(crate) fn show_list<T>(
    output: Output,
    list: &impl serde::Serialize,
    items: &[T],
    empty: &str,
    print: impl FnOnce(&[T]),
) -> anyhow::Result<()> {
    match output.shown()? {
        Shown::Json => print_json(list),
        Shown::Table if items.is_empty() => {
            println!("{empty}");
            Ok(())
        }
        Shown::Table => {
            print(items);
            Ok(())
        }
    }
}

/// One value as JSON, or as `print` writes it for a table.
pub(crate) fn show_one(
    output: Output,
    value: &impl serde::Serialize,
    print: impl FnOnce(),
) -> anyhow::Result<()> {
    match output.shown()? {
        Shown::Json => print_json(value),
        Shown::Table => {
            print();
            Ok(())
        }
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_workers(workers: &[WorkerView]) {
    let mut t = table(&[
        "ID",
        "POOL",
        "PROVIDER",
        "TYPE",
        "STATE",
        "REGISTERED",
        "CPU",
        "MEMORY",
        "AGE",
    ]);
    for w in workers {
        t.add_row(vec![
            w.id.clone(),
            w.pool.clone().unwrap_or_else(|| "-".into()),
            w.provider.clone(),
            w.worker_type.clone(),
            w.state.clone(),
            if w.registered { "yes" } else { "no" }.into(),
            w.capabilities.cpu_cores.to_string(),
            format!("{} MiB", w.capabilities.memory_mb),
            age(&w.provisioned_at),
        ]);
    }
    println!("{t}");
}

fn print_pools(pools: &[PoolView]) {
    let mut t = table(&[
        "NAME",
        "PROVIDER",
        "KIND",
        "MIN",
        "MAX",
        "DESIRED",
        "IDLE",
        "BUSY",
        "STARTING",
        "UNHEALTHY",
        "COST",
    ]);
    for p in pools {
        let name = if p.removing {
            format!("{} (removing)", p.name)
        } else {
            p.name.clone()
        };
        t.add_row(vec![
            name,
            p.provider.clone(),
            p.kind.clone(),
            p.min.to_string(),
            p.max.to_string(),
            p.desired.to_string(),
            p.workers.idle.to_string(),
            p.workers.busy.to_string(),
            p.workers.starting.to_string(),
            p.workers.unhealthy.to_string(),
            format!("{:.4}", p.cost),
        ]);
    }
    println!("{t}");
}

fn print_decisions(pool: &PoolView) {
    if pool.decisions.is_empty() {
        println!("\nNo decisions yet.");
        return;
    }
    println!("\nRecent decisions (newest first):");
    let mut t = table(&["AGE", "ACTION", "COUNT", "SUPPLY", "DESIRED", "REASON"]);
    for d in &pool.decisions {
        // A repeated hold: its span and how many passes made it.
        let (when, action) = if d.repeats > 1 {
            (
                format!("{}..{}", age(&d.at), age(&d.last_at)),
                format!("{} x{}", d.action, d.repeats),
            )
        } else {
            (age(&d.at), d.action.clone())
        };
        t.add_row(vec![
            when,
            action,
            d.count.to_string(),
            d.supply.to_string(),
            d.desired.to_string(),
            d.reason.clone(),
        ]);
    }
    println!("{t}");
}

/// Reads pools from TOML or JSON (by extension, else by trying JSON first): one bare pool
/// (the keys of a `[[pool]]` table), or the `[[pool]]` form of hodei.toml (`{"pool": [...]}`
/// or a list in JSON), so a snippet copied from a configuration file applies as it is.
fn read_pool_file(path: &std::path::Path) -> anyhow::Result<Vec<hodei_core::PoolSpec>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let is_json = path.extension().is_some_and(|e| e == "json")
        || (path.extension().is_none() && text.trim_start().starts_with(['{', '[']));
    let value: serde_json::Value = if is_json {
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?
    } else {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
        serde_json::to_value(table)?
    };
    let (listed, pools) = match value {
        serde_json::Value::Array(pools) => (true, pools),
        serde_json::Value::Object(mut object)
            if object.len() == 1 && object.get("pool").is_some_and(|p| p.is_array()) =>
        {
            match object.remove("pool") {
                Some(serde_json::Value::Array(pools)) => (true, pools),
                _ => (true, Vec::new()),
            }
        }
        bare => (false, vec![bare]),
    };
    if pools.is_empty() {
        anyhow::bail!("{}: no pool in the file", path.display());
    }
    pools
        .into_iter()
        .enumerate()
        .map(|(index, pool)| {
            let at = if listed {
                format!("{}: pool[{index}]", path.display())
            } else {
                path.display().to_string()
            };
            let spec: hodei_core::PoolSpec =
                serde_json::from_value(pool).with_context(|| format!("{at}: not a pool"))?;
            spec.validate().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            Ok(spec)
        })
        .collect()
}

pub async fn worker(command: WorkerCommand) -> anyhow::Result<()> {
    match command {
        WorkerCommand::Ls {
            pool,
            state,
            all,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let mut query = vec![("all", all.to_string())];
            query.extend(pool.map(|p| ("pool", p)));
            query.extend(state.map(|s| ("state", s)));
            let list: WorkerList = client.get("/workers", &query).await?;
            show_list(
                connection.output,
                &list,
                &list.workers,
                "No workers.",
                print_workers,
            )
        }
        WorkerCommand::Get { id, connection } => {
            let client = Client::new(&connection)?;
            let worker: WorkerView = client.get(&format!("/workers/{id}"), &[]).await?;
            show_one(connection.output, &worker, || {
                print_workers(std::slice::from_ref(&worker));
                match (worker.load_average, worker.memory_used_mb) {
                    (Some(load), Some(memory)) => println!(
                        "\nlast heartbeat: load {load:.2}, memory used {memory} MiB of {} MiB",
                        worker.capabilities.memory_mb
                    ),
                    _ => println!("\nlast heartbeat: no usage reported yet"),
                }
                if !worker.labels.is_empty() {
                    let labels: Vec<_> = worker
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!("\nlabels: {}", labels.join(", "));
                }
            })
        }
        WorkerCommand::Terminate { id, connection } => {
            let client = Client::new(&connection)?;
            client.delete(&format!("/workers/{id}")).await?;
            println!("worker {id} terminated");
            Ok(())
        }
        WorkerCommand::Drain {
            id,
            then,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let worker: WorkerView = client
                .post(
                    &format!("/workers/{id}/drain"),
                    &serde_json::json!({ "then": then }),
                )
                .await?;
            match connection.output.shown()? {
                Shown::Json => print_json(&worker),
                Shown::Table if then == "keep" => {
                    println!(
                        "worker {id} draining: no new jobs; it stays after its current job until `hodei worker undrain {id}`"
                    );
                    Ok(())
                }
                Shown::Table => {
                    println!(
                        "worker {id} draining: no new jobs; it is terminated once its current job is done"
                    );
                    Ok(())
                }
            }
        }
        WorkerCommand::Undrain { id, connection } => {
            let client = Client::new(&connection)?;
            let worker: WorkerView = client
                .post(&format!("/workers/{id}/undrain"), &serde_json::json!({}))
                .await?;
            show_one(connection.output, &worker, || {
                println!("worker {id} undrained: it takes jobs again");
            })
        }
    }
}

pub async fn pool(command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::Ls { connection } => {
            let client = Client::new(&connection)?;
            let list: PoolList = client.get("/pools", &[]).await?;
            show_list(
                connection.output,
                &list,
                &list.pools,
                "No pools.",
                print_pools,
            )
        }
        PoolCommand::Get { name, connection } => {
            let client = Client::new(&connection)?;
            let pool: PoolView = client.get(&format!("/pools/{name}"), &[]).await?;
            show_one(connection.output, &pool, || {
                print_pools(std::slice::from_ref(&pool));
                println!(
                    "\nworker-seconds {:.1}, cost {:.4} at {}/hour",
                    pool.worker_seconds, pool.cost, pool.spec.cost_per_hour
                );
                print_decisions(&pool);
            })
        }
        PoolCommand::Apply { file, connection } => {
            // Every pool is checked before the first is sent.
            let specs = read_pool_file(&file)?;
            let shown = connection.output.shown()?;
            let client = Client::new(&connection)?;
            let mut applied = Vec::new();
            for spec in specs {
                let path = format!("/pools/{}", spec.name);
                let exists = client.get_optional::<PoolView>(&path).await?.is_some();
                let pool: PoolView = if exists {
                    client.put(&path, &spec).await?
                } else {
                    client.post("/pools", &spec).await?
                };
                if shown == Shown::Table {
                    let verb = if exists { "changed" } else { "created" };
                    println!("pool {} {verb}", pool.name);
                }
                applied.push(pool);
            }
            match shown {
                Shown::Json if applied.len() == 1 => print_json(&applied[0]),
                Shown::Json => print_json(&applied),
                Shown::Table => Ok(()),
            }
        }
        PoolCommand::Scale {
            name,
            workers,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let pool: PoolView = client
                .post(
                    &format!("/pools/{name}/scale"),
                    &hodei_server::api::ScalePool { workers },
                )
                .await?;
            show_one(connection.output, &pool, || {
                println!(
                    "pool {} now keeps {} to {} workers",
                    pool.name, pool.min, pool.max
                );
            })
        }
        PoolCommand::Rm { name, connection } => {
            let client = Client::new(&connection)?;
            client.delete(&format!("/pools/{name}")).await?;
            println!("pool {name} removed; its workers drain and stop");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every `[[pool]]` example of the README's TOML blocks applies with `pool apply -f`.
    #[test]
    fn the_readme_pool_examples_are_valid_pool_files() {
        let readme = include_str!("../../../README.md");
        let dir = tempfile::tempdir().unwrap();
        let mut examples = 0;
        for (index, block) in readme.split("```toml").skip(1).enumerate() {
            let block = block.split("```").next().unwrap();
            if !block.contains("[[pool]]") {
                continue;
            }
            // Only the pool tables: a configuration example also has other sections.
            let file = dir.path().join(format!("example-{index}.toml"));
            std::fs::write(&file, pools_only(block)).unwrap();
            let pools = read_pool_file(&file).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
            assert!(!pools.is_empty());
            examples += 1;
        }
        assert!(examples >= 2, "the README has pool examples");
    }

    /// The `[[pool]]` and `[pool.*]` tables of a TOML text.
    fn pools_only(text: &str) -> String {
        let mut keep = false;
        let mut out = String::new();
        for line in text.lines() {
            let header = line.trim_start();
            if header.starts_with('[') {
                keep = header.starts_with("[[pool]]")
                    || header.starts_with("[pool.")
                    || header.starts_with("[[pool.");
            }
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn a_bare_pool_a_pool_list_and_json_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare.toml");
        std::fs::write(&bare, "name = \"a\"\nprovider = \"local\"\nsize = 1\n").unwrap();
        assert_eq!(read_pool_file(&bare).unwrap()[0].name, "a");
        let listed = dir.path().join("listed.toml");
        std::fs::write(
            &listed,
            "[[pool]]\nname = \"a\"\nprovider = \"local\"\nsize = 1\n[[pool]]\nname = \"b\"\nprovider = \"local\"\nsize = 2\n",
        )
        .unwrap();
        let names: Vec<String> = read_pool_file(&listed)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let json = dir.path().join("pools.json");
        std::fs::write(
            &json,
            r#"{"pool": [{"name": "c", "provider": "local", "size": 1}]}"#,
        )
        .unwrap();
        assert_eq!(read_pool_file(&json).unwrap()[0].name, "c");
        // A bad second pool is named by its index, and nothing is applied.
        std::fs::write(
            &listed,
            "[[pool]]\nname = \"a\"\nprovider = \"local\"\nsize = 1\n[[pool]]\nname = \"b\"\nprovider = \"local\"\nkind = \"dynamic\"\nmin = 3\nmax = 2\n",
        )
        .unwrap();
        let error = format!("{:#}", read_pool_file(&listed).unwrap_err());
        assert!(
            error.contains("pool[1]") && error.contains("min"),
            "{error}"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now =
            humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(30)).to_string();
        assert_eq!(age(&now), "30s");
        let hours =
            humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(3 * 3600 + 5))
                .to_string();
        assert_eq!(age(&hours), "3h");
        assert_eq!(age("yesterday"), "?");
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Who leads, with which epoch, and the replicas the answering server knows of.
    Status {
        #[command(flatten)]
        connection: Connection,
    },
}

pub async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { connection } => {
            let client = Client::new(&connection)?;
            let status: hodei_server::api::ClusterStatus = client.get("/cluster", &[]).await?;
            show_one(connection.output, &status, || {
                let mut t = table(&["ID", "URL", "ROLE"]);
                for member in &status.members {
                    t.add_row(vec![
                        member.id.clone(),
                        member.url.clone(),
                        member.role.clone(),
                    ]);
                }
                println!("{t}");
                match (&status.leader, status.epoch) {
                    (Some(leader), Some(epoch)) => println!(
                        "\nmode {}, leader {leader} (epoch {epoch}), answered by {}",
                        status.mode, status.me
                    ),
                    _ => println!(
                        "\nmode {}, no leader yet, answered by {}",
                        status.mode, status.me
                    ),
                }
            })
        }
    }
}
