//! Which priority gets the next free slot: smooth weighted round-robin (nginx's), kept
//! across pull rounds so the weights hold even when slots free one at a time. Pure: the
//! scheduler asks, pulls, and gives back the grants a priority could not use.

use crate::job::Priority;

/// Smooth weighted round-robin over the three priorities.
///
/// Each single-slot grant adds every eligible priority's weight to its credit, gives the
/// slot to the one with the most credit (ties: the higher priority) and takes the sum of
/// the eligible weights from it. With all three backlogged, after any number of grants
/// each priority's count is within 1 of its weighted share. A priority observed empty is
/// not eligible: its credit stays as it was, so it neither banks slots while idle nor
/// loses its place.
#[derive(Debug, Clone)]
pub struct Weighted {
    weights: [i64; 3],
    credit: [i64; 3],
}

/// Slots handed out by one [`Weighted::grant`], per priority (index = `Priority::index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub slots: [usize; 3],
    eligible: [bool; 3],
}

impl Weighted {
    /// Weights of high, normal, low; a zero weight counts as 1 (config refuses zero).
    pub fn new(weights: [u32; 3]) -> Weighted {
        Weighted {
            weights: weights.map(|w| i64::from(w.max(1))),
            credit: [0; 3],
        }
    }

    /// Share `k` slots, one at a time, among the priorities not marked `empty`. All slots
    /// go to the eligible ones (work-conserving); none are granted when all are empty.
    pub fn grant(&mut self, k: usize, empty: [bool; 3]) -> Grant {
        let eligible = empty.map(|e| !e);
        let mut slots = [0; 3];
        smooth_grant(&self.weights, &mut self.credit, &eligible, k, &mut slots);
        Grant { slots, eligible }
    }

    /// Undo `n` of `grant`'s slots for `p` (it could not use them), exactly as if they
    /// had never been granted.
    pub fn refund(&mut self, grant: &Grant, p: Priority, n: usize) {
        let n = n.min(grant.slots[p.index()]);
        smooth_refund(
            &self.weights,
            &mut self.credit,
            &grant.eligible,
            p.index(),
            n,
        );
    }
}

/// Smooth weighted round-robin over any number of entries (the priorities here, the
/// tenants of one priority in `super::fair`): share `k` slots one at a time among the
/// `eligible` entries, adding each one's grants to `slots`. All slots go to eligible
/// entries; none when no entry is eligible.
pub fn smooth_grant(
    weights: &[i64],
    credit: &mut [i64],
    eligible: &[bool],
    k: usize,
    slots: &mut [usize],
) {
    let n = weights.len();
    let total: i64 = (0..n).filter(|&i| eligible[i]).map(|i| weights[i]).sum();
    if total == 0 {
        return;
    }
    for _ in 0..k {
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|&i| eligible[i]) {
            credit[i] += weights[i];
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            credit[b] -= total;
            slots[b] += 1;
        }
    }
}

/// Undo `n` grants to entry `i` made by [`smooth_grant`] with `eligible`, exactly as if
/// they had never been made.
pub fn smooth_refund(weights: &[i64], credit: &mut [i64], eligible: &[bool], i: usize, n: usize) {
    let n = n as i64;
    let mut total = 0;
    for j in (0..weights.len()).filter(|&j| eligible[j]) {
        credit[j] -= n * weights[j];
        total += weights[j];
    }
    credit[i] += n * total;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE_EMPTY: [bool; 3] = [false; 3];

    /// Grants one slot at a time with all three backlogged; after every grant each
    /// priority's count is within 1 of its share.
    fn assert_shares_hold(weights: [u32; 3], n: usize) {
        let mut w = Weighted::new(weights);
        let sum: u32 = weights.iter().sum();
        let mut counts = [0usize; 3];
        for k in 1..=n {
            let g = w.grant(1, NONE_EMPTY);
            assert_eq!(g.slots.iter().sum::<usize>(), 1);
            for i in 0..3 {
                counts[i] += g.slots[i];
                let share = k as f64 * f64::from(weights[i]) / f64::from(sum);
                assert!(
                    (counts[i] as f64 - share).abs() < 1.0,
                    "weights {weights:?} after {k} grants: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn single_slot_grants_follow_the_weights() {
        for weights in [
            [8, 3, 1],
            [1, 1, 1],
            [4, 2, 1],
            [5, 3, 2],
            [100, 1, 1],
            [1, 1, 100],
            [7, 5, 3],
            [1, 5, 9],
        ] {
            assert_shares_hold(weights, 2_000);
        }
    }

    #[test]
    fn single_slot_grants_follow_random_weights() {
        for _ in 0..200 {
            let weights = [0; 3].map(|_: u32| rand::random_range(1..=50u32));
            assert_shares_hold(weights, 500);
        }
    }

    #[test]
    fn batches_and_single_slots_share_alike() {
        let mut w = Weighted::new([8, 3, 1]);
        assert_eq!(w.grant(12, NONE_EMPTY).slots, [8, 3, 1]);
        assert_eq!(w.grant(24, NONE_EMPTY).slots, [16, 6, 2]);
        let mut counts = [0; 3];
        for _ in 0..12 {
            let g = w.grant(1, NONE_EMPTY);
            (0..3).for_each(|i| counts[i] += g.slots[i]);
        }
        assert_eq!(counts, [8, 3, 1]);
    }

    #[test]
    fn empty_priorities_are_skipped_and_nothing_is_left_over() {
        let mut w = Weighted::new([8, 3, 1]);
        assert_eq!(w.grant(10, [true, false, false]).slots, [0, 8, 2]);
        assert_eq!(w.grant(5, [true, true, false]).slots, [0, 0, 5]);
        assert_eq!(w.grant(5, [true, true, true]).slots, [0, 0, 0]);
        assert_eq!(w.grant(0, NONE_EMPTY).slots, [0, 0, 0]);
    }

    #[test]
    fn a_refund_undoes_the_grant_exactly() {
        let mut w = Weighted::new([8, 3, 1]);
        w.grant(5, NONE_EMPTY);
        let before = w.clone();
        let g = w.grant(7, [false, false, true]);
        w.refund(&g, Priority::High, g.slots[0]);
        w.refund(&g, Priority::Normal, g.slots[1]);
        assert_eq!(w.credit, before.credit);
    }

    /// One free slot, the way a busy worker takes it: a priority with nothing waiting
    /// gives its grant back and is skipped for that slot. Returns who got the slot.
    fn take_one(w: &mut Weighted, low_has_work: bool) -> usize {
        let mut empty = NONE_EMPTY;
        loop {
            let g = w.grant(1, empty);
            let p = (0..3).find(|&i| g.slots[i] == 1).unwrap();
            if p == Priority::Low.index() && !low_has_work {
                w.refund(&g, Priority::Low, 1);
                empty[p] = true;
                continue;
            }
            return p;
        }
    }

    #[test]
    fn a_priority_that_comes_back_is_not_owed_the_slots_it_missed() {
        let mut w = Weighted::new([8, 3, 1]);
        let mut counts = [0usize; 3];
        for _ in 0..1_200 {
            counts[take_one(&mut w, false)] += 1;
        }
        assert_eq!(counts[2], 0);
        // High and normal shared low's slots 8:3.
        assert!((872..=874).contains(&counts[0]), "{counts:?}");
        let mut counts = [0usize; 3];
        for _ in 0..1_200 {
            counts[take_one(&mut w, true)] += 1;
        }
        assert!(
            (99..=101).contains(&counts[2]),
            "low after idling: {counts:?}"
        );
    }

    #[test]
    fn many_slots_at_once_do_not_starve_low() {
        let mut w = Weighted::new([8, 3, 1]);
        let g = w.grant(3, NONE_EMPTY);
        assert_eq!(g.slots, [2, 1, 0]);
        let mut low = 0;
        for _ in 0..4 {
            low += w.grant(3, NONE_EMPTY).slots[2];
        }
        assert_eq!(low, 1, "one slot in 12 goes to low, also in batches of 3");
    }
}
