//! Who did something (an [`Actor`], from the control socket's peer
//! credentials) and when, in Unix milliseconds.
//!
//! Owns only these two small facts, shared by the saved state (`state`)
//! and the request book (`requests`), so that neither depends on the other
//! for them (`state` saves the book's requests; the book needs actors).
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Who did something, from the control socket's peer credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Actor {
    pub uid: u32,
    pub user: Option<Name>,
    pub pid: Option<i32>,
}

impl Actor {
    pub(crate) fn from_uid(uid: u32, pid: Option<i32>) -> Self {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| Name::from(u.name));
        Self { uid, user, pid }
    }

    /// The agent itself (expiry, reload).
    pub(crate) fn agent() -> Self {
        Self {
            uid: nix::unistd::getuid().as_raw(),
            user: Some("portcullis-agent".into()),
            pid: Some(std::process::id() as i32),
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
