//! `portcullis bench-journal` (hidden; feature `bench`, run by `cargo
//! xtask bench --only scale`): writes an agent state directory whose
//! journal holds N live grants, through the agent's own [`Journal`], so
//! the bench measures a restart with a million journaled grants without
//! making them one at a time over the socket (hours), and always in the
//! journal format this build reads.
//!
//! Each grant is `uid:FIRST+i` on one segment for `--ttl-secs`, made by
//! root with a reason, as `portcullis grant` would journal it. Owns
//! nothing else: starting the agent and measuring are the bench's.
use std::{path::PathBuf, time::SystemTime};

use anyhow::{bail, Context};
use clap::Args;

use crate::{
    actor::{unix_ms, Actor},
    clock,
    identity::Identity,
    journal::{Journal, Memory},
    state::{self, Grant},
};

#[derive(Args, Debug)]
pub(crate) struct JournalArgs {
    /// The agent state directory to create (must not hold a journal yet).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// How many grants.
    #[arg(long)]
    pub grants: u32,
    /// Their segment.
    #[arg(long)]
    pub segment: String,
    /// The uid of the first grant; the others follow.
    #[arg(long, default_value_t = 100_000)]
    pub first_uid: u32,
    /// Each grant's time to live from now, in seconds.
    #[arg(long, default_value_t = 7200)]
    pub ttl_secs: u64,
}

pub(crate) fn main(args: JournalArgs) -> std::process::ExitCode {
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis bench-journal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &JournalArgs) -> anyhow::Result<()> {
    for f in [crate::journal::SNAP_FILE, crate::journal::LOG_FILE] {
        if args.state_dir.join(f).exists() {
            bail!("{} already holds a journal", args.state_dir.display());
        }
    }
    let (mut journal, _) = Journal::open(&args.state_dir)
        .with_context(|| format!("opening {}", args.state_dir.display()))?;
    let now = SystemTime::now();
    let ttl = std::time::Duration::from_secs(args.ttl_secs);
    let boot_id = state::boot_id();
    let deadline = clock::boot_ns().saturating_add(ttl.as_nanos() as u64);
    let actor = Actor {
        uid: 0,
        user: Some("root".into()),
        pid: Some(std::process::id() as i32),
    };
    let mut memory = Memory {
        next_id: u64::from(args.grants) + 1,
        ..Memory::default()
    };
    for i in 0..args.grants {
        let id = u64::from(i) + 1;
        let grant = Grant {
            id,
            segment: args.segment.clone(),
            identity: Identity::Uid(args.first_uid.saturating_add(i)),
            created_unix_ms: unix_ms(now),
            expires_unix_ms: unix_ms(now + ttl),
            expires_boot_ns: deadline,
            boot_id: boot_id.clone(),
            actor: actor.clone(),
            reason: Some("bench".into()),
            request_id: None,
            fleet: None,
        };
        memory.grants.insert(id, grant);
    }
    journal.compact(&memory)?;
    Ok(())
}
