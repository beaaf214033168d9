//! TLS on the one address (`[tls]`): a CA and a server certificate made here with rcgen,
//! a real server, real gRPC and REST clients and real agent processes. Over TLS everything
//! works for a client that trusts the CA; a plaintext client, or one that does not trust the
//! CA, gets nowhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{HODEI, KillOnDrop};
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
use hodei_ports::SchedulerPort;
use hodei_proto::{ClientConfig, SchedulerPortClient};
use hodei_server::ServerConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hodei test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server-key.pem", key.serialize_pem()),
        _dir: dir,
    }
}

fn tls_config(data_dir: &Path, pki: &Pki, workers: u32) -> ServerConfig {
    let mut config = common::config(data_dir, workers);
    config.token = Some("0123456789abcdef-tls".into());
    config.tls.cert = Some(pki.cert.clone());
    config.tls.key = Some(pki.key.clone());
    config.tls.ca_cert = Some(pki.ca.clone());
    config
}

fn client(url: &str, token: &str, ca_cert: Option<&Path>) -> SchedulerPortClient {
    let mut config = ClientConfig::new(url, token);
    config.ca_cert = ca_cert.map(Path::to_path_buf);
    config.call_timeout = Duration::from_secs(5);
    SchedulerPortClient::new(&config).unwrap()
}

fn worker(id: &str) -> Worker {
    Worker::from_spec(
        WorkerId::new(id).unwrap(),
        &WorkerSpec::default(),
        ProviderKind::External,
        SystemTime::now(),
    )
}

#[tokio::test]
async fn registration_over_tls_works_for_a_client_that_trusts_the_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_anywhere(tls_config(dir.path(), &pki, 0)).await;
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );

    let trusted = client(server.url(), server.token(), Some(&pki.ca));
    trusted.register_worker(worker("over-tls")).await.unwrap();
    let ids = trusted.get_registered_workers().await.unwrap();
    assert_eq!(ids, vec![WorkerId::new("over-tls").unwrap()]);

    // The console's session cookie is Secure over TLS.
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = https
        .post(format!("{}/console/sign-in", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plaintext_and_untrusting_clients_get_nowhere() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_anywhere(tls_config(dir.path(), &pki, 0)).await;

    let plaintext_url = server.url().replace("https://", "http://");
    let plaintext = client(&plaintext_url, server.token(), None);
    let error = plaintext
        .register_worker(worker("plaintext"))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "a transport failure: {error:?}");

    // The system's roots (if the machine has any) do not include the test CA.
    let mut untrusting = ClientConfig::new(server.url(), server.token());
    untrusting.call_timeout = Duration::from_secs(5);
    if let Ok(untrusting) = SchedulerPortClient::new(&untrusting) {
        untrusting
            .register_worker(worker("untrusted"))
            .await
            .unwrap_err();
    }

    let plain_http = reqwest::Client::new()
        .get(format!("{plaintext_url}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain_http.is_err(), "plain HTTP/1.1 is refused too");

    assert!(
        server.scheduler().is_empty(),
        "nothing was registered without TLS"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn local_agents_and_the_cli_work_over_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    // One pool worker: the local provider starts an agent that must trust tls.ca_cert.
    let server = common::start_anywhere(tls_config(dir.path(), &pki, 1)).await;
    let ids = common::wait_for_registered_workers(&server, 1).await;
    common::wait_for_connected(&server, &ids[0]).await;

    // An agent started by hand, with --ca-cert.
    let agent_token = common::agent_token(&server).await;
    let agent = KillOnDrop(
        Command::new(HODEI)
            .args(["agent", "--server", server.url(), "--worker-id", "by-hand"])
            .arg("--ca-cert")
            .arg(&pki.ca)
            .env("HODEI_TOKEN", &agent_token)
            .env_remove("HODEI_CA_CERT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_for_connected(&server, &WorkerId::new("by-hand").unwrap()).await;

    // The REST client over HTTPS, trusting the CA through HODEI_CA_CERT.
    // tokio's Command: the server runs on this test's thread and must keep answering.
    let listed = tokio::process::Command::new(HODEI)
        .args(["worker", "ls", "-o", "json", "--server", server.url()])
        .env("HODEI_TOKEN", server.token())
        .env("HODEI_CA_CERT", &pki.ca)
        .output()
        .await
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let workers: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(workers.to_string().contains(ids[0].as_str()), "{workers}");

    // Without the CA the CLI cannot verify the server and says so.
    let refused = tokio::process::Command::new(HODEI)
        .args(["worker", "ls", "--server", server.url()])
        .env("HODEI_TOKEN", server.token())
        .env_remove("HODEI_CA_CERT")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cannot reach the server"), "{stderr}");

    drop(agent);
    server.shutdown().await.unwrap();
}

#[test]
fn tls_problems_stop_start_up_naming_the_key() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let good = tls_config(dir.path(), &pki, 0);
    assert!(good.validate().is_ok());

    let mut config = good.clone();
    config.tls.cert = Some(dir.path().join("missing.pem"));
    let error = config.validate().unwrap_err();
    assert_eq!(error.field, "tls.cert");
    assert!(error.reason.contains("missing.pem"), "{error}");

    let mut config = good.clone();
    config.tls.key = Some(pki.cert.clone());
    assert_eq!(config.validate().unwrap_err().field, "tls.key");

    let mut config = good.clone();
    config.tls.key = None;
    assert_eq!(config.validate().unwrap_err().field, "tls.key");

    let mut config = good.clone();
    config.tls.ca_cert = Some(pki.key.clone());
    assert_eq!(config.validate().unwrap_err().field, "tls.ca_cert");

    // The same through `hodei server`: the message names the key.
    let config_file = dir.path().join("hodei.toml");
    std::fs::write(
        &config_file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("missing.pem").display().to_string(),
            pki.key.display().to_string(),
        ),
    )
    .unwrap();
    let output = Command::new(HODEI)
        .args(["server", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.cert"), "{stderr}");
}
