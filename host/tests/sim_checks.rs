//! The simulator's checks: deliberately broken kernels (written against `ThreadCtx` like the real
//! ones, so they would compile for the GPU too) must be caught with the right error kind and
//! location; correct kernels using barriers, shared memory and shuffles must run clean and
//! deterministically.

use resca_gpu_kernels::reduce::warp_sum;
use resca_gpu_kernels::{Dim3, Global, GlobalMut, LaunchDims, ThreadCtx};
use resca_host::sim::{Access, Coord, SimError, Space, run_grid};

fn dims(grid: u32, block: u32, shared_bytes: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(grid),
        block: Dim3::x(block),
        shared_bytes,
    }
}

const fn at(x: u32) -> Coord {
    Coord { x, y: 0, z: 0 }
}

/// BROKEN: no `if i < n` guard, and the grid overshoots the buffer.
fn scale_unguarded<C: ThreadCtx>(ctx: &C, x: Global<'_, f32>, out: GlobalMut<'_, f32>) {
    let i = ctx.index_1d() as usize;
    ctx.store(out, i, 2.0 * ctx.load(x, i.min(x.len() - 1)));
}

#[test]
fn out_of_bounds_global_write_is_reported_with_block_thread_and_index() {
    let x = vec![1.0f32; 100];
    let mut out = vec![0.0f32; 100];
    let (gx, go) = (Global::new(&x), GlobalMut::new(&mut out));
    let err = run_grid("scale_unguarded", dims(2, 64, 0), |ctx| scale_unguarded(ctx, gx, go)).unwrap_err();
    eprintln!("{err}");
    match &err {
        SimError::OutOfBounds {
            kernel,
            block,
            thread,
            space,
            access,
            index,
            len,
            site,
            ..
        } => {
            assert_eq!(kernel, "scale_unguarded");
            // Thread 36 of block 1 is global index 100, the first past the end.
            assert_eq!((*block, *thread), (at(1), at(36)));
            assert_eq!(
                (*space, *access, *index, *len),
                (Space::Global, Access::Store, 100, 100)
            );
            assert!(site.contains("sim_checks.rs"), "{site}");
        }
        other => panic!("expected an out-of-bounds store, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("block (1, 0, 0) thread (36, 0, 0)"), "{message}");
    // What the threads before the fault wrote stays written, as on a GPU.
    assert_eq!(out[0], 2.0);
}

#[test]
fn out_of_bounds_global_load_and_shared_access_are_reported() {
    let x = vec![1.0f32; 10];
    let gx = Global::new(&x);
    let err = run_grid("load_past_end", dims(1, 32, 0), |ctx| {
        let _ = ctx.load(gx, ctx.thread_idx_x() as usize);
    })
    .unwrap_err();
    assert!(
        matches!(err, SimError::OutOfBounds { space: Space::Global, access: Access::Load, index: 10, len: 10, thread, .. } if thread == at(10)),
        "{err}"
    );
    let err = run_grid("shared_past_end", dims(1, 32, 64), |ctx| {
        ctx.shared_store(ctx.thread_idx_x() as usize, 1.0f32);
    })
    .unwrap_err();
    // 64 bytes are 16 words: thread 16 is the first outside.
    assert!(
        matches!(err, SimError::OutOfBounds { space: Space::Shared, access: Access::Store, index: 16, len: 16, thread, .. } if thread == at(16)),
        "{err}"
    );
}

/// BROKEN: each thread reads its neighbour's shared word without a barrier after the writes.
/// (The words are cleared first, so that the read is a race and not a read of a word never
/// written.)
fn neighbour_sum_racy<C: ThreadCtx>(ctx: &C, out: GlobalMut<'_, f32>, with_barrier: bool) {
    let t = ctx.thread_idx_x() as usize;
    let n = ctx.block_dim_x() as usize;
    ctx.shared_store(t, 0.0f32);
    ctx.sync_threads();
    ctx.shared_store(t, t as f32);
    if with_barrier {
        ctx.sync_threads();
    }
    let right: f32 = ctx.shared_load((t + 1) % n);
    ctx.store(out, t, t as f32 + right);
}

#[test]
fn shared_memory_race_between_barriers_is_reported() {
    let mut out = vec![0.0f32; 64];
    let go = GlobalMut::new(&mut out);
    let err = run_grid("neighbour_sum_racy", dims(1, 64, 256), |ctx| {
        neighbour_sum_racy(ctx, go, false)
    })
    .unwrap_err();
    eprintln!("{err}");
    match &err {
        SimError::SharedRace {
            kernel,
            index,
            first,
            first_access,
            second,
            second_access,
            ..
        } => {
            assert_eq!(kernel, "neighbour_sum_racy");
            // Thread 0 read word 1 before thread 1 wrote it, with no barrier in between.
            assert_eq!((*index, *first, *first_access), (1, at(0), Access::Load));
            assert_eq!((*second, *second_access), (at(1), Access::Store));
        }
        other => panic!("expected a shared-memory race, got {other}"),
    }
    // The same kernel with the barrier is correct.
    let go = GlobalMut::new(&mut out);
    run_grid("neighbour_sum", dims(1, 64, 256), |ctx| {
        neighbour_sum_racy(ctx, go, true)
    })
    .unwrap();
    assert_eq!(out[5], 5.0 + 6.0);
    assert_eq!(out[63], 63.0);
}

#[test]
fn write_after_write_race_is_reported() {
    let err = run_grid("everyone_writes_word_0", dims(1, 32, 4), |ctx| {
        ctx.shared_store(0, ctx.thread_idx_x());
    })
    .unwrap_err();
    assert!(
        matches!(err, SimError::SharedRace { index: 0, first_access: Access::Store, second_access: Access::Store, first, second, .. } if first == at(0) && second == at(1)),
        "{err}"
    );
}

/// BROKEN: a barrier that only the first half of the block executes.
fn half_block_barrier<C: ThreadCtx>(ctx: &C, out: GlobalMut<'_, f32>) {
    let t = ctx.thread_idx_x() as usize;
    if t < 16 {
        ctx.shared_store(t, 1.0f32);
        ctx.sync_threads();
    }
    ctx.store(out, t, 1.0);
}

#[test]
fn barrier_in_a_divergent_branch_is_reported() {
    let mut out = vec![0.0f32; 64];
    let go = GlobalMut::new(&mut out);
    let err = run_grid("half_block_barrier", dims(1, 64, 256), |ctx| {
        half_block_barrier(ctx, go)
    })
    .unwrap_err();
    eprintln!("{err}");
    match &err {
        SimError::DivergentBarrier {
            kernel,
            block,
            site,
            waiting,
            other,
            other_state,
        } => {
            assert_eq!(kernel, "half_block_barrier");
            assert_eq!((*block, *waiting, *other), (at(0), at(0), at(16)));
            assert!(site.contains("sim_checks.rs"), "{site}");
            assert_eq!(other_state, "has exited");
        }
        other => panic!("expected a divergent barrier, got {other}"),
    }
}

#[test]
// Two barriers that look alike but are different instructions, the point of the test.
#[allow(clippy::if_same_then_else)]
fn two_different_barriers_are_reported() {
    let err = run_grid("if_else_barriers", dims(1, 64, 0), |ctx| {
        if ctx.thread_idx_x() % 2 == 0 {
            ctx.sync_threads();
        } else {
            ctx.sync_threads();
        }
    })
    .unwrap_err();
    assert!(
        matches!(&err, SimError::DivergentBarrier { waiting, other, other_state, .. }
            if *waiting == at(0) && *other == at(1) && other_state.starts_with("waits at the barrier at")),
        "{err}"
    );
}

#[test]
fn shuffle_in_a_divergent_branch_is_reported() {
    let mut out = vec![0.0f32; 32];
    let go = GlobalMut::new(&mut out);
    let err = run_grid("half_warp_sum", dims(1, 32, 0), |ctx| {
        let lane = ctx.lane_id();
        if lane < 16 {
            let s = warp_sum(ctx, 1.0);
            ctx.store(go, lane as usize, s);
        }
    })
    .unwrap_err();
    assert!(
        matches!(&err, SimError::DivergentShuffle { warp: 0, waiting, other, other_state, .. }
            if *waiting == at(0) && *other == at(16) && other_state == "has exited"),
        "{err}"
    );
}

#[test]
fn kernel_panics_become_errors() {
    let err = run_grid("panics", dims(2, 32, 0), |ctx| {
        if ctx.block_idx_x() == 1 && ctx.thread_idx_x() == 3 {
            panic!("deliberate");
        }
    })
    .unwrap_err();
    assert_eq!(
        err,
        SimError::Panic {
            kernel: "panics".to_string(),
            block: at(1),
            thread: at(3),
            message: "deliberate".to_string(),
        }
    );
}

#[test]
fn invalid_launches_are_rejected() {
    for bad in [
        dims(1, 1025, 0),
        dims(0, 32, 0),
        dims(1, 32, 227 * 1024 + 4),
        dims(1, 32, 6),
    ] {
        let err = run_grid("any", bad, |_| {}).unwrap_err();
        assert!(matches!(err, SimError::InvalidLaunch { .. }), "{err}");
    }
}

#[test]
fn shuffles_follow_ptx_semantics() {
    let mut out = vec![0.0f32; 3 * 64];
    let go = GlobalMut::new(&mut out);
    run_grid("shuffles", dims(1, 64, 0), |ctx| {
        let t = ctx.thread_idx_x() as usize;
        let v = t as f32;
        ctx.store(go, t, ctx.shfl_xor_f32(v, 5));
        ctx.store(go, 64 + t, ctx.shfl_down_f32(v, 3));
        ctx.store(go, 128 + t, ctx.shfl_idx_f32(v, 7));
    })
    .unwrap();
    for t in 0..64usize {
        let (warp, lane) = (t / 32 * 32, t % 32);
        assert_eq!(out[t], (warp + (lane ^ 5)) as f32);
        // Past lane 31 a lane keeps its own value.
        let down = if lane + 3 < 32 { t + 3 } else { t };
        assert_eq!(out[64 + t], down as f32);
        assert_eq!(out[128 + t], (warp + 7) as f32);
    }
}

/// A correct block reduction: warp shuffles, then one partial per warp through shared memory.
fn block_sum<C: ThreadCtx>(ctx: &C, x: Global<'_, f32>, out: GlobalMut<'_, f32>) {
    let t = ctx.thread_idx_x() as usize;
    let n = ctx.block_dim_x() as usize;
    let mut acc = 0.0f32;
    let mut i = ctx.block_idx_x() as usize * n + t;
    while i < x.len() {
        acc += ctx.load(x, i);
        i += n * ctx.grid_dim_x() as usize;
    }
    let warp_total = warp_sum(ctx, acc);
    if ctx.lane_id() == 0 {
        ctx.shared_store(ctx.warp_id() as usize, warp_total);
    }
    ctx.sync_threads();
    if ctx.warp_id() == 0 {
        let warps = n / 32;
        let v = if t < warps { ctx.shared_load(t) } else { 0.0 };
        let total = warp_sum(ctx, v);
        if t == 0 {
            ctx.store(out, ctx.block_idx_x() as usize, total);
        }
    }
}

#[test]
fn a_correct_block_reduction_runs_clean_and_deterministically() {
    let x: Vec<f32> = (0..5000).map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5).collect();
    let run = || {
        let mut out = vec![0.0f32; 3];
        let (gx, go) = (Global::new(&x), GlobalMut::new(&mut out));
        run_grid("block_sum", dims(3, 256, 32), |ctx| block_sum(ctx, gx, go)).unwrap();
        out
    };
    let first = run();
    let total: f64 = x.iter().map(|&v| v as f64).sum();
    let ours: f64 = first.iter().map(|&v| v as f64).sum();
    assert!((ours - total).abs() < 1e-3, "{ours} vs {total}");
    for _ in 0..3 {
        let again = run();
        assert_eq!(
            again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            first.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// BROKEN: a tile of `tile` words is staged in shared memory by the first `staged` threads, but
/// every thread reads its own word (a staging loop that stops short).
fn tile_staged_short<C: ThreadCtx>(ctx: &C, x: Global<'_, f32>, out: GlobalMut<'_, f32>, staged: usize) {
    let t = ctx.thread_idx_x() as usize;
    if t < staged {
        ctx.shared_store(t, ctx.load(x, t));
    }
    ctx.sync_threads();
    let v: f32 = ctx.shared_load(t);
    ctx.store(out, t, v);
}

#[test]
fn a_load_of_shared_memory_never_written_is_reported_with_its_site() {
    let x = vec![1.5f32; 32];
    let mut out = vec![0.0f32; 32];
    let (gx, go) = (Global::new(&x), GlobalMut::new(&mut out));
    let err = run_grid("tile_staged_short", dims(1, 32, 128), |ctx| {
        tile_staged_short(ctx, gx, go, 31)
    })
    .unwrap_err();
    eprintln!("{err}");
    match &err {
        SimError::UnwrittenSharedLoad {
            kernel,
            block,
            thread,
            index,
            site,
            ..
        } => {
            assert_eq!(kernel, "tile_staged_short");
            assert_eq!((*block, *thread, *index), (at(0), at(31), 31));
            assert!(site.contains("sim_checks.rs"), "{site}");
        }
        other => panic!("expected an unwritten shared load, got {other}"),
    }
    // Staging every word is correct; and a word written by an earlier block does not count for
    // the next one (each block's shared memory starts unwritten).
    let go = GlobalMut::new(&mut out);
    run_grid("tile_staged", dims(1, 32, 128), |ctx| {
        tile_staged_short(ctx, gx, go, 32)
    })
    .unwrap();
    assert_eq!(out, x);
    let err = run_grid("second_block_reads_first_blocks_word", dims(2, 1, 4), |ctx| {
        if ctx.block_idx_x() == 0 {
            ctx.shared_store(0, 1.0f32);
        }
        let _: f32 = ctx.shared_load(0);
    })
    .unwrap_err();
    assert!(
        matches!(err, SimError::UnwrittenSharedLoad { block, index: 0, .. } if block == at(1)),
        "{err}"
    );
}

/// BROKEN: each block writes a tile of `2 * tile` outputs but the blocks are `tile` apart (a
/// tile size mismatch), so neighbouring blocks overwrite each other's rows.
fn overlapping_tiles<C: ThreadCtx>(ctx: &C, out: GlobalMut<'_, f32>, tile: usize) {
    let first = ctx.block_idx_x() as usize * tile;
    let t = ctx.thread_idx_x() as usize;
    if first + t < out.len() {
        ctx.store(out, first + t, ctx.block_idx_x() as f32);
    }
}

#[test]
fn two_blocks_writing_one_global_element_are_reported() {
    let mut out = vec![0.0f32; 64];
    let go = GlobalMut::new(&mut out);
    let err = run_grid("overlapping_tiles", dims(4, 32, 0), |ctx| {
        overlapping_tiles(ctx, go, 16)
    })
    .unwrap_err();
    eprintln!("{err}");
    match &err {
        SimError::GlobalWriteConflict {
            kernel,
            index,
            first_block,
            second_block,
            thread,
            site,
            ..
        } => {
            assert_eq!(kernel, "overlapping_tiles");
            // Block 0 wrote 0..32; block 1 starts at 16.
            assert_eq!(
                (*index, *first_block, *second_block, *thread),
                (16, at(0), at(1), at(0))
            );
            assert!(site.contains("sim_checks.rs"), "{site}");
        }
        other => panic!("expected a write conflict, got {other}"),
    }
    // Blocks tiling the output exactly run clean; a block writing one element twice is fine.
    let go = GlobalMut::new(&mut out);
    run_grid("tiles", dims(2, 32, 0), |ctx| overlapping_tiles(ctx, go, 32)).unwrap();
    let go = GlobalMut::new(&mut out);
    run_grid("accumulates", dims(2, 1, 0), |ctx| {
        let i = ctx.block_idx_x() as usize;
        ctx.store(go, i, 1.0);
        ctx.store(go, i, 2.0);
    })
    .unwrap();
}

#[test]
fn a_write_conflict_names_the_buffer_by_its_parameter_name() {
    use resca_host::sim::{BufferName, run_grid_with_buffer_names};
    let mut out = vec![0.0f32; 64];
    let go = GlobalMut::new(&mut out);
    // What `SimDevice` passes for each writable parameter of a kernel.
    let names = [BufferName {
        name: "out".to_string(),
        base: go.as_mut_ptr() as usize,
    }];
    let err = run_grid_with_buffer_names("overlapping_tiles", dims(4, 32, 0), &names, |ctx| {
        overlapping_tiles(ctx, go, 16)
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("blocks (0, 0, 0) and (1, 0, 0) both write element 16 of global buffer `out`"),
        "{message}"
    );
}

#[test]
fn blocks_run_in_the_chosen_order() {
    use resca_host::sim::{BlockOrder, block_order, with_block_order};
    let order_of = |order: BlockOrder| {
        let visited = std::cell::RefCell::new(Vec::new());
        with_block_order(order, || {
            run_grid("records_its_block", dims(6, 1, 0), |ctx| {
                visited.borrow_mut().push(ctx.block_idx_x())
            })
        })
        .unwrap();
        visited.into_inner()
    };
    assert_eq!(order_of(BlockOrder::InOrder), [0, 1, 2, 3, 4, 5]);
    assert_eq!(order_of(BlockOrder::Reversed), [5, 4, 3, 2, 1, 0]);
    let shuffled = order_of(BlockOrder::Shuffled(7));
    assert_eq!(
        shuffled,
        order_of(BlockOrder::Shuffled(7)),
        "the same seed, the same order"
    );
    assert_ne!(shuffled, order_of(BlockOrder::Shuffled(8)));
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1, 2, 3, 4, 5]);
    assert_eq!(block_order(), BlockOrder::InOrder, "restored after");
}

/// BROKEN: each block adds its partial into a running total that the next block reads (blocks
/// that assume they run in grid order).
fn chained_blocks<C: ThreadCtx>(ctx: &C, x: Global<'_, f32>, total: GlobalMut<'_, f32>) {
    let b = ctx.block_idx_x() as usize;
    let before = if b == 0 {
        0.0
    } else {
        ctx.load(total.as_global(), b - 1)
    };
    ctx.store(total, b, before + ctx.load(x, b));
}

#[test]
fn a_kernel_that_depends_on_the_block_order_gives_different_results_in_reverse() {
    use resca_host::sim::{BlockOrder, with_block_order};
    let x = vec![1.0f32; 8];
    let run = |order| {
        let mut total = vec![0.0f32; 8];
        let (gx, gt) = (Global::new(&x), GlobalMut::new(&mut total));
        with_block_order(order, || {
            run_grid("chained_blocks", dims(8, 1, 0), |ctx| chained_blocks(ctx, gx, gt))
        })
        .unwrap();
        total
    };
    assert_eq!(run(BlockOrder::InOrder)[7], 8.0);
    // In reverse, each block reads a total not yet written: the last element is 1, not 8.
    assert_eq!(run(BlockOrder::Reversed)[7], 1.0);
}
