//! Order statistics over repeated measurements: the bench reports medians
//! and high percentiles of several runs, never a single time.

/// The `q`-quantile (0.0..=1.0) of `samples` by the nearest-rank method:
/// the smallest sample with at least `q` of all samples at or below it.
/// `None` for no samples.
pub(crate) fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median; for an even count, the mean of the two middle samples.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// The median of integer samples.
pub(crate) fn median_u64(samples: &[u64]) -> Option<f64> {
    median(&samples.iter().map(|&s| s as f64).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_u64(&[10, 30, 20]), Some(20.0));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let s: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.99), Some(198.0));
        assert_eq!(quantile(&s, 0.5), Some(100.0));
        assert_eq!(quantile(&s, 1.0), Some(200.0));
        assert_eq!(quantile(&s, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
