//! Measures `create_worker` (create + start of one container) and `terminate_worker`
//! against the local engine, one worker at a time; prints one JSON object.
//!
//! `cargo run -p hodei-docker --example create_start_timing -- [RUNS]` (default 10); needs
//! the agent image (`scripts/build-agent-image`).

use std::time::{Duration, Instant};

use hodei_core::{WorkerId, WorkerSpec};
use hodei_docker::{DockerProvider, DockerProviderConfig};
use hodei_ports::WorkerProvider;

fn millis(samples: &mut [Duration], quantile: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() - 1) as f64 * quantile).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(10), |n| n.parse())?;
    let instance = format!("timing-{}", std::process::id());
    let mut config = DockerProviderConfig::new("http://127.0.0.1:9", &instance);
    config.stop_grace = Duration::from_secs(2);
    let provider = DockerProvider::new(config)?;
    provider.ping().await?;
    let spec = WorkerSpec::default();
    let (mut create, mut terminate) = (Vec::new(), Vec::new());
    for n in 0..runs.max(1) {
        let id = WorkerId::new(format!("{instance}-{n}"))?;
        let started = Instant::now();
        provider
            .create_worker(
                &id,
                &spec,
                &hodei_ports::AgentCredential::new("test-credential"),
            )
            .await?;
        create.push(started.elapsed());
        let started = Instant::now();
        provider.terminate_worker(&id).await?;
        terminate.push(started.elapsed());
    }
    println!(
        "{{\"runs\":{},\"create_start_ms\":{{\"p50\":{:.1},\"max\":{:.1}}},\"terminate_ms\":{{\"p50\":{:.1},\"max\":{:.1}}}}}",
        create.len(),
        millis(&mut create, 0.5),
        millis(&mut create, 1.0),
        millis(&mut terminate, 0.5),
        millis(&mut terminate, 1.0),
    );
    Ok(())
}
