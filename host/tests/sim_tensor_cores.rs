//! The simulator's models of the tensor-core and asynchronous-copy instructions: `mma.sync`
//! (TF32 m16n8k8, BF16 m16n8k16) against the plain product of the PTX ISA fragment tables,
//! `ldmatrix` (x1, x2, x4, x4.trans) against its definition, `cp.async` with its groups, and the
//! dynamic shared memory limit. A wrong fragment index, a missing `cp.async.wait_group` or a
//! missing barrier after it must be caught.

mod support;

use resca_gpu_kernels::{Dim3, Global, GlobalMut, LaunchDims, ThreadCtx};
use resca_host::sim::mma::{bf16, bf16_to_f32, tf32};
use resca_host::sim::{Access, Coord, MAX_SHARED_BYTES, SimError, run_grid};
use support::kernels::tensor_core::{Fragments, ldmatrix_mma_tf32_tile, mma_bf16_tile, mma_tf32_tile};
use support::values;

fn warp(shared_bytes: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(1),
        block: Dim3::x(32),
        shared_bytes,
    }
}

/// `c + a w^T` over k, products and sum in f64, one rounding: the model the simulator documents.
fn reference(a: &[f64], w: &[f64], c: &[f32], k: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; 16 * 8];
    for row in 0..16 {
        for col in 0..8 {
            let mut sum = c[row * 8 + col] as f64;
            for kk in 0..k {
                sum += a[row * k + kk] * w[col * k + kk];
            }
            d[row * 8 + col] = sum as f32;
        }
    }
    d
}

fn run_tf32(fragments: Fragments) -> (Vec<f32>, Vec<f32>) {
    let (a, w, c) = (values(1, 16 * 8), values(2, 8 * 8), values(3, 16 * 8));
    let mut d = vec![0.0f32; 16 * 8];
    let gd = GlobalMut::new(&mut d);
    let (ga, gw, gc) = (Global::new(&a), Global::new(&w), Global::new(&c));
    run_grid("mma_tf32_tile", warp(0), |ctx| {
        mma_tf32_tile(ctx, ga, gw, gc, gd, fragments)
    })
    .unwrap();
    let round = |v: &[f32]| v.iter().map(|&x| tf32(x) as f64).collect::<Vec<_>>();
    (d, reference(&round(&a), &round(&w), &c, 8))
}

fn run_bf16(fragments: Fragments) -> (Vec<f32>, Vec<f32>) {
    let (a, w, c) = (values(4, 16 * 16), values(5, 8 * 16), values(6, 16 * 8));
    let mut d = vec![0.0f32; 16 * 8];
    let gd = GlobalMut::new(&mut d);
    let (ga, gw, gc) = (Global::new(&a), Global::new(&w), Global::new(&c));
    run_grid("mma_bf16_tile", warp(0), |ctx| {
        mma_bf16_tile(ctx, ga, gw, gc, gd, fragments)
    })
    .unwrap();
    let round = |v: &[f32]| v.iter().map(|&x| bf16_to_f32(bf16(x)) as f64).collect::<Vec<_>>();
    (d, reference(&round(&a), &round(&w), &c, 16))
}

#[test]
fn mma_tf32_follows_the_fragment_tables() {
    let (d, expected) = run_tf32(Fragments::Correct);
    assert_eq!(d, expected);
}

#[test]
fn mma_bf16_follows_the_fragment_tables() {
    let (d, expected) = run_bf16(Fragments::Correct);
    assert_eq!(d, expected);
}

#[test]
fn a_wrong_fragment_index_changes_the_product() {
    // A's second register read from row g instead of g + 8: rows 8..16 of D come out wrong.
    for (d, expected) in [run_tf32(Fragments::WrongARow), run_bf16(Fragments::WrongARow)] {
        assert_eq!(d[..64], expected[..64], "rows 0..8 use the right registers");
        let wrong = (64..128).filter(|&i| d[i] != expected[i]).count();
        assert!(wrong > 32, "only {wrong} of 64 outputs of rows 8..16 differ");
    }
}

#[test]
fn mma_tf32_rejects_operands_not_rounded_to_tf32() {
    let mut d = vec![0.0f32; 4];
    let gd = GlobalMut::new(&mut d);
    let err = run_grid("unrounded", warp(0), |ctx| {
        let x = 1.0f32 + f32::EPSILON; // a low fraction bit set: not a TF32 value
        let r = ctx.mma_tf32_m16n8k8([x.to_bits(); 4], [1.0f32.to_bits(); 2], [0.0; 4]);
        if ctx.lane_id() == 0 {
            ctx.store(gd, 0, r[0]);
        }
    })
    .unwrap_err();
    assert!(
        matches!(&err, SimError::BadOperand { reason, .. } if reason.contains("missing cvt.rna.tf32.f32")),
        "{err}"
    );
}

#[test]
fn mma_in_a_divergent_branch_is_reported() {
    let err = run_grid("half_warp_mma", warp(0), |ctx| {
        if ctx.lane_id() < 16 {
            ctx.mma_tf32_m16n8k8([0; 4], [0; 2], [0.0; 4]);
        }
    })
    .unwrap_err();
    assert!(matches!(&err, SimError::DivergentShuffle { .. }), "{err}");
}

#[test]
fn ldmatrix_deals_rows_as_the_ptx_isa_says() {
    // Shared word i holds i: row r of matrix m starts at word 4 (8 m + r) (lane 8 m + r's address).
    let mut out = vec![0u32; 32 * 11];
    let go = GlobalMut::new(&mut out);
    run_grid("ldmatrix", warp(4 * 128), |ctx| {
        let lane = ctx.lane_id() as usize;
        for j in 0..4 {
            ctx.shared_store(4 * lane + j, (4 * lane + j) as u32);
        }
        ctx.sync_threads();
        let row = 4 * lane;
        let mut results = vec![ctx.ldmatrix_x1(row)];
        results.extend(ctx.ldmatrix_x2(row));
        results.extend(ctx.ldmatrix_x4(row));
        results.extend(ctx.ldmatrix_x4_trans(row));
        for (i, r) in results.into_iter().enumerate() {
            ctx.store(go, lane * 11 + i, r);
        }
    })
    .unwrap();
    for lane in 0..32 {
        let got = &out[lane * 11..lane * 11 + 11];
        // Non-transposed: word lane % 4 of row lane / 4 of each matrix.
        let plain = |m: usize| (4 * (8 * m + lane / 4) + lane % 4) as u32;
        assert_eq!(got[0], plain(0), "x1, lane {lane}");
        assert_eq!(got[1..3], [plain(0), plain(1)], "x2, lane {lane}");
        assert_eq!(got[3..7], [plain(0), plain(1), plain(2), plain(3)], "x4, lane {lane}");
        // Transposed: 16-bit elements (2 (lane % 4), lane / 4) and (2 (lane % 4) + 1, lane / 4).
        for m in 0..4 {
            let element = |r: usize, c: usize| {
                let word = (4 * (8 * m + r) + c / 2) as u32;
                (word >> (16 * (c % 2))) & 0xffff
            };
            let (r, c) = (2 * (lane % 4), lane / 4);
            assert_eq!(
                got[7 + m],
                element(r, c) | element(r + 1, c) << 16,
                "x4.trans {m}, lane {lane}"
            );
        }
    }
}

#[test]
fn ldmatrix_rows_must_be_16_byte_aligned() {
    let err = run_grid("misaligned", warp(4 * 256), |ctx| {
        ctx.ldmatrix_x4(4 * ctx.lane_id() as usize + 2);
    })
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SimError::BadOperand {
                instruction: "ldmatrix",
                ..
            }
        ),
        "{err}"
    );
}

fn ldmatrix_tile(wait: bool) -> Result<(Vec<f32>, Vec<f32>), SimError> {
    let (a, w) = (values(7, 16 * 8), values(8, 8 * 8));
    let mut d = vec![0.0f32; 16 * 8];
    let gd = GlobalMut::new(&mut d);
    let (ga, gw) = (Global::new(&a), Global::new(&w));
    run_grid("ldmatrix_mma_tf32_tile", warp(4 * (16 * 8 + 8 * 8)), |ctx| {
        ldmatrix_mma_tf32_tile(ctx, ga, gw, gd, wait)
    })?;
    let round = |v: &[f32]| v.iter().map(|&x| tf32(x) as f64).collect::<Vec<_>>();
    Ok((d, reference(&round(&a), &round(&w), &[0.0; 128], 8)))
}

#[test]
fn cp_async_and_ldmatrix_feed_the_mma() {
    let (d, expected) = ldmatrix_tile(true).unwrap();
    assert_eq!(d, expected);
}

#[test]
fn a_missing_cp_async_wait_is_reported() {
    let err = ldmatrix_tile(false).unwrap_err();
    assert!(
        matches!(
            &err,
            SimError::AsyncCopyPending {
                access: Access::Load,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn reading_another_threads_copy_needs_a_barrier_after_the_wait() {
    let x = values(9, 64);
    let gx = Global::new(&x);
    let err = run_grid("no_barrier", warp(4 * 64), |ctx| {
        let lane = ctx.lane_id() as usize;
        ctx.cp_async(2 * lane, gx, 2 * lane, 2, true);
        ctx.cp_async_commit();
        ctx.cp_async_wait(0);
        // Missing: ctx.sync_threads();
        let _: f32 = ctx.shared_load((2 * lane + 2) % 64);
    })
    .unwrap_err();
    // The copy's write (at the issuer's wait) and the other thread's read are unordered: a read
    // before the issuing thread has run is of a word nothing wrote yet, a read after it a race.
    assert!(
        matches!(
            &err,
            SimError::SharedRace { index, .. } | SimError::UnwrittenSharedLoad { index, .. } if index % 2 == 0
        ),
        "{err}"
    );
}

#[test]
fn cp_async_groups_retire_oldest_first_and_zero_fill() {
    let x = values(10, 128);
    let mut out = vec![f32::NAN; 3 * 32];
    let (gx, go) = (Global::new(&x), GlobalMut::new(&mut out));
    run_grid("groups", warp(4 * 96), |ctx| {
        let lane = ctx.lane_id() as usize;
        ctx.cp_async(lane, gx, lane, 1, true); // group 0
        ctx.cp_async_commit();
        ctx.cp_async(32 + lane, gx, 64 + lane, 1, true); // group 1
        ctx.cp_async(64 + lane, gx, 0, 1, false); // group 1: zero-filled, nothing read
        ctx.cp_async_commit();
        ctx.cp_async_wait(1); // group 0 done, group 1 may still be in flight
        let first: f32 = ctx.shared_load(lane);
        ctx.store(go, lane, first);
        ctx.cp_async_wait(0);
        ctx.store(go, 32 + lane, ctx.shared_load(32 + lane));
        ctx.store(go, 64 + lane, ctx.shared_load(64 + lane));
    })
    .unwrap();
    assert_eq!(out[..32], x[..32]);
    assert_eq!(out[32..64], x[64..96]);
    assert!(out[64..].iter().all(|&v| v == 0.0));
}

#[test]
fn a_group_still_in_flight_is_pending() {
    let x = values(11, 64);
    let gx = Global::new(&x);
    let err = run_grid("early_read", warp(4 * 64), |ctx| {
        let lane = ctx.lane_id() as usize;
        ctx.cp_async(lane, gx, lane, 1, true);
        ctx.cp_async_commit();
        ctx.cp_async(32 + lane, gx, 32 + lane, 1, true);
        ctx.cp_async_commit();
        ctx.cp_async_wait(1);
        let _: f32 = ctx.shared_load(32 + lane); // its group may still be in flight
    })
    .unwrap_err();
    assert!(
        matches!(&err, SimError::AsyncCopyPending { thread, issuer, .. } if *thread == *issuer && *thread == Coord { x: 0, y: 0, z: 0 }),
        "{err}"
    );
}

#[test]
fn cp_async_addresses_must_be_aligned_to_the_copy() {
    let x = values(12, 64);
    let gx = Global::new(&x);
    let err = run_grid("misaligned_copy", warp(4 * 256), |ctx| {
        ctx.cp_async(4 * ctx.lane_id() as usize, gx, 2, 4, true);
    })
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SimError::BadOperand {
                instruction: "cp.async",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn dynamic_shared_memory_goes_up_to_the_device_limit() {
    // 227 KiB: every word usable (each lane writes and reads back its own stripe).
    let words = (MAX_SHARED_BYTES / 4) as usize;
    let mut sums = vec![0u32; 32];
    let gs = GlobalMut::new(&mut sums);
    run_grid("all_of_it", warp(MAX_SHARED_BYTES), |ctx| {
        let lane = ctx.lane_id() as usize;
        let mut sum = 0u32;
        for i in (lane..words).step_by(32) {
            ctx.shared_store(i, i as u32);
            sum = sum.wrapping_add(ctx.shared_load::<u32>(i));
        }
        ctx.store(gs, lane, sum);
    })
    .unwrap();
    let expected: u32 = (0..words as u32).fold(0, u32::wrapping_add);
    assert_eq!(sums.iter().fold(0u32, |a, &b| a.wrapping_add(b)), expected);
    // One word more is past what a block may have.
    let err = run_grid("too_much", warp(MAX_SHARED_BYTES + 4), |_| {}).unwrap_err();
    assert!(
        matches!(&err, SimError::InvalidLaunch { reason, .. } if reason.contains("at most 232448")),
        "{err}"
    );
}
