//! OpenTelemetry for Hodei: spans exported over OTLP/gRPC (tonic) to a collector, off unless
//! an endpoint is given (`[telemetry] otlp_endpoint` for the server, `--otlp-endpoint` or
//! `HODEI_OTLP_ENDPOINT` for an agent).
//!
//! [`Telemetry::start`] builds one tracer provider (batch export, the service's name as its
//! resource) and gives it two ways in: a [`hodei_core::trace::Tracer`] for the job's spans,
//! which Hodei's crates make through `hodei_core::trace::Span` with their real start and end
//! times, and a `tracing-opentelemetry` layer, so `tracing` spans of the process go to the
//! same collector. The OpenTelemetry crates are compiled here only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer as SdkTracer};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("otlp_endpoint: {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Checks an OTLP endpoint's form (`http://host:4317`), as configuration validation does.
pub fn validate_endpoint(endpoint: &str) -> Result<(), Error> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(Error::Endpoint(endpoint.to_owned())),
    }
}

/// The running export. [`Telemetry::shutdown`] sends what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `endpoint` as service `service` (`hodei-server`, `hodei-agent`)
    /// and installs the job tracer (`hodei_core::trace`). Must run inside a Tokio runtime:
    /// the gRPC channel lives on it. Export is batched (every 5 s by default;
    /// `OTEL_BSP_SCHEDULE_DELAY` in milliseconds changes it).
    pub fn start(endpoint: &str, service: &'static str) -> Result<Self, Error> {
        validate_endpoint(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        hodei_core::trace::install(Arc::new(JobTracer {
            tracer: provider.tracer("hodei"),
        }));
        Ok(Self { provider })
    }

    /// A `tracing` layer that exports the process's `tracing` spans too.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("hodei-tracing"))
    }

    /// Exports what is buffered and stops. Blocks until the collector answered (or the
    /// export timed out): call it from a blocking thread, not a runtime worker.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not send the last spans to the collector");
        }
    }
}

/// The [`hodei_core::trace::Tracer`] on an OpenTelemetry tracer.
#[derive(Debug)]
struct JobTracer {
    tracer: SdkTracer,
}

/// The context a `traceparent` names; an empty one (a new trace) if it is not valid.
fn remote_context(traceparent: Option<&str>) -> Context {
    let Some(value) = traceparent else {
        return Context::new();
    };
    let carrier = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The W3C `traceparent` of a span context.
fn traceparent_of(span: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

impl hodei_core::trace::Tracer for JobTracer {
    fn start(
        &self,
        name: &'static str,
        parent: Option<&str>,
        start: SystemTime,
        attributes: &[(&'static str, String)],
    ) -> Box<dyn hodei_core::trace::OpenSpan> {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(
                attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(*key, value.clone())),
            )
            .start_with_context(&self.tracer, &remote_context(parent));
        Box::new(OtelSpan(span))
    }
}

#[derive(Debug)]
struct OtelSpan(opentelemetry_sdk::trace::Span);

impl hodei_core::trace::OpenSpan for OtelSpan {
    fn traceparent(&self) -> String {
        traceparent_of(self.0.span_context())
    }

    fn set_attribute(&mut self, key: &'static str, value: String) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    fn end(&mut self, at: SystemTime) {
        self.0.end_with_timestamp(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn endpoints_are_checked() {
        for good in ["http://127.0.0.1:4317", "https://collector.example:4317"] {
            assert!(validate_endpoint(good).is_ok(), "{good}");
        }
        for bad in ["", "127.0.0.1:4317", "http://", "ftp://x", "http:///path"] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_traceparent_round_trips_and_a_bad_one_starts_a_new_trace() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote_context(Some(value));
        assert_eq!(traceparent_of(&cx.span().span_context().clone()), value);
        assert!(
            !remote_context(Some("nonsense"))
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!remote_context(None).span().span_context().is_valid());
    }
}
