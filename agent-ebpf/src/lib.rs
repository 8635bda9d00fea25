//! Exists so that `agent` can name this crate as a build dependency (cargo
//! then rebuilds the agent when the programs change). The programs are the
//! `agent` binary target, built for BPF by aya-build.
#![no_std]
