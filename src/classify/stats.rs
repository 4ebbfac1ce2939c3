//! Exact (Clopper-Pearson) binomial confidence intervals.
//!
//! The blast percentage of a 100-cell count is a binomial proportion with a wide
//! uncertainty; the exact interval is what haematology references quote, and it
//! stays valid at 0 and n where the normal approximation fails.

/// Two-sided Clopper-Pearson interval for `k` successes out of `n`, as
/// fractions in [0, 1]. `confidence` is e.g. 0.95. `n == 0` gives (0, 1).
pub fn clopper_pearson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    assert!(k <= n, "k = {k} > n = {n}");
    if n == 0 {
        return (0.0, 1.0);
    }
    let alpha = 1.0 - confidence;
    let (k, nf) = (k as f64, n as f64);
    let lo = if k == 0.0 { 0.0 } else { beta_quantile(alpha / 2.0, k, nf - k + 1.0) };
    let hi = if k == nf { 1.0 } else { beta_quantile(1.0 - alpha / 2.0, k + 1.0, nf - k) };
    (lo, hi)
}

/// Quantile of the Beta(a, b) distribution by bisection on the regularised
/// incomplete beta function (monotone in x, so bisection cannot fail).
pub fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if regularized_incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// I_x(a, b), by the continued fraction of Numerical Recipes (Lentz's method),
/// using the symmetry relation where the fraction converges slowly.
pub fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut acc = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        acc += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + acc.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn known_intervals() {
        // Reference values: scipy.stats.beta.ppf (the textbook definition).
        // The check: 20 blasts of 100 -> 12.7%-29.2%.
        let (lo, hi) = clopper_pearson(20, 100, 0.95);
        assert!(close(lo, 0.126656, 1e-6) && close(hi, 0.291843, 1e-6), "{lo} {hi}");

        let (lo, hi) = clopper_pearson(0, 100, 0.95);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 0.036217, 1e-5), "{hi}");

        let (lo, hi) = clopper_pearson(5, 10, 0.95);
        assert!(close(lo, 0.187086, 1e-5) && close(hi, 0.812914, 1e-5), "{lo} {hi}");

        let (lo, hi) = clopper_pearson(200, 200, 0.95);
        assert!(close(lo, 0.981725, 1e-5) && hi == 1.0, "{lo}");
        let (lo, hi) = clopper_pearson(1, 400, 0.95);
        assert!(close(lo, 6.32925e-5, 1e-9) && close(hi, 0.0138498, 1e-7), "{lo} {hi}");
        assert_eq!(clopper_pearson(0, 0, 0.95), (0.0, 1.0));
    }

    #[test]
    fn gamma_and_beta_identities() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-12));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12));
        // I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a).
        assert!(close(regularized_incomplete_beta(0.3, 1.0, 1.0), 0.3, 1e-12));
        let v = regularized_incomplete_beta(0.4, 3.0, 7.0);
        assert!(close(v, 1.0 - regularized_incomplete_beta(0.6, 7.0, 3.0), 1e-12));
    }

    #[test]
    fn interval_contains_the_estimate_and_narrows_with_n() {
        for n in [1u64, 7, 100, 200, 400] {
            for k in 0..=n.min(40) {
                let (lo, hi) = clopper_pearson(k, n, 0.95);
                let p = k as f64 / n as f64;
                assert!(lo <= p + 1e-12 && p <= hi + 1e-12 && lo >= 0.0 && hi <= 1.0, "k={k} n={n}");
            }
        }
        let w100 = {
            let (l, h) = clopper_pearson(20, 100, 0.95);
            h - l
        };
        let w400 = {
            let (l, h) = clopper_pearson(80, 400, 0.95);
            h - l
        };
        assert!(w400 < w100);
    }
}
