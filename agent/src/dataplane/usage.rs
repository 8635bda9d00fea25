//! The usage map (`PC_USAGE`, per CPU): read whole, one entry, per
//! segment on a descriptor of its own (the metrics endpoint's), and the
//! deletion of entries whose grant entry is gone.
use std::collections::BTreeMap;

use agent_common::{map_names, GrantKey, Usage};
use aya::maps::{MapError, PerCpuValues};

use super::{map_err, maps::ignore_missing, Dataplane, Result, UsageReader};
use crate::usage::Totals;

fn total(per_cpu: &PerCpuValues<Usage>) -> Totals {
    Totals::of(per_cpu.iter().copied())
}

impl Dataplane {
    /// Every usage entry, its per-CPU values summed. Entries deleted while
    /// the walk runs are skipped.
    pub(crate) fn read_usage(&self) -> Result<Vec<(GrantKey, Totals)>> {
        let mut out = Vec::new();
        // A walk restarts when its key is deleted under it: bounded.
        for entry in self.usage.iter().take(self.max_grants as usize * 2) {
            match entry {
                Ok((k, per_cpu)) => out.push((k, total(&per_cpu))),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::USAGE, "read")(e)),
            }
        }
        Ok(out)
    }

    /// One entry's use (`None`: never used since it was made).
    pub(crate) fn usage(&self, key: &GrantKey) -> Result<Option<Totals>> {
        match self.usage.get(key, 0) {
            Ok(per_cpu) => Ok(Some(total(&per_cpu))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::USAGE, "read")(e)),
        }
    }

    /// Forgets the use of entries no longer in the grant map.
    pub(crate) fn forget_usage(&mut self, keys: &[GrantKey]) -> Result<()> {
        keys.iter().try_for_each(|k| {
            ignore_missing(self.usage.remove(k)).map_err(map_err(map_names::USAGE, "delete"))
        })
    }

    /// A reader of admitted connections per segment id, on its own
    /// descriptor of the pinned usage map: needs neither `self` nor the
    /// agent's lock. A failed walk reads as nothing.
    pub(crate) fn usage_reader(&self) -> Result<UsageReader> {
        use aya::maps::{Map, MapData, PerCpuHashMap};
        let path = self.pin_dir.join("maps").join(map_names::USAGE);
        let open = || map_err(map_names::USAGE, "open");
        let data = MapData::from_pin(&path).map_err(open())?;
        let map: PerCpuHashMap<MapData, GrantKey, Usage> =
            PerCpuHashMap::try_from(Map::from_map_data(data).map_err(open())?).map_err(open())?;
        let bound = self.max_grants as usize * 2;
        Ok(Box::new(move || {
            let mut by_segment = BTreeMap::new();
            for (k, per_cpu) in map.iter().take(bound).filter_map(|e| e.ok()) {
                let sum: &mut u64 = by_segment.entry(k.segment).or_default();
                *sum = sum.saturating_add(total(&per_cpu).connections);
            }
            by_segment
        }))
    }
}
