//! The one reader of BPF ring buffers: a `RingBuf` whose records are `T`
//! (a plain-data type of `agent-common`) becomes a source of `T` values,
//! waited on either from a thread of its own (`wait`, for the deny log,
//! which must never cost the tokio workers) or from tokio (`readable`, for
//! the kill requests). Every ring is read through here, so the one copy
//! out of kernel memory (and its `unsafe`) is written once.
//!
//! Kernel: BPF ring buffers (Linux 5.8).
use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    Pod,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A ring buffer whose records are `T`s.
pub(crate) struct Ring<T: Pod> {
    ring: RingBuf<MapData>,
    _records: PhantomData<fn() -> T>,
}

/// Copies a `T` out of a ring-buffer record; `None` for a short record.
pub(super) fn record<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<T>() bytes, and T is plain
    // old data (aya::Pod): every bit pattern is a valid T. read_unaligned
    // because ring-buffer records are only 8-byte aligned by convention.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl<T: Pod> Ring<T> {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            _records: PhantomData,
        }
    }

    /// Hands at most `max` records to `each` (short records are skipped,
    /// and counted); returns how many records were consumed. Never blocks.
    pub(crate) fn drain(&mut self, max: usize, mut each: impl FnMut(T)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            let value = record::<T>(&item);
            drop(item);
            n += 1;
            match value {
                Some(v) => each(v),
                None => {
                    tracing::debug!(len = size_of::<T>(), "short ring record skipped")
                }
            }
        }
        n
    }

    /// Blocks this thread until a record may be there or `timeout` passed.
    /// An interrupted wait is a normal return.
    pub(crate) fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// For tokio: the ring registered with the reactor, to await records.
    pub(crate) fn into_async(self) -> io::Result<AsyncRing<T>> {
        // SAFETY: the ring buffer owns its descriptor, which stays open and
        // the same for as long as the AsyncFd holds it (it moves in here and
        // `as_raw_fd` always returns the ring's one descriptor).
        let fd = unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(io::Error::from)?;
        Ok(AsyncRing { fd })
    }
}

impl<T: Pod> AsFd for Ring<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl<T: Pod> AsRawFd for Ring<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// A [`Ring`] read from tokio.
pub(crate) struct AsyncRing<T: Pod> {
    fd: tokio::io::unix::AsyncFd<Ring<T>>,
}

impl<T: Pod> AsyncRing<T> {
    /// Waits until records are there, then hands every record there now to
    /// `each`; returns how many were consumed (0 after a spurious wake-up).
    pub(crate) async fn next_batch(&mut self, each: impl FnMut(T)) -> io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let n = guard.get_inner_mut().drain(usize::MAX, each);
        guard.clear_ready();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    struct Rec {
        a: u64,
        b: u32,
        c: u32,
    }
    // SAFETY: repr(C), integers only, no padding.
    unsafe impl Pod for Rec {}

    #[test]
    fn records_copy_out_of_unaligned_bytes_and_short_ones_are_refused() {
        let r = Rec { a: 7, b: 8, c: 9 };
        let mut bytes = vec![0u8; 1];
        bytes.extend_from_slice(&r.a.to_ne_bytes());
        bytes.extend_from_slice(&r.b.to_ne_bytes());
        bytes.extend_from_slice(&r.c.to_ne_bytes());
        // Offset 1: not aligned for a u64.
        assert_eq!(record::<Rec>(&bytes[1..]), Some(r));
        assert_eq!(record::<Rec>(&bytes[1..16]), None);
        // A longer record (the kernel rounds up) still reads its prefix.
        bytes.extend_from_slice(&[0xff; 8]);
        assert_eq!(record::<Rec>(&bytes[1..]), Some(r));
    }
}
