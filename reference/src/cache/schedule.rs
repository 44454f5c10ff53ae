//! Which steps compute everything ("full") and which use the cache (docs/algorithms.md
//! section 4.1).
//!
//! The first `first_enhance` steps are full (DiT: 2, i.e. s = 49, 48 of DDIM-50; FLUX: 3); after
//! that a counter, reset at each full step, makes every `interval`-th step full. For S = 50 and
//! first_enhance 2 the full steps are {49, 48, 48-N, 48-2N, ...}: `2 + floor(48/N)` in all. The
//! rule is stated in sampling positions, so it is the same for DDIM's counting-down step index
//! and the flow sampler's counting-up one.

use crate::error::{Error, Result};

/// The dense-step rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub first_enhance: usize,
    pub interval: usize,
}

/// The running state of a [`Schedule`] during sampling: the counter and the step indices of the
/// full steps so far (`activated`).
#[derive(Clone, Debug)]
pub struct ScheduleState {
    schedule: Schedule,
    counter: usize,
    /// Sampler step indices of the full steps taken so far, oldest first.
    pub activated: Vec<i64>,
}

impl Schedule {
    pub fn new(first_enhance: usize, interval: usize) -> Result<Self> {
        if interval == 0 {
            return Err(Error::Cache("--interval must be at least 1".to_string()));
        }
        Ok(Self {
            first_enhance,
            interval,
        })
    }

    /// Full (true) or cached (false) for each sampling position of an S-step run.
    pub fn plan(&self, steps: usize) -> Vec<bool> {
        let mut state = ScheduleState::new(*self);
        (0..steps)
            .map(|position| state.next(position, position as i64))
            .collect()
    }
}

impl ScheduleState {
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            counter: 0,
            activated: Vec::new(),
        }
    }

    /// Decides the step at sampling `position` with sampler step index `index`; true = full.
    pub fn next(&mut self, position: usize, index: i64) -> bool {
        let full = position < self.schedule.first_enhance || self.counter + 1 == self.schedule.interval;
        if full {
            self.counter = 0;
            self.activated.push(index);
        } else {
            self.counter += 1;
        }
        full
    }

    /// The last full step's index.
    pub fn last_full(&self) -> Option<i64> {
        self.activated.last().copied()
    }

    /// `s_a - s_b` between the last two full steps (negative when counting down), the divisor of
    /// every finite-difference derivative the cache stores.
    pub fn full_step_gap(&self) -> Option<i64> {
        match self.activated[..] {
            [.., before, last] => Some(last - before),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_indices(interval: usize) -> Vec<i64> {
        let plan = Schedule::new(2, interval).unwrap().plan(50);
        // DDIM step index s = 49 - position.
        plan.iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .map(|(p, _)| 49 - p as i64)
            .collect()
    }

    #[test]
    fn interval_four_matches_the_vectors() {
        let mut expected = vec![49, 48];
        expected.extend((0..12).map(|i| 44 - 4 * i));
        assert_eq!(full_indices(4), expected);
    }

    #[test]
    fn full_step_count_is_two_plus_48_over_n() {
        for n in 1..=12 {
            assert_eq!(full_indices(n).len(), 2 + 48 / n, "interval {n}");
        }
    }

    #[test]
    fn gaps_are_minus_one_then_minus_n() {
        let mut state = ScheduleState::new(Schedule::new(2, 3).unwrap());
        let mut gaps = Vec::new();
        for position in 0..8 {
            if state.next(position, 49 - position as i64) {
                gaps.push(state.full_step_gap());
            }
        }
        assert_eq!(gaps, vec![None, Some(-1), Some(-3), Some(-3)]);
    }

    #[test]
    fn zero_interval_is_rejected() {
        assert!(Schedule::new(2, 0).unwrap_err().to_string().contains("--interval"));
    }
}
