//! The Prometheus text exposition format (version 0.0.4), written by hand: `# HELP` and `# TYPE` once per
//! family, then one line per sample, label values escaped (`\\`, `\"`, `\n`), HELP text escaped (`\\`, `\n`).
//! Histograms as the format spells them: cumulative `_bucket{le=".."}` lines ending at `+Inf`, then `_sum` and
//! `_count`.
//! Reference: <https://prometheus.io/docs/instrumenting/exposition_formats/>.

use std::fmt::Write as _;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only grows (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets, with their sum and count ([`TextWriter::histogram`]).
    Histogram,
}

/// Accumulates exposition text.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, "", labels, None, value);
    }

    /// One histogram of the current family (started with [`Kind::Histogram`]): a `{name}_bucket` line per
    /// `(upper bound, cumulative count)` with the bound as label `le` after `labels`, then `{name}_sum` and
    /// `{name}_count`. A `+Inf` bucket holding `count` is added when `buckets` does not end with one.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let mut le = String::new();
        for (bound, cumulative) in buckets {
            le.clear();
            push_value(&mut le, *bound);
            self.line(name, "_bucket", labels, Some(&le), *cumulative as f64);
        }
        if buckets
            .last()
            .is_none_or(|(bound, _)| *bound != f64::INFINITY)
        {
            self.line(name, "_bucket", labels, Some("+Inf"), count as f64);
        }
        self.line(name, "_sum", labels, None, sum);
        self.line(name, "_count", labels, None, count as f64);
    }

    /// `{name}{suffix}{labels[,le="{le}"]} {value}`.
    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        le: Option<&str>,
        value: f64,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let le = le.map(|le| ("le", le));
            for (i, (key, value)) in labels.iter().chain(le.iter()).enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_special_values() {
        let mut w = TextWriter::default();
        w.family("x_total", Kind::Counter, "a \\ help\nline");
        w.sample("x_total", &[("a", "q\"b\\c\nd"), ("e", "")], 2.0);
        w.sample("x_total", &[], f64::NAN);
        w.sample("x_total", &[], f64::INFINITY);
        assert_eq!(
            w.finish(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",e=\"\"} 2\nx_total NaN\nx_total +Inf\n"
        );
    }

    #[test]
    fn a_histogram_writes_buckets_sum_and_count_with_le_last() {
        let mut w = TextWriter::default();
        w.family("t_seconds", Kind::Histogram, "time");
        w.histogram(
            "t_seconds",
            &[("g", "a")],
            &[(0.005, 1), (0.5, 3), (f64::INFINITY, 4)],
            2.25,
            4,
        );
        w.histogram("t_seconds", &[], &[(1.0, 0)], 0.0, 0);
        assert_eq!(
            w.finish(),
            "# HELP t_seconds time\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{g=\"a\",le=\"0.005\"} 1\n\
             t_seconds_bucket{g=\"a\",le=\"0.5\"} 3\n\
             t_seconds_bucket{g=\"a\",le=\"+Inf\"} 4\n\
             t_seconds_sum{g=\"a\"} 2.25\n\
             t_seconds_count{g=\"a\"} 4\n\
             t_seconds_bucket{le=\"1\"} 0\n\
             t_seconds_bucket{le=\"+Inf\"} 0\n\
             t_seconds_sum 0\n\
             t_seconds_count 0\n"
        );
    }
}
