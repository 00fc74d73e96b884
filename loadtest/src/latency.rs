//! Latency histograms: HDR histograms in microseconds, their percentile
//! summary in milliseconds, and their exact transport between processes.
//!
//! Percentiles cannot be averaged, so `--procs` children send their whole
//! histograms (HdrHistogram V2 serialisation, base64) and the parent adds
//! them up; the merged percentiles are exactly those of one big run.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Highest latency recorded without clamping: one minute, in µs.
const MAX_MICROS: u64 = 60_000_000;

/// An empty histogram: 1 µs to 60 s at three significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Records one latency, clamping into the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Why a serialised histogram could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("invalid serialised histogram: {0}")]
pub(crate) struct HistogramError(String);

/// The histogram as base64 of its V2 serialisation.
pub(crate) fn to_base64(h: &Histogram<u64>) -> Result<String, HistogramError> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| HistogramError(format!("{e:?}")))?;
    Ok(STANDARD.encode(buf))
}

/// Reads back [`to_base64`]'s output.
pub(crate) fn from_base64(s: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = STANDARD
        .decode(s)
        .map_err(|e| HistogramError(e.to_string()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| HistogramError(format!("{e:?}")))
}

/// Adds `from` into `into`, clamping values beyond the range.
pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to().min(MAX_MICROS), v.count_at_value());
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    /// Deliveries measured.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Largest.
    pub(crate) max: f64,
    /// Mean.
    pub(crate) mean: f64,
}

impl LatencySummary {
    /// Summarises a µs histogram.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean().round() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialisation_round_trips_and_merges_exactly() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=1000 {
            record(&mut a, v * 10);
        }
        for v in 1..=1000 {
            record(&mut b, 100_000 + v);
        }
        let a2 = from_base64(&to_base64(&a).unwrap()).unwrap();
        let b2 = from_base64(&to_base64(&b).unwrap()).unwrap();
        let mut merged = new_histogram();
        merge(&mut merged, &a2);
        merge(&mut merged, &b2);
        let mut direct = a.clone();
        direct.add(&b).unwrap();
        assert_eq!(LatencySummary::of(&merged), LatencySummary::of(&direct));
        assert_eq!(merged.len(), 2000);
        assert!(from_base64("not base64!").is_err());
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let mut h = new_histogram();
        record(&mut h, 2_000);
        record(&mut h, 0); // clamped to 1 µs
        record(&mut h, u64::MAX); // clamped to the maximum
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 3);
        assert!((s.p50 - 2.0).abs() < 0.01, "{s:?}");
        assert!(s.max >= 59_000.0, "{s:?}");
        assert_eq!(LatencySummary::of(&new_histogram()).count, 0);
    }
}
