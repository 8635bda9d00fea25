//! Table 2's floor rows: the connection rate with EMPTY programs at the
//! agent's hooks and no agent running, beside the same no-filter runs as
//! every other row. On loopback: connect4, cgroup_skb egress and ingress
//! linked to the filtered cgroup (client and server are both in it, so the
//! server's packets pay too); on the veth: tcx ingress on the filtered
//! pair's host end. What is left between a floor row and Portcullis' row
//! is what the agent's programs and their side effects (socket storage,
//! maps) add; the kernel's run-time statistics of one extra run each split
//! that into time inside the programs and the rest.
use anyhow::Result;

use super::{
    emptyprog::EmptySkb,
    measure::{allowed_uid, Bench, From},
    progstats,
    report::{ProgramCost, RateBlock},
    stats::median,
};

/// The floor rows and their programs' run times.
pub(super) struct Floor {
    pub rates: Vec<RateBlock>,
    pub costs: Vec<ProgramCost>,
}

/// Labels of the floor rows (report.rs finds them by these prefixes).
pub(super) const LOOPBACK_FLOOR: &str =
    "Empty programs (connect4 + cgroup_skb egress/ingress; attach-point floor)";
pub(super) const VETH_FLOOR: &str = "Empty program (tcx ingress; attach-point floor)";

impl Bench<'_> {
    /// Both floors; no agent may run meanwhile (its programs would be on
    /// the path too).
    pub(super) fn floors(&self) -> Result<Floor> {
        let uid = allowed_uid(self.plan.compare_at);
        let mut rates = Vec::new();
        let mut costs = Vec::new();

        self.log("floor: empty connect4 + cgroup_skb programs on the filtered cgroup");
        {
            let empty = EmptySkb::attach_all(&self.cgroups.filtered)?;
            let filtered = From::Cgroup(&self.cgroups.filtered, uid);
            let (b, f) = self.alternate(
                || self.rate(From::Cgroup(&self.cgroups.plain, uid)),
                || self.rate(filtered),
            )?;
            costs.push(self.empty_cost(&empty, filtered, "loopback, empty programs", &b)?);
            rates.push(RateBlock::new("loopback", LOOPBACK_FLOOR, 0, b, f));
        }

        self.log("floor: empty tcx ingress program on the filtered veth");
        {
            let empty = EmptySkb::attach_tcx(&self.filtered_ns.host_if)?;
            let filtered = From::Netns(self.filtered_ns);
            let (b, f) = self.alternate(
                || self.rate(From::Netns(self.plain_ns)),
                || self.rate(filtered),
            )?;
            costs.push(self.empty_cost(&empty, filtered, "veth, empty program", &b)?);
            rates.push(RateBlock::new("veth", VETH_FLOOR, 0, b, f));
        }
        Ok(Floor { rates, costs })
    }

    /// One extra run with the run-time statistics on: what each empty
    /// program cost per connection.
    fn empty_cost(
        &self,
        empty: &EmptySkb,
        from: From,
        path: &str,
        baseline: &[f64],
    ) -> Result<ProgramCost> {
        let stats = progstats::StatsOn::enable()?;
        let ids = empty.ids();
        let before: Vec<(u64, u64)> = ids
            .iter()
            .map(|&(_, id)| progstats::by_id(id))
            .collect::<Result<_>>()?;
        let (connects, _) = self.client_run(from)?;
        let after: Vec<(u64, u64)> = ids
            .iter()
            .map(|&(_, id)| progstats::by_id(id))
            .collect::<Result<_>>()?;
        drop(stats);
        let programs = ids
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(&(hook, _), (&(t0, c0), &(t1, c1)))| (format!("empty {hook}"), c1 - c0, t1 - t0))
            .collect();
        Ok(ProgramCost {
            path: path.into(),
            connects,
            programs,
            baseline_per_s: median(baseline).unwrap_or(f64::NAN),
        })
    }
}
