//! Many map entries per system call: BPF_MAP_LOOKUP_BATCH and
//! BPF_MAP_UPDATE_BATCH through the raw bpf(2) syscall (aya 0.14 has
//! neither). A kernel or map type without them answers EINVAL or
//! ENOTSUPP; callers then do what they did before, one entry per call
//! ([`Batch::Unsupported`] says so, nothing was written).
//!
//! Kernel: batch operations on hash and array maps since Linux 5.6.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's own "operation not supported" (not in libc: ENOTSUPP).
const ENOTSUPP: i32 = 524;

/// Entries per call: large enough that a million entries take a few hundred
/// calls, small enough for the kernel's temporary copy.
pub(super) const CHUNK: usize = 4096;

/// The `batch` member of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live, initialized bpf_attr prefix of the size
    // passed; its pointer fields name buffers the callers keep alive and
    // size for `count` entries (and a batch token of at least key size).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr as *mut libc::c_void,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an error means "this kernel or map has no batch operations".
pub(super) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
    )
}

/// What a batch operation did.
#[derive(Debug)]
pub(super) enum Batch<T> {
    Done(T),
    /// The kernel has no batch operation for this map; nothing was done.
    Unsupported,
}

/// Every (key, value) of the map behind `fd`, `CHUNK` at a time
/// (BPF_MAP_LOOKUP_BATCH). `K` and `V` must be the map's key and value
/// types, plain data without padding the kernel would not fill.
pub(super) fn lookup_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
) -> io::Result<Batch<Vec<(K, V)>>> {
    let mut out = Vec::new();
    // SAFETY: aya::Pod types are plain data for which all-zero bytes are a
    // valid value.
    let (zk, zv): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut keys = vec![zk; CHUNK];
    let mut values = vec![zv; CHUNK];
    // The batch token: a hash bucket or an array index, at most key size.
    let mut token_in = [0u64; 8];
    let mut token_out = [0u64; 8];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let r = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        match r {
            Ok(()) => {}
            // The end of the map: `count` holds the last entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                return Ok(Batch::Done(out));
            }
            Err(e) if first && unsupported(&e) => return Ok(Batch::Unsupported),
            Err(e) => return Err(e),
        }
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        token_in = token_out;
        first = false;
    }
}

/// Writes every (key, value) into the map behind `fd`, `CHUNK` at a time
/// (BPF_MAP_UPDATE_BATCH with BPF_ANY). On an error the entries before the
/// failing one are written: `Err((written, error))`.
pub(super) fn update<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<Batch<()>, (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(()) => done += n,
            // A kernel without the command, or a map without the operation,
            // leaves `count` as it was; one that refused the first entry
            // says 0 were written. Either way nothing was written.
            Err(e)
                if done == 0
                    && unsupported(&e)
                    && (attr.count == 0 || attr.count as usize == n) =>
            {
                return Ok(Batch::Unsupported)
            }
            // `count` is how many of this chunk were written.
            Err(e) => return Err((done + (attr.count as usize).min(n - 1), e)),
        }
    }
    Ok(Batch::Done(()))
}

/// Writes `entries` through `batch` when it can, else one at a time
/// through `single`, stopping at the first failure. The fallback is taken
/// only when the batch call did nothing ([`Batch::Unsupported`]).
pub(super) fn put_all<K: Copy, V: Copy, E>(
    entries: &[(K, V)],
    batch: impl FnOnce(&[K], &[V]) -> Result<Batch<()>, (usize, E)>,
    mut single: impl FnMut(&K, &V) -> Result<(), E>,
) -> Result<(), E> {
    let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
    match batch(&keys, &values) {
        Ok(Batch::Done(())) => Ok(()),
        Err((_, e)) => Err(e),
        Ok(Batch::Unsupported) => entries.iter().try_for_each(|(k, v)| single(k, v)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A batch call that the "kernel" does not know: the fallback writes
    /// every entry, one at a time, in order.
    #[test]
    fn an_unsupported_batch_falls_back_to_single_writes() {
        let entries: Vec<(u32, u64)> = (0..10).map(|i| (i, u64::from(i) * 7)).collect();
        let mut map = BTreeMap::new();
        let mut calls = 0;
        put_all(
            &entries,
            |_, _| Ok::<_, (usize, io::Error)>(Batch::Unsupported),
            |k, v| {
                calls += 1;
                map.insert(*k, *v);
                Ok::<(), io::Error>(())
            },
        )
        .unwrap();
        assert_eq!(calls, 10);
        assert_eq!(map, entries.iter().copied().collect());
    }

    /// A batch that worked: no single writes.
    #[test]
    fn a_batch_that_worked_writes_nothing_more() {
        let entries = [(1u32, 2u64), (3, 4)];
        let mut seen = Vec::new();
        put_all(
            &entries,
            |k, v| {
                seen.extend(k.iter().copied().zip(v.iter().copied()));
                Ok::<_, (usize, io::Error)>(Batch::Done(()))
            },
            |_, _| -> Result<(), io::Error> { panic!("no single write after a batch") },
        )
        .unwrap();
        assert_eq!(seen, entries);
    }

    /// A batch that failed part-way is a failure, not a reason to retry
    /// one at a time (the caller rolls back).
    #[test]
    fn a_failed_batch_is_not_retried_singly() {
        let entries = [(1u32, 2u64), (3, 4)];
        let r = put_all(
            &entries,
            |_, _| Err((1, io::Error::from_raw_os_error(libc::E2BIG))),
            |_, _| -> Result<(), io::Error> { panic!("no single write after a failed batch") },
        );
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::E2BIG));
    }

    #[test]
    fn the_kernels_no_batch_answers_are_unsupported() {
        for errno in [libc::EINVAL, ENOTSUPP, libc::EOPNOTSUPP] {
            assert!(unsupported(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOSPC, libc::E2BIG, libc::EPERM, libc::ENOENT] {
            assert!(!unsupported(&io::Error::from_raw_os_error(errno)));
        }
    }
}
