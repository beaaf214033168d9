//! `/metrics` in the format the scraper asks for: OpenMetrics 1.0 when its `Accept` header
//! prefers it, Prometheus text 0.0.4 otherwise.
//!
//! `prometheus-client` encodes OpenMetrics only. The classic text format differs in ways
//! its parser (and `promtool check metrics`) cares about: a counter's family is named with
//! its `_total` suffix (`# TYPE x_total counter`), there is no `# UNIT` line, no `# EOF`,
//! no exemplars and no `_created` samples, and HELP escapes only `\\` and `\n`. The
//! conversion below is that small table; pulling in the `prometheus` crate instead would
//! mean a second metrics library and registry beside the one every module already uses.

use std::collections::HashMap;

/// The content type of OpenMetrics 1.0 text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// OpenMetrics when the `Accept` header names `application/openmetrics-text` with a quality
/// at least that of any media range that also covers `text/plain`; the classic text
/// otherwise, which is also the answer to no header, `*/*` and anything unparsable.
pub(crate) fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::PrometheusText;
    };
    let mut openmetrics: f32 = 0.0;
    let mut text: f32 = 0.0;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    }
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it) into Prometheus text 0.0.4.
pub(crate) fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    // The name a family has in the classic format, and its classic type.
    let classic = |family: &str| -> (String, &'static str) {
        match types.get(family).copied().unwrap_or("unknown") {
            "counter" => (format!("{family}_total"), "counter"),
            "gauge" => (family.to_owned(), "gauge"),
            "histogram" => (family.to_owned(), "histogram"),
            "summary" => (family.to_owned(), "summary"),
            "info" => (format!("{family}_info"), "gauge"),
            "stateset" => (family.to_owned(), "gauge"),
            "gaugehistogram" => (family.to_owned(), "histogram"),
            _ => (family.to_owned(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    let mut family = "";
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            family = name;
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {} {help}\n", classic(name).0));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            family = name;
            let (classic_name, classic_type) = classic(name);
            out.push_str(&format!("# TYPE {classic_name} {classic_type}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = line.split(" # ").next().unwrap_or(line);
        let sample_name = sample.split(['{', ' ']).next().unwrap_or("");
        if sample_name == format!("{family}_created") {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn negotiation_table() {
        let prometheus_2_42 = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        for (accept, expected) in [
            (None, Format::PrometheusText),
            (Some(""), Format::PrometheusText),
            (Some("*/*"), Format::PrometheusText),
            (Some("text/plain;version=0.0.4"), Format::PrometheusText),
            (
                Some("text/plain; version=0.0.4; q=1.0"),
                Format::PrometheusText,
            ),
            (Some("application/json"), Format::PrometheusText),
            (Some("garbage;;;q=x,"), Format::PrometheusText),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some(prometheus_2_42), Format::OpenMetrics),
            (
                Some("application/openmetrics-text;q=0.2,text/plain;q=0.9"),
                Format::PrometheusText,
            ),
            (
                Some("application/openmetrics-text;q=0,*/*"),
                Format::PrometheusText,
            ),
        ] {
            assert_eq!(negotiate(accept), expected, "Accept: {accept:?}");
        }
    }

    fn sample_registry() -> Registry {
        let mut registry = Registry::default();
        let counter: Family<Vec<(String, String)>, Counter> = Family::default();
        counter
            .get_or_create(&vec![("state".into(), "ok".into())])
            .inc_by(3);
        registry.register("jobs", "Jobs \"done\" by state", counter);
        let gauge: Gauge = Gauge::default();
        gauge.set(7);
        registry.register("depth", "Queued", gauge);
        let histogram = Histogram::new([0.5, 1.0]);
        histogram.observe(0.7);
        registry.register_with_unit("wait", "Waiting", Unit::Seconds, histogram);
        registry
    }

    #[test]
    fn counters_get_their_total_family_name_and_the_rest_is_kept() {
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &sample_registry())
            .expect("encoding to a string cannot fail");
        let text = openmetrics_to_prometheus_text(&openmetrics);
        let expected = "# HELP jobs_total Jobs \"done\" by state.\n\
            # TYPE jobs_total counter\n\
            jobs_total{state=\"ok\"} 3\n\
            # HELP depth Queued.\n\
            # TYPE depth gauge\n\
            depth 7\n\
            # HELP wait_seconds Waiting.\n\
            # TYPE wait_seconds histogram\n\
            wait_seconds_sum 0.7\n\
            wait_seconds_count 1\n\
            wait_seconds_bucket{le=\"0.5\"} 0\n\
            wait_seconds_bucket{le=\"1.0\"} 1\n\
            wait_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(text, expected, "from:\n{openmetrics}");
    }

    #[test]
    fn exemplars_created_samples_and_eof_are_dropped() {
        let openmetrics = "# HELP c A counter\n# TYPE c counter\n\
            c_total 2 # {trace_id=\"ab\"} 1.0\nc_created 1700000000.0\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(openmetrics),
            "# HELP c_total A counter\n# TYPE c_total counter\nc_total 2\n"
        );
    }
}
