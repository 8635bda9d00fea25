//! `discover`: the agent's part — who may ask (root only: the answer names
//! every listener and client on the host), and the join of the kernel's
//! sightings with the segments in force. The view itself is
//! `crate::discover`'s.
use super::*;
use crate::discover::{self, Protection, SegmentPorts};

impl Agent {
    /// Whether the hooks feed the discovery map (the `discovery` setting).
    pub(crate) fn set_discovery(&mut self, on: bool) {
        self.discovery_on = on;
    }

    /// Where the metrics endpoint listens, if it does (for `status`).
    pub(crate) fn set_metrics_addr(&mut self, addr: Option<std::net::SocketAddr>) {
        self.metrics_addr = addr;
    }

    /// `portcullis discover`: listeners, and who the kernel saw reach them.
    pub(crate) fn discover(&self, cred: &PeerCred) -> Result<Reply, Refusal> {
        if cred.uid != 0 {
            return Err(refuse(
                RefusalCode::Forbidden,
                format!(
                    "uid {} may not run discover: it lists every listener and client on the host (root only)",
                    cred.uid
                ),
            ));
        }
        let sightings = self.kernel.read_discovery().map_err(|e| {
            refuse(
                RefusalCode::Internal,
                format!("reading the kernel's discovery map failed: {e}"),
            )
        })?;
        let names: BTreeMap<u32, &str> = self
            .segment_ids
            .iter()
            .map(|(n, id)| (*id, n.as_str()))
            .collect();
        let protection: Protection = self
            .ports
            .iter()
            .filter_map(|(&k, &entry)| {
                let id = agent_common::port_entry::segment(entry);
                let mode = if agent_common::port_entry::audit(entry) {
                    "audit"
                } else {
                    "enforce"
                };
                Some((k, ((*names.get(&id)?).to_owned(), mode.to_owned())))
            })
            .collect();
        let segments = self
            .policy
            .segments
            .values()
            .map(|s| SegmentPorts {
                name: s.name.clone(),
                ports: s.ports.iter().map(ToString::to_string).collect(),
                mode: self.mode_of(s).name().to_owned(),
            })
            .collect();
        Ok(Reply::Discovered(Box::new(discover::build(
            sightings,
            &protection,
            segments,
            &self.resolver.hierarchy,
            self.discovery_on,
        ))))
    }
}
