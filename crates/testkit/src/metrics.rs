//! Reading metric values back from a Prometheus registry, the way Prometheus would see them.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The value of the sample `name` whose labels include every `(key, value)` in `labels`,
/// summed over the samples that match. `None` when no sample matches.
pub fn metric_value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut text = String::new();
    encode(&mut text, registry).expect("encoding to a string cannot fail");
    sum_samples(&text, name, labels)
}

/// Like [`metric_value`], on exposition text.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let (sample_name, sample_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if sample_name != name {
            continue;
        }
        let wanted = labels.iter().all(|(k, v)| {
            sample_labels
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if let (true, Ok(value)) = (wanted, value.parse::<f64>()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}
