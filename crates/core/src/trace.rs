//! W3C Trace Context: the `traceparent` a submitter sends with a job, checked here so that the
//! server can hand it to the job as `TRACEPARENT` and the job's own spans join the
//! submitter's trace.
//!
//! Hodei's own spans of a job (submitted, admitted, queued, dispatched, accepted, started,
//! finished, recorded) are made through [`Span`], which does nothing until a [`Tracer`] is
//! installed: `hodei-telemetry` installs one that exports over OTLP when
//! `[telemetry] otlp_endpoint` (or the agent's `--otlp-endpoint`) is set. The OpenTelemetry
//! libraries stay in that crate; the rest of Hodei sees only this interface. Spans link
//! through `traceparent` strings, the same form that crosses processes (the job's
//! `TRACEPARENT`, which carries the dispatched span to the agent).

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::JobSpec;

/// Makes spans: the exporter behind [`Span`].
pub trait Tracer: Send + Sync + std::fmt::Debug {
    /// Starts span `name` at `start`, a child of `parent` (a `traceparent`) or, without a
    /// valid one, the root of a new trace.
    fn start(
        &self,
        name: &'static str,
        parent: Option<&str>,
        start: SystemTime,
        attributes: &[(&'static str, String)],
    ) -> Box<dyn OpenSpan>;
}

/// A span started by a [`Tracer`], ended once.
pub trait OpenSpan: Send + Sync + std::fmt::Debug {
    /// Its W3C `traceparent`, for its children.
    fn traceparent(&self) -> String;
    /// Adds an attribute known only after it started.
    fn set_attribute(&mut self, key: &'static str, value: String);
    /// Ends it at `at`.
    fn end(&mut self, at: SystemTime);
}

static TRACER: OnceLock<Arc<dyn Tracer>> = OnceLock::new();

/// Installs the process's tracer; `false` if one already was (the first stays).
pub fn install(tracer: Arc<dyn Tracer>) -> bool {
    TRACER.set(tracer).is_ok()
}

/// Whether spans are exported (a tracer is installed).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One of Hodei's spans; a no-op without a tracer. Ends when dropped, or at a given time
/// with [`Span::end_at`].
#[derive(Debug, Default)]
pub struct Span(Option<Box<dyn OpenSpan>>);

impl Span {
    /// Starts span `name` now, a child of `parent` (a `traceparent`).
    pub fn start(
        name: &'static str,
        parent: Option<&str>,
        attributes: &[(&'static str, String)],
    ) -> Self {
        Self::start_at(name, parent, SystemTime::now(), attributes)
    }

    /// Starts span `name` at `start`, for phases known after the fact (a job's wait in its
    /// queue is known when it is dispatched).
    pub fn start_at(
        name: &'static str,
        parent: Option<&str>,
        start: SystemTime,
        attributes: &[(&'static str, String)],
    ) -> Self {
        Self(TRACER.get().map(|tracer| {
            tracer.start(name, parent.and_then(parse_traceparent), start, attributes)
        }))
    }

    /// Its `traceparent`; `None` without a tracer.
    pub fn traceparent(&self) -> Option<String> {
        self.0.as_ref().map(|span| span.traceparent())
    }

    /// Adds an attribute known only after it started.
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(key, value.into());
        }
    }

    /// Ends it at `at` rather than when dropped.
    pub fn end_at(mut self, at: SystemTime) {
        if let Some(mut span) = self.0.take() {
            span.end(at);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(span) = &mut self.0 {
            span.end(SystemTime::now());
        }
    }
}

/// The job environment variable that carries the submitter's `traceparent`.
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `traceparent` header value if it is valid by the W3C rules (lowercase hex
/// `version-trace_id-parent_id-flags`, version not `ff`, ids not all zero; version `00` has
/// exactly these four fields, later versions may add more), else `None`: an invalid one is
/// ignored, as the specification asks, never an error.
pub fn parse_traceparent(value: &str) -> Option<&str> {
    let value = value.trim();
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let parent_id = fields.next()?;
    let flags = fields.next()?;
    let valid = is_lower_hex(version, 2)
        && version != "ff"
        && is_lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_lower_hex(flags, 2)
        && (version != "00" || fields.next().is_none());
    valid.then_some(value)
}

/// A submission's trace: with a tracer, span `job.submitted` (a child of the submitter's
/// valid `traceparent`, else a new trace) becomes the job's `TRACEPARENT`, the parent of
/// all its other spans, and is what the submitter gets back; without one, the submitter's
/// valid `traceparent` is ([`apply_traceparent`]). The span ends when the caller drops it.
pub fn submitted(spec: &mut JobSpec, header: Option<&str>) -> (Span, Option<String>) {
    let span = Span::start(
        "job.submitted",
        header,
        &[
            ("hodei.tenant", spec.tenant.to_string()),
            ("hodei.queue", spec.queue.to_string()),
        ],
    );
    match span.traceparent() {
        Some(ours) => {
            spec.env.insert(TRACEPARENT_ENV.to_owned(), ours.clone());
            (span, Some(ours))
        }
        None => {
            let theirs = apply_traceparent(spec, header).map(str::to_owned);
            (span, theirs)
        }
    }
}

/// The job's trace context: its `TRACEPARENT`, if valid.
pub fn job_traceparent(spec: &JobSpec) -> Option<&str> {
    spec.env
        .get(TRACEPARENT_ENV)
        .and_then(|value| parse_traceparent(value))
}

/// Gives the job the submitter's trace context: `TRACEPARENT` in its environment, replacing
/// one the spec set. Returns the value applied; an invalid header changes nothing.
pub fn apply_traceparent<'a>(spec: &mut JobSpec, header: Option<&'a str>) -> Option<&'a str> {
    let value = header.and_then(parse_traceparent)?;
    spec.env
        .insert(TRACEPARENT_ENV.to_owned(), value.to_owned());
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_table() {
        for (value, valid) in [
            (VALID, true),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ",
                true,
            ),
            // A later version may carry more fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                false,
            ),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(parse_traceparent(value).is_some(), valid, "{value:?}");
        }
    }

    #[test]
    fn a_valid_header_goes_into_the_job_env_and_an_invalid_one_changes_nothing() {
        let mut spec = JobSpec::new(Command::Script("true".into()));
        spec.env.insert(TRACEPARENT_ENV.into(), "old".into());
        assert_eq!(apply_traceparent(&mut spec, Some("nonsense")), None);
        assert_eq!(spec.env[TRACEPARENT_ENV], "old");
        assert_eq!(apply_traceparent(&mut spec, None), None);
        assert_eq!(apply_traceparent(&mut spec, Some(VALID)), Some(VALID));
        assert_eq!(spec.env[TRACEPARENT_ENV], VALID);
    }
}
