//! Fuzzing with proptest (cargo-fuzz needs a nightly toolchain this machine does not have):
//! arbitrary bytes, and mutations of valid inputs, through every protobuf decoder the
//! server exposes, the REST API's JSON request types, and the validators behind them.
//! Nothing may panic; everything either decodes or is refused with an error.
//!
//! The normal test run tries 256 cases per property. A longer run:
//! `PROPTEST_CASES=200000 cargo test -p hodei-server --test fuzz --release`

#![allow(clippy::unwrap_used)]

use hodei_core::PoolSpec;
use hodei_proto::convert::worker_from_request;
use hodei_proto::v1;
use hodei_server::api::{CreateToken, ScalePool, SubmitJob};
use proptest::prelude::*;
use prost::Message;

/// Valid requests to mutate: a mutation of something valid reaches deeper than noise.
fn seeds() -> Vec<Vec<u8>> {
    let hello = v1::AgentMessage {
        body: Some(v1::agent_message::Body::Hello(v1::Hello {
            worker_id: "w-1".into(),
            capabilities: Some(v1::WorkerCapabilities {
                cpu_cores: 2,
                memory_mb: 1024,
                ..Default::default()
            }),
            labels: [("os".to_owned(), "linux".to_owned())].into(),
            version: "0.1.0".into(),
            running_job_ids: vec!["j-1".into()],
        })),
    };
    let register = v1::RegisterWorkerRequest {
        worker_id: "w-2".into(),
        capabilities: Some(v1::WorkerCapabilities {
            cpu_cores: 4,
            memory_mb: 2048,
            ..Default::default()
        }),
        metadata: None,
    };
    let submit = v1::SubmitJobRequest {
        allow_pending: false,
        spec: Some(v1::JobSpec {
            script: "echo hi".into(),
            tenant: "team".into(),
            ..Default::default()
        }),
    };
    vec![
        hello.encode_to_vec(),
        register.encode_to_vec(),
        submit.encode_to_vec(),
    ]
}

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8).prop_map(
        move |edits| {
            let mut bytes = seed.clone();
            for (index, byte) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                } else {
                    let at = index.index(bytes.len());
                    bytes[at] = byte;
                }
            }
            bytes
        },
    )
}

fn protobuf_inputs() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(seeds[0].clone()),
        mutated(seeds[1].clone()),
        mutated(seeds[2].clone()),
    ]
}

fn json_inputs() -> impl Strategy<Value = Vec<u8>> {
    let pool =
        serde_json::to_vec(&PoolSpec::fixed("p", hodei_core::ProviderKind::Local, 2)).unwrap();
    let job =
        br#"{"command":["echo","hi"],"env":{"A":"1"},"timeout_secs":5,"priority":3}"#.to_vec();
    let token = br#"{"role":"tenant","tenant":"team-a","description":"x"}"#.to_vec();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "\\PC{0,200}".prop_map(String::into_bytes),
        mutated(pool),
        mutated(job),
        mutated(token),
    ]
}

proptest! {
    #[test]
    fn protobuf_decoders_never_panic(bytes in protobuf_inputs()) {
        if let Ok(message) = v1::AgentMessage::decode(bytes.as_slice())
            && let Some(v1::agent_message::Body::Hello(hello)) = message.body
            && let Some(capabilities) = hello.capabilities
        {
            let capabilities: hodei_core::WorkerCapabilities = capabilities.into();
            let _ = capabilities.validate();
            let _ = hodei_core::WorkerId::new(hello.worker_id);
        }
        if let Ok(request) = v1::RegisterWorkerRequest::decode(bytes.as_slice()) {
            let _ = worker_from_request(request);
        }
        let _ = v1::UnregisterWorkerRequest::decode(bytes.as_slice());
        let _ = v1::ServerMessage::decode(bytes.as_slice());
        let _ = v1::SubmitJobRequest::decode(bytes.as_slice());
        let _ = v1::GetJobRequest::decode(bytes.as_slice());
        let _ = v1::ListJobsRequest::decode(bytes.as_slice());
        let _ = v1::CreateTokenRequest::decode(bytes.as_slice());
        let _ = v1::RevokeTokenRequest::decode(bytes.as_slice());
    }

    #[test]
    fn json_decoders_and_validators_never_panic(bytes in json_inputs()) {
        if let Ok(pool) = serde_json::from_slice::<PoolSpec>(&bytes) {
            let _ = pool.validate();
        }
        if let Ok(job) = serde_json::from_slice::<SubmitJob>(&bytes) {
            let _ = job.into_spec();
        }
        if let Ok(token) = serde_json::from_slice::<CreateToken>(&bytes) {
            let _ = token.into_new();
        }
        let _ = serde_json::from_slice::<ScalePool>(&bytes);
    }

    #[test]
    fn name_and_token_validators_never_panic(text in "\\PC{0,80}") {
        let _ = hodei_core::WorkerId::new(text.clone());
        let _ = hodei_core::JobId::new(text.clone());
        let _ = hodei_core::TenantName::new(text.clone());
        let _ = hodei_core::worker::validate_user("user", &text);
        let _ = hodei_core::credential::parse_token(&text);
        let _ = hodei_core::credential::bearer_token(&text);
        let _ = text.parse::<hodei_core::credential::Role>();
    }
}
