//! Traces: the jobs a simulation replays, one record per job, as CSV or JSON Lines.
//!
//! CSV columns, in this order, with a header line:
//! `submit_offset_s,tenant,queue,priority,sla_class,cpu,memory_mb,labels,run_s,exit_code`;
//! `labels` is `key=value` pairs separated by `;` (empty for none). JSON Lines: one object
//! per line with the same keys, `labels` an object. Offsets are seconds from the start of
//! the trace; records need not be sorted.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use hodei_core::{Priority, QueueName, Requirements, SlaClass, TenantName, ValidationError};
use serde::{Deserialize, Serialize};

/// One job of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceJob {
    /// Seconds from the start of the trace to the submission.
    pub submit_offset_s: f64,
    pub tenant: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_sla")]
    pub sla_class: String,
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds the job runs once started.
    pub run_s: f64,
    #[serde(default)]
    pub exit_code: i32,
}

fn default_queue() -> String {
    "default".to_owned()
}

fn default_sla() -> String {
    "medium".to_owned()
}

fn default_cpu() -> u32 {
    1
}

/// A trace job checked and in the core's types.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub submit_ms: u64,
    pub tenant: TenantName,
    pub queue: QueueName,
    pub priority: Priority,
    pub sla_class: SlaClass,
    pub requirements: Requirements,
    pub run_ms: u64,
    pub exit_code: i32,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the trace has no jobs")]
    Empty,
}

fn seconds_to_ms(field: &str, secs: f64) -> Result<u64, String> {
    if !secs.is_finite() || !(0.0..=365.0 * 86_400.0).contains(&secs) {
        return Err(format!(
            "{field}: is {secs}, seconds from 0 to a year expected"
        ));
    }
    // Bounded above: fits u64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((secs * 1000.0).round() as u64)
}

impl TraceJob {
    /// Checks every field; errors name it.
    pub fn check(&self) -> Result<Checked, String> {
        let named = |e: ValidationError| format!("{}: {}", e.field, e.reason);
        let requirements = Requirements {
            cpu_cores: self.cpu,
            memory_mb: self.memory_mb,
            labels: self.labels.clone(),
            ..Requirements::default()
        };
        requirements.validate().map_err(named)?;
        Ok(Checked {
            submit_ms: seconds_to_ms("submit_offset_s", self.submit_offset_s)?,
            tenant: TenantName::new(self.tenant.clone()).map_err(named)?,
            queue: QueueName::new(self.queue.clone()).map_err(named)?,
            priority: Priority::new(self.priority).map_err(named)?,
            sla_class: self.sla_class.parse().map_err(named)?,
            requirements,
            run_ms: seconds_to_ms("run_s", self.run_s)?,
            exit_code: self.exit_code,
        })
    }
}

/// The trace's format: JSON Lines for `.jsonl`/`.ndjson`/`.json`, CSV otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => Self::JsonLines,
            _ => Self::Csv,
        }
    }
}

const HEADER: [&str; 10] = [
    "submit_offset_s",
    "tenant",
    "queue",
    "priority",
    "sla_class",
    "cpu",
    "memory_mb",
    "labels",
    "run_s",
    "exit_code",
];

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(';')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("labels: {pair:?} is not key=value"))
        })
        .collect()
}

/// Writes a trace.
pub fn write(jobs: &[TraceJob], format: Format, out: impl Write) -> std::io::Result<()> {
    match format {
        Format::JsonLines => {
            let mut out = std::io::BufWriter::new(out);
            for job in jobs {
                serde_json::to_writer(&mut out, job)?;
                out.write_all(b"\n")?;
            }
            out.flush()
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(HEADER)?;
            for job in jobs {
                writer.write_record([
                    format!("{:.3}", job.submit_offset_s),
                    job.tenant.clone(),
                    job.queue.clone(),
                    job.priority.to_string(),
                    job.sla_class.clone(),
                    job.cpu.to_string(),
                    job.memory_mb.to_string(),
                    labels_text(&job.labels),
                    format!("{:.3}", job.run_s),
                    job.exit_code.to_string(),
                ])?;
            }
            writer.flush()
        }
    }
}

/// Reads a trace from `input`, checking every record; the jobs come back sorted by
/// submission (stable for equal offsets).
pub fn read(input: impl BufRead, format: Format) -> Result<Vec<Checked>, TraceError> {
    let mut jobs = Vec::new();
    match format {
        Format::JsonLines => {
            for (i, line) in input.lines().enumerate() {
                let line = line.map_err(|source| TraceError::Io {
                    path: "trace".into(),
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |reason: String| TraceError::Line {
                    line: i + 1,
                    reason,
                };
                let job: TraceJob = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
                jobs.push(job.check().map_err(bad)?);
            }
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(input);
            let headers = reader
                .headers()
                .map_err(|e| TraceError::Line {
                    line: 1,
                    reason: e.to_string(),
                })?
                .clone();
            let column = |name: &str| headers.iter().position(|h| h.trim() == name);
            let columns: Vec<Option<usize>> = HEADER.iter().map(|name| column(name)).collect();
            for required in [0, 1, 8] {
                if columns[required].is_none() {
                    return Err(TraceError::Line {
                        line: 1,
                        reason: format!("no column {:?}", HEADER[required]),
                    });
                }
            }
            for (i, record) in reader.records().enumerate() {
                let line = i + 2;
                let bad = |reason: String| TraceError::Line { line, reason };
                let record = record.map_err(|e| bad(e.to_string()))?;
                let get = |k: usize| {
                    columns[k]
                        .and_then(|c| record.get(c))
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                };
                fn num<T: std::str::FromStr>(
                    field: &str,
                    value: Option<&str>,
                    default: T,
                ) -> Result<T, String> {
                    value.map_or(Ok(default), |v| {
                        v.parse()
                            .map_err(|_| format!("{field}: {v:?} is not a number"))
                    })
                }
                let job = TraceJob {
                    submit_offset_s: num(HEADER[0], get(0), 0.0).map_err(bad)?,
                    tenant: get(1).unwrap_or("default").to_owned(),
                    queue: get(2).unwrap_or("default").to_owned(),
                    priority: num(HEADER[3], get(3), 0).map_err(bad)?,
                    sla_class: get(4).unwrap_or("medium").to_owned(),
                    cpu: num(HEADER[5], get(5), 1).map_err(bad)?,
                    memory_mb: num(HEADER[6], get(6), 0).map_err(bad)?,
                    labels: parse_labels(get(7).unwrap_or("")).map_err(bad)?,
                    run_s: num(HEADER[8], get(8), 0.0).map_err(bad)?,
                    exit_code: num(HEADER[9], get(9), 0).map_err(bad)?,
                };
                jobs.push(job.check().map_err(bad)?);
            }
        }
    }
    if jobs.is_empty() {
        return Err(TraceError::Empty);
    }
    jobs.sort_by_key(|job| job.submit_ms);
    Ok(jobs)
}

/// Reads a trace file, its format from its extension.
pub fn read_file(path: &Path) -> Result<Vec<Checked>, TraceError> {
    let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read(std::io::BufReader::new(file), Format::of(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<TraceJob> {
        vec![
            TraceJob {
                submit_offset_s: 1.5,
                tenant: "acme".into(),
                queue: "default".into(),
                priority: 10,
                sla_class: "critical".into(),
                cpu: 2,
                memory_mb: 4096,
                labels: [("os".to_owned(), "linux".to_owned())].into(),
                run_s: 30.25,
                exit_code: 0,
            },
            TraceJob {
                submit_offset_s: 0.5,
                tenant: "beta".into(),
                queue: "default".into(),
                priority: 0,
                sla_class: "best_effort".into(),
                cpu: 1,
                memory_mb: 0,
                labels: BTreeMap::new(),
                run_s: 2.0,
                exit_code: 1,
            },
        ]
    }

    #[test]
    fn both_formats_round_trip_and_sort_by_submission() {
        for format in [Format::Csv, Format::JsonLines] {
            let mut bytes = Vec::new();
            write(&sample(), format, &mut bytes).unwrap();
            let jobs = read(bytes.as_slice(), format).unwrap();
            assert_eq!(jobs.len(), 2);
            assert_eq!(jobs[0].tenant.as_str(), "beta");
            assert_eq!(jobs[0].exit_code, 1);
            assert_eq!(jobs[1].submit_ms, 1500);
            assert_eq!(jobs[1].run_ms, 30_250);
            assert_eq!(jobs[1].sla_class, SlaClass::Critical);
            assert_eq!(jobs[1].requirements.labels["os"], "linux");
            assert_eq!(jobs[1].requirements.cpu_cores, 2);
        }
    }

    #[test]
    fn bad_records_name_the_line_and_field() {
        let csv = "submit_offset_s,tenant,run_s,sla_class\n1,a,2,medium\n2,a,-1,medium\n";
        let err = read(csv.as_bytes(), Format::Csv).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("run_s"), "{err}");
        let csv = "submit_offset_s,tenant,run_s,sla_class\n1,a,2,urgent\n";
        let err = read(csv.as_bytes(), Format::Csv).unwrap_err().to_string();
        assert!(err.contains("sla_class"), "{err}");
        let err = read("{\"tenant\":\"a\"}\n".as_bytes(), Format::JsonLines)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = read("submit_offset_s,tenant\n".as_bytes(), Format::Csv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run_s"), "{err}");
    }
}
