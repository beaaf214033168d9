//! The worker agent. It carries the worker's identity and labels and lives until it is told
//! to stop (SIGTERM from its provider, or Ctrl-C).
//!
//! Not yet here: the session with the server (hello, heartbeats, job assignments, logs,
//! results, reconnects). Until it lands the server registers workers on the agent's behalf
//! through worker management, and knows an agent is alive through its provider.

use std::future::Future;

use hodei_core::{Labels, ValidationError, WorkerId, worker::validate_labels};

/// What the agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server URL, such as `http://127.0.0.1:50051`.
    pub server: String,
    /// The bearer token; never logged.
    pub token: String,
    pub worker_id: WorkerId,
    pub labels: Labels,
}

impl AgentConfig {
    /// Builds and checks a configuration. Without an id the agent makes one up.
    pub fn new(
        server: String,
        token: String,
        worker_id: Option<String>,
        labels: Vec<(String, String)>,
    ) -> Result<Self, ValidationError> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ValidationError::new(
                "server",
                format!("{server:?} is not an http:// or https:// URL"),
            ));
        }
        if token.is_empty() {
            return Err(ValidationError::new("token", "must not be empty"));
        }
        let worker_id = match worker_id {
            Some(id) => WorkerId::new(id)?,
            None => WorkerId::new(format!(
                "agent-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))?,
        };
        let labels: Labels = labels.into_iter().collect();
        validate_labels("label", &labels)?;
        Ok(Self {
            server,
            token,
            worker_id,
            labels,
        })
    }
}

/// Parses `key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), ValidationError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(ValidationError::new(
            "label",
            format!("{text:?} is not key=value"),
        )),
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) {
    tracing::info!(worker_id = %config.worker_id, server = %config.server, labels = ?config.labels, "agent started");
    shutdown.await;
    tracing::info!(worker_id = %config.worker_id, "agent stopping");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        let ok = AgentConfig::new(
            "http://127.0.0.1:50051".into(),
            "t".into(),
            Some("w-1".into()),
            vec![("os".into(), "linux".into())],
        )
        .unwrap();
        assert_eq!(ok.worker_id.as_str(), "w-1");
        assert!(
            AgentConfig::new("http://x".into(), "t".into(), None, vec![])
                .unwrap()
                .worker_id
                .as_str()
                .starts_with("agent-")
        );
        let bad = AgentConfig::new("127.0.0.1:50051".into(), "t".into(), None, vec![]).unwrap_err();
        assert_eq!(bad.field, "server");
        let bad = AgentConfig::new("http://x".into(), "t".into(), Some("bad id".into()), vec![])
            .unwrap_err();
        assert_eq!(bad.field, "worker_id");
        let bad = AgentConfig::new("http://x".into(), String::new(), None, vec![]).unwrap_err();
        assert_eq!(bad.field, "token");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("os=linux").unwrap(),
            ("os".into(), "linux".into())
        );
        assert_eq!(
            parse_label("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        assert_eq!(parse_label("novalue").unwrap_err().field, "label");
        assert_eq!(parse_label("=x").unwrap_err().field, "label");
    }
}
