//! `hodei token create|ls|revoke`: credentials through the REST API (admin only).

use clap::Subcommand;
use hodei_server::api::{CreateToken, CreatedToken, RevokedTokens, TokenList, TokenView};

use crate::client::{Client, Connection, show_list, show_one, table};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a credential and print its token once (it is stored only hashed).
    ///
    /// `admin`: the whole API. `agent`: an enrollment token for hand-started agents
    /// (`hodei agent --token-file`); each agent enrolling with it gets its own worker
    /// credential, and revoking the agent token revokes those too.
    Create {
        /// admin or agent (tenant tokens: `hodei tenant token create NAME`).
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// What it is for, shown by `hodei token ls`.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List credentials (never their secrets), revoked ones included.
    Ls {
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a credential by id, and what it issued: refused at once, open agent sessions
    /// included.
    Revoke {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn when(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn print_tokens(tokens: &[TokenView]) {
    let mut out = table(&["ID", "ROLE", "FOR", "DESCRIPTION", "CREATED", "REVOKED"]);
    for token in tokens {
        let subject = token
            .worker_id
            .clone()
            .or_else(|| token.tenant.clone())
            .unwrap_or_default();
        out.add_row(vec![
            token.id.clone(),
            token.role.clone(),
            subject,
            token.description.clone(),
            when(token.created_at_ms),
            token.revoked_at_ms.map(when).unwrap_or_default(),
        ]);
    }
    println!("{out}");
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            role,
            description,
            connection,
        } => {
            let client = Client::new(&connection)?;
            let request = CreateToken {
                role,
                description,
                tenant: None,
            };
            let created: CreatedToken = client.post("/tokens", &request).await?;
            show_one(connection.output, &created, || {
                println!("{}", created.token);
                eprintln!(
                    "credential {} ({}); the token above is shown only now",
                    created.info.id, created.info.role
                );
            })
        }
        TokenCommand::Ls { connection } => {
            let client = Client::new(&connection)?;
            let list: TokenList = client.get("/tokens", &[]).await?;
            show_list(
                connection.output,
                &list,
                &list.tokens,
                "No credentials (the configured admin token is not listed).",
                print_tokens,
            )
        }
        TokenCommand::Revoke { id, connection } => {
            let client = Client::new(&connection)?;
            let revoked: RevokedTokens = client.delete_json(&format!("/tokens/{id}")).await?;
            show_one(connection.output, &revoked, || {
                if revoked.revoked.is_empty() {
                    println!("credential {id} was already revoked");
                } else {
                    println!("revoked: {}", revoked.revoked.join(", "));
                }
            })
        }
    }
}
