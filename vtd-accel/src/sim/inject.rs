//! Failure injection: the simulator's knobs for failing backend calls on purpose. An injected
//! failure is indistinguishable from the kernel's to the caller (the call, `EIO`, and for
//! `IOMMU_HWPT_INVALIDATE` the entries handled); only the simulator counts it
//! ([`SimStats::injected_failures`](super::SimStats::injected_failures)), so tests can check
//! that every failure was reported exactly once.

use std::collections::BTreeMap;

use vtd_tables::GuestRam;

use super::{EIO, SimHostIommu, SimState, err};
use crate::backend::{BackendError, BackendOp};

/// The backend calls failures can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimOp {
    /// `get_hw_info`.
    GetHwInfo,
    /// `alloc_hwpt`.
    AllocHwpt,
    /// `attach`.
    Attach,
    /// `detach`.
    Detach,
    /// `invalidate`.
    Invalidate,
    /// `destroy`.
    Destroy,
    /// `read_faults`.
    ReadFaults,
}

impl SimOp {
    /// Every op.
    pub const ALL: [SimOp; 7] = [
        SimOp::GetHwInfo,
        SimOp::AllocHwpt,
        SimOp::Attach,
        SimOp::Detach,
        SimOp::Invalidate,
        SimOp::Destroy,
        SimOp::ReadFaults,
    ];

    const fn backend_op(self) -> BackendOp {
        match self {
            Self::GetHwInfo => BackendOp::GetHwInfo,
            Self::AllocHwpt => BackendOp::AllocHwpt,
            Self::Attach => BackendOp::Attach,
            Self::Detach => BackendOp::Detach,
            Self::Invalidate => BackendOp::Invalidate,
            Self::Destroy => BackendOp::Destroy,
            Self::ReadFaults => BackendOp::ReadFaults,
        }
    }
}

#[derive(Default)]
pub(super) struct FailurePlan {
    next: BTreeMap<SimOp, u32>,
    always: BTreeMap<SimOp, bool>,
    /// The next invalidation handles at most this many entries, then fails.
    pub(super) partial_invalidate: Option<u32>,
}

impl<M: GuestRam + Send + Sync> SimHostIommu<M> {
    /// Makes the next `count` calls of `op` fail (after any already armed).
    pub fn fail_next(&self, op: SimOp, count: u32) {
        let mut st = self.lock();
        *st.plan.next.entry(op).or_default() += count;
    }

    /// Makes every call of `op` fail while `on`.
    pub fn fail_always(&self, op: SimOp, on: bool) {
        self.lock().plan.always.insert(op, on);
    }

    /// Makes the next invalidation handle at most `handled` entries (fewer than it was given)
    /// and fail, as the kernel reports through `entry_num`.
    pub fn fail_invalidate_partially(&self, handled: u32) {
        self.lock().plan.partial_invalidate = Some(handled);
    }

    /// Disarms every injected failure.
    pub fn clear_failures(&self) {
        self.lock().plan = FailurePlan::default();
    }

    /// Counts a call of `op` and fails it if a failure is armed.
    pub(super) fn enter(&self, st: &mut SimState, op: SimOp) -> Result<(), BackendError> {
        *st.stats.calls.entry(op).or_default() += 1;
        let always = st.plan.always.get(&op).copied().unwrap_or(false);
        let next = st.plan.next.entry(op).or_default();
        if always || *next > 0 {
            if !always {
                *next -= 1;
            }
            st.stats.injected_failures += 1;
            let e = err(op.backend_op(), EIO, "failure injected by the simulator");
            return Err(if op == SimOp::Invalidate {
                e.with_handled(0)
            } else {
                e
            });
        }
        Ok(())
    }
}
