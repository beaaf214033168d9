//! `hodei simulate -o html`: one self-contained page (no script, no network) with the
//! figures side by side and, per configuration, two inline SVG plots drawn with `plotters`:
//! queue depth and workers by state over time, and the distribution of waits.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::{RunReport, Sample};

/// Plot size, pixels.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 320;
/// At most this many points per line: a week sampled each minute is thinned to this.
const MAX_POINTS: usize = 2_000;

/// Wait buckets of the distribution plot: (upper bound in seconds, label). The last one is
/// open.
const WAIT_BUCKETS: [(f64, &str); 9] = [
    (0.1, "< 0.1 s"),
    (1.0, "0.1-1 s"),
    (10.0, "1-10 s"),
    (60.0, "10-60 s"),
    (300.0, "1-5 min"),
    (900.0, "5-15 min"),
    (3_600.0, "15-60 min"),
    (14_400.0, "1-4 h"),
    (f64::INFINITY, "> 4 h"),
];

/// Why the page could not be drawn (a plotting error; not expected with the SVG backend).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the plot {plot}: {reason}")]
pub struct HtmlError {
    plot: String,
    reason: String,
}

fn plot_error(plot: &str) -> impl Fn(String) -> HtmlError + '_ {
    move |reason| HtmlError {
        plot: plot.to_owned(),
        reason,
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How many jobs waited within each of [`WAIT_BUCKETS`].
pub fn wait_histogram(sorted_waits: &[f64]) -> [usize; WAIT_BUCKETS.len()] {
    let mut counts = [0; WAIT_BUCKETS.len()];
    for &wait in sorted_waits {
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|(upper, _)| wait < *upper)
            .unwrap_or(WAIT_BUCKETS.len() - 1);
        counts[bucket] += 1;
    }
    counts
}

/// Every n-th sample, keeping the last, so a line has at most [`MAX_POINTS`] points.
fn thin(samples: &[Sample]) -> Vec<Sample> {
    if samples.len() <= MAX_POINTS {
        return samples.to_vec();
    }
    let step = samples.len().div_ceil(MAX_POINTS);
    let mut out: Vec<Sample> = samples.iter().step_by(step).copied().collect();
    if let Some(last) = samples.last()
        && out.last() != Some(last)
    {
        out.push(*last);
    }
    out
}

/// A line of the time plot: its label, colour and value.
type Series = (&'static str, RGBColor, fn(&Sample) -> u32);

/// Queue depth and workers by state over the run, hours on the x axis.
fn timeline_svg(report: &RunReport) -> Result<String, HtmlError> {
    let name = format!("{} over time", report.config);
    let err = plot_error(&name);
    let samples = thin(&report.samples);
    let hours = samples
        .last()
        .map_or(1.0, |s| s.t_s / 3_600.0)
        .max(1.0 / 60.0);
    let top = samples
        .iter()
        .map(|s| s.queued.max(s.idle + s.busy + s.starting))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "queue depth and workers by state",
                ("sans-serif", 16).into_font(),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..hours, 0u32..top + top / 10 + 1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("hours from the start of the trace")
            .y_desc("count")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let series: [Series; 4] = [
            ("queued jobs", RED, |s| s.queued),
            ("busy workers", BLUE, |s| s.busy),
            ("idle workers", RGBColor(230, 150, 0), |s| s.idle),
            ("starting workers", RGBColor(0, 150, 80), |s| s.starting),
        ];
        for (label, color, value) in series {
            chart
                .draw_series(LineSeries::new(
                    samples.iter().map(|s| (s.t_s / 3_600.0, value(s))),
                    color.stroke_width(1),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// The waits of the admitted jobs, counted in [`WAIT_BUCKETS`].
fn waits_svg(report: &RunReport) -> Result<String, HtmlError> {
    let name = format!("{} waits", report.config);
    let err = plot_error(&name);
    let counts = wait_histogram(&report.sorted_waits());
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let buckets = u32::try_from(WAIT_BUCKETS.len()).unwrap_or(u32::MAX);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "wait from submission to start",
                ("sans-serif", 16).into_font(),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(65)
            .build_cartesian_2d((0u32..buckets).into_segmented(), 0usize..top + top / 10 + 1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(WAIT_BUCKETS.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => WAIT_BUCKETS
                    .get(*i as usize)
                    .map_or(String::new(), |(_, label)| (*label).to_owned()),
                _ => String::new(),
            })
            .y_desc("jobs")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(BLUE.mix(0.6).filled())
                    .margin(4)
                    .data((0u32..).zip(counts).filter(|(_, n)| *n > 0)),
            )
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// The page: the side-by-side table, then per configuration its key figures and its two
/// plots.
pub fn page(reports: &[RunReport]) -> Result<String, HtmlError> {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>hodei simulate</title>\n<style>\n\
         body{font-family:sans-serif;margin:2em;color:#222}\n\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto}\n\
         section{margin-top:2em;border-top:1px solid #ccc}\n\
         svg{display:block;margin:1em 0}\n\
         </style>\n</head>\n<body>\n<h1>hodei simulate</h1>\n",
    );
    let names: Vec<String> = reports.iter().map(|r| escape(&r.config)).collect();
    let _ = writeln!(
        out,
        "<p>{} configuration(s): {}.</p>",
        reports.len(),
        names.join(", ")
    );
    out.push_str("<h2>Side by side</h2>\n<pre>");
    out.push_str(&escape(&crate::report::table(reports)));
    out.push_str("</pre>\n");
    for (report, name) in reports.iter().zip(&names) {
        let _ = writeln!(out, "<section>\n<h2>{name}</h2>");
        let _ = writeln!(
            out,
            "<p>{} jobs; wait p50 {:.2} s, p95 {:.2} s, p99 {:.2} s; SLA met {:.2}%; \
             idle {:.0} worker-s; peak {} workers; cost {:.2}.</p>",
            report.jobs,
            report.wait_seconds.p50,
            report.wait_seconds.p95,
            report.wait_seconds.p99,
            report.sla_met_ratio * 100.0,
            report.idle_worker_seconds,
            report.peak_workers,
            report.cost,
        );
        out.push_str(&timeline_svg(report)?);
        out.push('\n');
        out.push_str(&waits_svg(report)?);
        out.push_str("\n</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_fall_in_their_buckets() {
        let counts =
            wait_histogram(&[0.0, 0.05, 0.5, 5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0, 1e6]);
        assert_eq!(counts, [2, 1, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn thinning_keeps_the_last_sample_and_bounds_the_points() {
        let samples: Vec<Sample> = (0..10_081)
            .map(|i| Sample {
                t_s: f64::from(i) * 60.0,
                ..Sample::default()
            })
            .collect();
        let thinned = thin(&samples);
        assert!(thinned.len() <= MAX_POINTS + 1);
        assert_eq!(thinned.last(), samples.last());
        assert_eq!(thin(&samples[..10]).len(), 10);
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
