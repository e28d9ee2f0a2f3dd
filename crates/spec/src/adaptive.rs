//! How many tokens to draft: speculation pays when the accepted tokens outweigh the
//! extra cost of verifying the draft, so the budget follows the acceptance.

/// Settings of [`AdaptiveBudget`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Largest draft (tokens per step, tree nodes below the root).
    pub max_budget: usize,
    /// Extra cost of verifying one draft token, as a fraction of a single-token step
    /// (on a CPU a batch of `1 + b` tokens costs about `1 + cost * b` steps). A budget
    /// `b` pays off when more than `cost * b` tokens are accepted per step.
    pub cost_per_token: f64,
    /// Weight of the newest step in the running mean of accepted tokens.
    pub smoothing: f64,
    /// Steps of plain decoding after the budget has dropped to 0, before drafting is
    /// tried again. Doubles (up to 4x) each time a probe fails straight away, and
    /// resets once drafting pays again.
    pub probe_after: usize,
    /// Never adapt: always offer `max_budget` (for measuring a drafter's raw acceptance).
    pub fixed: bool,
    /// The drafter stops by itself where it is unsure (a draft model's confidence
    /// rule), so the budget is only a cap: start at `max_budget`, and grow back when
    /// drafting pays and the drafter used at least half the budget, instead of when
    /// half the budget was accepted.
    pub self_limiting: bool,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            max_budget: 8,
            cost_per_token: 0.1,
            smoothing: 0.25,
            probe_after: 16,
            fixed: false,
            self_limiting: false,
        }
    }
}

impl AdaptiveConfig {
    /// One-line error for settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cost_per_token >= 0.0 && self.cost_per_token.is_finite()) {
            return Err(format!(
                "draft cost must be >= 0, got {}",
                self.cost_per_token
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(format!(
                "smoothing must be in (0, 1], got {}",
                self.smoothing
            ));
        }
        Ok(())
    }
}

/// The current draft budget and the acceptance history behind it.
///
/// Running means of the accepted (`m`) and drafted (`d`) tokens per drafting step
/// give the acceptance per drafted token `m / d`; each drafted token costs
/// `cost_per_token` of a step, so below that the draft loses time and the budget
/// halves (down to 0 = plain decoding, retried with a small budget after
/// `probe_after` steps, backing off while probes fail). When the draft pays and at
/// least half the budget is accepted, the budget doubles (up to `max_budget`). Steps
/// where the drafter proposed nothing are free and leave the means alone.
#[derive(Clone, Debug)]
pub struct AdaptiveBudget {
    config: AdaptiveConfig,
    budget: usize,
    /// Running mean of accepted tokens per drafting step.
    mean: f64,
    /// Running mean of drafted tokens per drafting step.
    drafted: f64,
    /// Plain steps left before the next probe (when the budget is 0).
    cooldown: usize,
    /// The current wait between probes (backs off while probes fail).
    probe_wait: usize,
}

impl AdaptiveBudget {
    /// Starts small (2 tokens, or the maximum when fixed or self-limiting): growing
    /// to the maximum takes two good steps, while a large first draft that fails
    /// costs a lot.
    pub fn new(config: AdaptiveConfig) -> AdaptiveBudget {
        let budget = if config.fixed || config.self_limiting {
            config.max_budget
        } else {
            config.max_budget.min(2)
        };
        AdaptiveBudget {
            mean: budget as f64 / 2.0,
            drafted: budget as f64,
            probe_wait: config.probe_after.max(1),
            config,
            budget,
            cooldown: 0,
        }
    }

    /// Replaces the break-even cost of one draft token (e.g. from a [`CostModel`]).
    pub fn set_cost_per_token(&mut self, cost: f64) {
        if cost.is_finite() && cost >= 0.0 {
            self.config.cost_per_token = cost;
        }
    }

    pub fn cost_per_token(&self) -> f64 {
        self.config.cost_per_token
    }

    /// Draft tokens to propose this step.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Running mean of accepted draft tokens per drafting step.
    pub fn mean_accepted(&self) -> f64 {
        self.mean
    }

    /// Records one step: `drafted` tokens were proposed and `accepted` kept.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        let c = self.config.clone();
        if c.fixed || c.max_budget == 0 {
            return;
        }
        if self.budget == 0 {
            self.cooldown = self.cooldown.saturating_sub(1);
            if self.cooldown == 0 {
                // A probe starts at break-even: one bad step ends it.
                let b = (c.max_budget / 4).max(1);
                self.set_budget(b);
                self.drafted = b as f64;
                self.mean = c.cost_per_token * b as f64;
            }
            return;
        }
        if drafted == 0 {
            return;
        }
        self.mean += c.smoothing * (accepted as f64 - self.mean);
        self.drafted += c.smoothing * (drafted as f64 - self.drafted);
        let pays = self.mean >= c.cost_per_token * self.drafted;
        if !pays {
            let b = self.budget / 2;
            self.set_budget(b);
            if b == 0 {
                self.cooldown = self.probe_wait;
                self.probe_wait = (self.probe_wait * 2).min(c.probe_after.max(1) * 4);
            }
        } else if self.budget < c.max_budget
            && (self.mean >= 0.5 * self.budget as f64
                || (c.self_limiting && self.drafted >= 0.5 * self.budget as f64))
        {
            self.set_budget((self.budget * 2).min(c.max_budget));
            self.probe_wait = c.probe_after.max(1);
        }
    }

    /// Changes the budget; the acceptance history carries over (an optimistic reset
    /// would buy a few losing steps at every change).
    fn set_budget(&mut self, b: usize) {
        self.budget = b;
    }
}

/// Measures what a draft token costs on this machine: running means of the time of a
/// single-token step and of the extra time per additional token of a larger batch.
/// On a CPU a batch is far from free (the matrix kernels are compute-bound beyond a
/// few rows), and the ratio differs between models and machines, so the adaptive
/// budget's break-even comes from here rather than from a constant.
#[derive(Clone, Debug, Default)]
pub struct CostModel {
    single: Option<f64>,
    extra: Option<f64>,
}

impl CostModel {
    /// Weight of the newest measurement.
    const SMOOTHING: f64 = 0.1;

    /// Records a forward pass over `n` tokens that took `secs`.
    pub fn record(&mut self, n: usize, secs: f64) {
        if n == 0 || secs.is_nan() || secs <= 0.0 {
            return;
        }
        let ema = |slot: &mut Option<f64>, x: f64| {
            *slot = Some(slot.map_or(x, |m| m + Self::SMOOTHING * (x - m)));
        };
        match (n, self.single) {
            (1, _) => ema(&mut self.single, secs),
            (_, Some(t1)) => ema(&mut self.extra, ((secs - t1) / (n - 1) as f64).max(0.0)),
            (_, None) => {}
        }
    }

    /// Whether a single-token step has been timed yet (the drafting loop takes one
    /// plain step early on so the ratio can be formed).
    pub fn has_single(&self) -> bool {
        self.single.is_some()
    }

    /// Extra cost of one draft token as a fraction of a single-token step, once both
    /// have been measured.
    pub fn cost_per_token(&self) -> Option<f64> {
        match (self.single, self.extra) {
            (Some(t1), Some(e)) if t1 > 0.0 => Some(e / t1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_model_measures_the_extra_cost_per_token() {
        let mut c = CostModel::default();
        c.record(5, 3.0);
        assert_eq!(c.cost_per_token(), None);
        c.record(1, 1.0);
        assert_eq!(c.cost_per_token(), None);
        c.record(5, 3.0);
        assert_eq!(c.cost_per_token(), Some(0.5));
        c.record(0, 1.0);
        c.record(3, f64::NAN);
        assert_eq!(c.cost_per_token(), Some(0.5));
    }

    #[test]
    fn shrinks_to_plain_decoding_when_nothing_is_accepted_and_probes_later() {
        let config = AdaptiveConfig {
            max_budget: 8,
            probe_after: 5,
            ..AdaptiveConfig::default()
        };
        let mut a = AdaptiveBudget::new(config);
        assert_eq!(a.budget(), 2, "starts small");
        let mut steps = 0;
        while a.budget() > 0 {
            a.record(a.budget(), 0);
            steps += 1;
            assert!(steps < 50, "never reached 0");
        }
        for _ in 0..4 {
            a.record(0, 0);
            assert_eq!(a.budget(), 0);
        }
        a.record(0, 0);
        assert_eq!(a.budget(), 2, "probes with a quarter of the maximum");
        // A probe that fails at once waits twice as long next time.
        while a.budget() > 0 {
            a.record(a.budget(), 0);
        }
        let mut plain = 0;
        while a.budget() == 0 {
            a.record(0, 0);
            plain += 1;
        }
        assert_eq!(plain, 10);
    }

    #[test]
    fn grows_back_when_drafts_are_accepted() {
        let mut a = AdaptiveBudget::new(AdaptiveConfig::default());
        a.set_budget(1);
        for _ in 0..20 {
            let b = a.budget();
            a.record(b, b);
        }
        assert_eq!(a.budget(), 8);
        // Steps without a draft change nothing.
        a.record(0, 0);
        assert_eq!(a.budget(), 8);
    }

    #[test]
    fn fixed_never_changes() {
        let mut a = AdaptiveBudget::new(AdaptiveConfig {
            fixed: true,
            ..AdaptiveConfig::default()
        });
        for _ in 0..50 {
            a.record(8, 0);
        }
        assert_eq!(a.budget(), 8);
        assert!(AdaptiveConfig::default().validate().is_ok());
        let bad = AdaptiveConfig {
            smoothing: 0.0,
            ..AdaptiveConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn self_limiting_starts_at_the_cap_and_grows_on_use() {
        let config = AdaptiveConfig {
            self_limiting: true,
            cost_per_token: 0.3,
            ..AdaptiveConfig::default()
        };
        let mut a = AdaptiveBudget::new(config);
        assert_eq!(a.budget(), 8);
        // Drafting little and accepting none: shrinks to plain decoding.
        while a.budget() > 0 {
            a.record(1, 0);
        }
        a.set_budget(2);
        // Short drafts that pay and fill the budget: back to the cap.
        for _ in 0..10 {
            let b = a.budget();
            a.record(b, b / 2 + 1);
        }
        assert_eq!(a.budget(), 8);
    }
}
