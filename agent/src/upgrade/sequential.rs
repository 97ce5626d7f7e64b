//! Wald's sequential probability ratio test on a share: is the share of "bad" requests (5xx, or
//! slower than a line) at most `p0`, or at least `p1`? Looked at again and again as requests
//! come in, it keeps its error rates (about `alpha` false alarms, `beta` misses) however often
//! it is asked, where a fixed line checked four times a second raises a false alarm on the
//! first unlucky look. No crate offers this on counts (it is a few lines of arithmetic), so it
//! is here, with its error rates measured by simulation in the tests below.

/// What the counts so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The share is at most `p0`: fine.
    Fine,
    /// The share is at least `p1`: a regression.
    Bad,
    /// Not yet either way: more requests are needed.
    Undecided,
}

/// A test of `p0` (fine) against `p1` (bad), with its error rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sprt {
    pub p0: f64,
    pub p1: f64,
    /// The chance of calling a fine release bad.
    pub alpha: f64,
    /// The chance of calling a bad release fine.
    pub beta: f64,
}

impl Sprt {
    /// A false alarm is the costlier error (a rollback of a good release, every time it
    /// happens); a miss still meets the fixed line at the end of the watch.
    pub const ALPHA: f64 = 0.01;
    pub const BETA: f64 = 0.05;

    pub fn new(p0: f64, p1: f64) -> Sprt {
        Sprt {
            p0,
            p1,
            alpha: Sprt::ALPHA,
            beta: Sprt::BETA,
        }
    }

    /// `bad` of `n` requests were bad.
    pub fn decide(&self, bad: u64, n: u64) -> Decision {
        let bad = bad.min(n);
        // Degenerate lines: a share of 0 tolerates nothing, one of 1 flags nothing.
        if self.p1 >= 1.0 {
            return Decision::Fine;
        }
        if self.p0 <= 0.0 {
            return if bad > 0 {
                Decision::Bad
            } else {
                Decision::Undecided
            };
        }
        let good = (n - bad) as f64;
        let llr =
            bad as f64 * (self.p1 / self.p0).ln() + good * ((1.0 - self.p1) / (1.0 - self.p0)).ln();
        if llr >= ((1.0 - self.beta) / self.alpha).ln() {
            Decision::Bad
        } else if llr <= (self.beta / (1.0 - self.alpha)).ln() {
            Decision::Fine
        } else {
            Decision::Undecided
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so that the error rates below are the same
    /// on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Runs the test on requests bad with probability `share`, looking after every `batch`
    /// (as the watch does, four times a second), until it decides or `max` requests.
    fn run(t: &Sprt, share: f64, batch: u64, max: u64, rng: &mut Rng) -> (Decision, u64) {
        let (mut bad, mut n) = (0, 0);
        while n < max {
            for _ in 0..batch {
                n += 1;
                if rng.next() < share {
                    bad += 1;
                }
            }
            match t.decide(bad, n) {
                Decision::Undecided => {}
                d => return (d, n),
            }
        }
        (Decision::Undecided, n)
    }

    #[test]
    fn its_error_rates_hold_under_repeated_looks() {
        let t = Sprt::new(0.0025, 0.01);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let trials = 2000;
        // A release as good as the line allows (p0): false alarms stay near alpha.
        let alarms = (0..trials)
            .filter(|_| run(&t, 0.0025, 20, 100_000, &mut rng).0 == Decision::Bad)
            .count();
        assert!(alarms as f64 / trials as f64 <= 0.02, "{alarms} alarms");
        // A release with 5 % errors is caught every time, within a few hundred requests.
        let mut worst = 0;
        for _ in 0..trials {
            let (d, n) = run(&t, 0.05, 20, 100_000, &mut rng);
            assert_eq!(d, Decision::Bad);
            worst = worst.max(n);
        }
        assert!(worst <= 400, "caught only after {worst} requests");
        // A fine release is passed, not held for ever.
        let (d, n) = run(&t, 0.0, 20, 100_000, &mut rng);
        assert_eq!((d, n), (Decision::Fine, 400));
    }

    #[test]
    fn the_fixed_line_looked_at_repeatedly_cries_wolf_where_the_test_does_not() {
        // The judge before this one: fail at the first look over 1 %, from 100 requests on.
        let mut rng = Rng(7);
        let trials = 1000;
        let share = 0.0025;
        let (mut fixed, mut sequential) = (0, 0);
        let t = Sprt::new(0.0025, 0.01);
        for _ in 0..trials {
            let (mut bad, mut n) = (0u64, 0u64);
            let mut flagged = false;
            let mut decided = Decision::Undecided;
            while n < 2000 {
                for _ in 0..20 {
                    n += 1;
                    bad += u64::from(rng.next() < share);
                }
                flagged |= n >= 100 && bad as f64 / n as f64 > 0.01;
                if decided == Decision::Undecided {
                    decided = t.decide(bad, n);
                }
            }
            fixed += usize::from(flagged);
            sequential += usize::from(decided == Decision::Bad);
        }
        assert!(
            fixed > 2 * sequential,
            "fixed {fixed}, sequential {sequential}"
        );
    }

    #[test]
    fn degenerate_lines() {
        assert_eq!(Sprt::new(0.0, 0.0).decide(1, 5), Decision::Bad);
        assert_eq!(Sprt::new(0.0, 0.0).decide(0, 5), Decision::Undecided);
        assert_eq!(Sprt::new(0.5, 1.0).decide(5, 5), Decision::Fine);
        // More bad than requests (counters read apart) is read as all bad.
        assert_eq!(Sprt::new(0.01, 0.04).decide(9, 5), Decision::Bad);
    }
}
