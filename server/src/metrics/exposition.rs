//! Lock-free histograms and the Prometheus text exposition format (0.0.4)
//! they are written in. Nothing here knows a metric's name or labels: the
//! owner of each metric writes it with labels it knows to be bounded and
//! free of anything secret.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A histogram with fixed upper bounds. Observing is a few atomic adds, so
/// request paths can record without a lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, and the last for values above every bound (not
    /// cumulative; the exposition sums them).
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Relaxed);
        // `fetch_update` only fails when the closure returns `None`.
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|bucket| bucket.load(Relaxed)).sum()
    }
}

/// A page of metrics in the text format, written one family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The content type of [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// The `_bucket` (cumulative, ending in `+Inf`), `_sum` and `_count`
    /// lines of one histogram; the count is the `+Inf` bucket, so the two
    /// agree even while others observe.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (index, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let bound = match histogram.bounds.get(index) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_owned(),
            };
            self.text.push_str(&bucket_name);
            self.labels(labels, Some(&bound));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = f64::from_bits(histogram.sum.load(Relaxed));
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    pub fn finish(self) -> String {
        self.text
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (index, (key, value)) in all.enumerate() {
            if index > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{key}=\"");
            for character in value.chars() {
                match character {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    other => self.text.push(other),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulatively_with_its_sum_and_count() {
        let histogram = Histogram::new(&[1.0, 2.5]);
        for value in [0.5, 1.0, 2.0, 7.0] {
            histogram.observe(value);
        }
        let mut page = Exposition::default();
        page.family("x", "histogram", "An example.");
        page.histogram("x", &[("method", "a\"b")], &histogram);
        assert_eq!(
            page.finish(),
            "# HELP x An example.\n# TYPE x histogram\n\
             x_bucket{method=\"a\\\"b\",le=\"1\"} 2\n\
             x_bucket{method=\"a\\\"b\",le=\"2.5\"} 3\n\
             x_bucket{method=\"a\\\"b\",le=\"+Inf\"} 4\n\
             x_sum{method=\"a\\\"b\"} 10.5\n\
             x_count{method=\"a\\\"b\"} 4\n"
        );
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn samples_without_labels_have_no_braces() {
        let mut page = Exposition::default();
        page.sample("up", &[], 1);
        assert_eq!(page.finish(), "up 1\n");
    }
}
