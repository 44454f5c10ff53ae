//! Small index kernels over cluster labels (B, N), shared by TETC and ClusCa: the size of every
//! cluster (which the host reads back to draw its random numbers exactly as the reference does)
//! and the member of a given rank in token order (ClusCa's random member per cluster).

use crate::global::{Global, GlobalMut};
use crate::tetc::NO_TOKEN;
use crate::thread::ThreadCtx;

/// `counts[b, c]` = number of tokens of batch row b labelled c.
///
/// Mapping: one thread per (batch row, cluster), a sequential scan of the row's labels (launch
/// with `tetc::per_item_dims(B, K)`).
pub fn cluster_counts<C: ThreadCtx>(
    ctx: &C,
    labels: Global<'_, u32>,
    counts: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    let slot = ctx.index_1d() as usize;
    let (n, k) = (tokens as usize, clusters as usize);
    if slot >= batch as usize * k {
        return;
    }
    let (b, c) = (slot / k, (slot % k) as u32);
    let mut count = 0u32;
    for i in 0..n {
        count += u32::from(ctx.load(labels, b * n + i) == c);
    }
    ctx.store(counts, slot, count);
}

/// `members[b, c]` = the token of rank `ranks[b, c]` (0 = first in token order) among the
/// members of cluster c of batch row b; token 0 where the rank is [`NO_TOKEN`] (a cluster
/// without a pick) or out of range, so that the result is always a valid token to gather.
///
/// Mapping: one thread per (batch row, cluster), a sequential scan (launch with
/// `tetc::per_item_dims(B, K)`).
pub fn cluster_members<C: ThreadCtx>(
    ctx: &C,
    labels: Global<'_, u32>,
    ranks: Global<'_, u32>,
    members: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    let slot = ctx.index_1d() as usize;
    let (n, k) = (tokens as usize, clusters as usize);
    if slot >= batch as usize * k {
        return;
    }
    let (b, c) = (slot / k, (slot % k) as u32);
    let rank = ctx.load(ranks, slot);
    let mut seen = 0u32;
    let mut chosen = 0u32;
    if rank != NO_TOKEN {
        for i in 0..n {
            if ctx.load(labels, b * n + i) == c {
                if seen == rank {
                    chosen = i as u32;
                    break;
                }
                seen += 1;
            }
        }
    }
    ctx.store(members, slot, chosen);
}
