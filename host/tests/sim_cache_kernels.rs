//! The caching kernels (TETC, K-medoids, ClusCa's K-means and propagation, Taylor caches, PDDS,
//! gather/scatter, the flow step), launched on a `SimDevice` through the pipeline's typed
//! launches, against the reference functions of `resca_reference::cache::*` on random shapes,
//! including sizes that are not multiples of the tile and block sizes (similarity GEMM 64 x 64,
//! 8 rows per warp-per-row block, 128-thread medoid and K-means blocks, 256-thread elementwise
//! blocks).
//!
//! Index-valued results (labels, medoids, proxies, members) must be identical; the kernels that
//! only reorder or repeat the reference's float operations must be bit-identical; the others
//! carry a tolerance with the largest error measured over 2,000 cases per test
//! (`PROPTEST_CASES=2000`); CI runs 24 cases each from a fixed seed (`support::proptest_config`).
//! Every property runs with the simulator's blocks in grid order and reversed
//! (`support::in_every_block_order`).

mod support;

use ndarray::{Array2, Array3, ArrayView2, Axis, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resca_gpu_kernels::taylor::MAX_TAYLOR_ORDER;
use resca_host::pipeline::caching_engine::{self as caching, KMeansBuffers, taylor_coefficients};
use resca_host::pipeline::device::{Device, Element, Slice};
use resca_host::pipeline::launch;
use resca_host::sim::SimDevice;
use resca_reference::cache::clusca;
use resca_reference::cache::pdds::{self, Solver};
use resca_reference::cache::taylor::TaylorFactors;
use resca_reference::cache::tetc::{self, Clustering, ProxyChoice};
use resca_reference::flow::FlowSchedule;
use resca_reference::ops;
use resca_tests::max_abs_diff;

/// Deterministic uniform values in [-scale, scale] (xorshift64*).
fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Integers in 0..bound from a seed.
fn indices(seed: u64, len: usize, bound: usize) -> Vec<usize> {
    values(seed, len, 1.0)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * bound as f32) as usize).min(bound - 1))
        .collect()
}

fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f32> {
    a.iter().copied().collect()
}

fn up<T: Element>(dev: &mut SimDevice, data: &[T]) -> Slice<T> {
    dev.upload_new(data).unwrap().all()
}

fn zeros<T: Element>(dev: &mut SimDevice, len: usize) -> Slice<T> {
    dev.alloc::<T>(len).unwrap().all()
}

fn down<T: Element>(dev: &mut SimDevice, slice: Slice<T>) -> Vec<T> {
    dev.download_vec(slice).unwrap()
}

fn u32s(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

fn usizes(v: &[u32]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

/// Prints the error of each case when `SIM_PRINT_ERRORS` is set (to measure the budgets).
fn report(kernel: &str, err: f32) {
    if std::env::var_os("SIM_PRINT_ERRORS").is_some() {
        eprintln!("{kernel}: {err:.3e}");
    }
}

/// A similarity-like matrix whose values come from a small set, so that assignments and medoid
/// sums tie often (quarters are exact in f32, so sums of them are too).
fn tied_similarity(seed: u64, n: usize) -> Array2<f32> {
    Array2::from_shape_vec((n, n), values(seed, n * n, 1.0))
        .unwrap()
        .mapv(|v| (v * 4.0).round() / 4.0)
}

/// Labels of n tokens in k clusters, some clusters possibly empty.
fn labels_for(seed: u64, n: usize, k: usize) -> Vec<usize> {
    indices(seed, n, k)
}

proptest! {
    #![proptest_config(support::proptest_config())]

    #[test]
    fn normalised_similarity_matches(batch in 1usize..3, n in 1usize..80, d in 1usize..100, seed in any::<u64>(), zero_row in any::<bool>()) {
        support::in_every_block_order(|| {
            let mut x = Array3::from_shape_vec((batch, n, d), values(seed, batch * n * d, 2.0)).unwrap();
            if zero_row {
                x.slice_mut(s![0, 0, ..]).fill(0.0);
            }
            let dev = &mut SimDevice::new();
            let (xi, xn, sim) = (up(dev, &flat(&x)), zeros(dev, batch * n * d), zeros(dev, batch * n * n));
            launch::row_normalize(dev, xi, xn, batch * n, d).unwrap();
            launch::similarity(dev, xn, sim, batch, n, d).unwrap();
            let ours = down(dev, sim);
            let mut expected = Vec::new();
            for row in 0..batch {
                expected.extend(flat(&tetc::cosine_similarity_matrix(x.index_axis(Axis(0), row))));
            }
            let err = max_abs_diff("normalised_similarity", &ours, &expected);
            report("similarity", err);
            // Cosines in [-1, 1]: the norm as a warp sum and the dot product in the GEMM's k order
            // vs BLAS. Measured max 7.7e-7.
            prop_assert!(err <= 2e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn similarity_ema_is_the_reference_bit_for_bit(n in 1usize..40, alpha in 0.0f32..=1.0, seed in any::<u64>(), has_previous in any::<bool>()) {
        support::in_every_block_order(|| {
            let current = Array2::from_shape_vec((n, n), values(seed, n * n, 1.0)).unwrap();
            let previous = Array2::from_shape_vec((n, n), values(seed ^ 1, n * n, 1.0)).unwrap();
            let dev = &mut SimDevice::new();
            let (si, smoothed) = (up(dev, &flat(&current)), up(dev, &flat(&previous)));
            launch::similarity_ema(dev, si, smoothed, alpha, has_previous).unwrap();
            let expected = tetc::temporal_smoothing(current, has_previous.then_some(&previous), alpha);
            prop_assert_eq!(down(dev, smoothed), flat(&expected));
            Ok(())
        })?;
    }

    #[test]
    fn kmedoids_assign_and_update_are_the_reference(batch in 1usize..3, n in 1usize..300, k in 1usize..9, seed in any::<u64>(), ties in any::<bool>()) {
        support::in_every_block_order(|| {
            let k = k.min(n);
            let sims: Vec<Array2<f32>> = (0..batch as u64)
                .map(|b| if ties { tied_similarity(seed ^ b, n) } else { Array2::from_shape_vec((n, n), values(seed ^ b, n * n, 1.0)).unwrap() })
                .collect();
            let medoids: Vec<usize> = (0..batch as u64).flat_map(|b| indices(seed ^ (b << 8) ^ 7, k, n)).collect();
            let labels: Vec<usize> = (0..batch as u64).flat_map(|b| labels_for(seed ^ (b << 16) ^ 9, n, k)).collect();
            let dev = &mut SimDevice::new();
            let s_all: Vec<f32> = sims.iter().flat_map(flat).collect();
            let (si, mi, li) = (up(dev, &s_all), up(dev, &u32s(&medoids)), up(dev, &u32s(&labels)));
            let (assigned, next) = (zeros(dev, batch * n), zeros(dev, batch * k));
            launch::kmedoids_assign(dev, si, mi, assigned, batch, n, k).unwrap();
            launch::kmedoids_update(dev, si, li, mi, next, batch, n, k).unwrap();
            let (assigned, next) = (down(dev, assigned), down(dev, next));
            for (b, sim) in sims.iter().enumerate() {
                let m = &medoids[b * k..(b + 1) * k];
                prop_assert_eq!(usizes(&assigned[b * n..(b + 1) * n]), tetc::assign(sim.view(), m));
                let l = &labels[b * n..(b + 1) * n];
                prop_assert_eq!(usizes(&next[b * k..(b + 1) * k]), tetc::update_medoids(sim.view(), l, m));
            }
            Ok(())
        })?;
    }

    #[test]
    fn kmedoids_loop_is_the_reference(batch in 1usize..4, n in 2usize..70, k in 1usize..9, seed in any::<u64>(), ties in any::<bool>(), iters in 1usize..10) {
        support::in_every_block_order(|| check_kmedoids_loop(batch, n, k.min(n), seed, ties, iters))?;
    }

    #[test]
    fn center_random_proxies_draw_like_the_reference(batch in 1usize..3, n in 1usize..120, k in 1usize..9, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let k = k.min(n);
            let sims: Vec<Array2<f32>> = (0..batch as u64).map(|b| Array2::from_shape_vec((n, n), values(seed ^ b, n * n, 1.0)).unwrap()).collect();
            let labels: Vec<usize> = (0..batch as u64).flat_map(|b| labels_for(seed ^ (b << 16) ^ 3, n, k)).collect();
            let medoids: Vec<usize> = (0..batch as u64).flat_map(|b| indices(seed ^ (b << 8) ^ 5, k, n)).collect();
            let dev = &mut SimDevice::new();
            let s_all: Vec<f32> = sims.iter().flat_map(flat).collect();
            let (si, li, mi) = (up(dev, &s_all), up(dev, &u32s(&labels)), up(dev, &u32s(&medoids)));
            let counts = zeros(dev, batch * k);
            launch::cluster_counts(dev, li, counts, batch, n, k).unwrap();
            let counts = down(dev, counts);
            // The host draws one uniform per non-empty cluster from the row's generator.
            let mut ours_rngs: Vec<ChaCha8Rng> = (0..batch as u64).map(|b| ChaCha8Rng::seed_from_u64(seed ^ b)).collect();
            let mut draws = vec![0.0f64; batch * k];
            for (b, rng) in ours_rngs.iter_mut().enumerate() {
                for c in 0..k {
                    if counts[b * k + c] > 0 {
                        draws[b * k + c] = rand::Rng::random::<f64>(rng);
                    }
                }
            }
            let (ui, proxies) = (up(dev, &draws), zeros(dev, batch * k));
            launch::center_random_proxies(dev, si, li, mi, ui, proxies, batch, n, k).unwrap();
            let proxies = down(dev, proxies);
            for (b, sim) in sims.iter().enumerate() {
                let clustering = Clustering { labels: labels[b * n..(b + 1) * n].to_vec(), medoids: medoids[b * k..(b + 1) * k].to_vec() };
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ b as u64);
                let expected = tetc::choose_proxies(sim.view(), &clustering, ProxyChoice::CenterRandom, &mut rng);
                prop_assert_eq!(usizes(&proxies[b * k..(b + 1) * k]), expected);
                // Both consumed the same stream.
                prop_assert_eq!(rand::Rng::random::<u64>(&mut rng), rand::Rng::random::<u64>(&mut ours_rngs[b]));
                let sizes: Vec<usize> = tetc::members(&clustering.labels, k).iter().map(Vec::len).collect();
                prop_assert_eq!(usizes(&counts[b * k..(b + 1) * k]), sizes);
            }
            Ok(())
        })?;
    }

    #[test]
    fn cluster_members_are_the_ranked_members(batch in 1usize..3, n in 1usize..100, k in 1usize..9, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let k = k.min(n);
            let labels: Vec<usize> = (0..batch as u64).flat_map(|b| labels_for(seed ^ b, n, k)).collect();
            let mut ranks = vec![u32::MAX; batch * k];
            let mut expected = vec![0usize; batch * k];
            for b in 0..batch {
                for (c, members) in tetc::members(&labels[b * n..(b + 1) * n], k).iter().enumerate() {
                    if !members.is_empty() {
                        let r = indices(seed ^ ((b * k + c) as u64) << 4, 1, members.len())[0];
                        ranks[b * k + c] = r as u32;
                        expected[b * k + c] = members[r];
                    }
                }
            }
            let dev = &mut SimDevice::new();
            let (li, ri, out) = (up(dev, &u32s(&labels)), up(dev, &ranks), zeros(dev, batch * k));
            launch::cluster_members(dev, li, ri, out, batch, n, k).unwrap();
            prop_assert_eq!(usizes(&down(dev, out)), expected);
            Ok(())
        })?;
    }

    #[test]
    fn kmeans_l1_is_the_reference(batch in 1usize..3, n in 1usize..60, d in 1usize..150, k in 1usize..7, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let k = k.min(n);
            let x = Array3::from_shape_vec((batch, n, d), values(seed, batch * n * d, 3.0)).unwrap();
            let picks: Vec<usize> = (0..batch as u64).flat_map(|b| indices(seed ^ b ^ 11, k, n)).collect();
            let dev = &mut SimDevice::new();
            let xi = up(dev, &flat(&x));
            let centroids = zeros(dev, batch * k * d);
            let pi = up(dev, &u32s(&picks));
            launch::gather_rows(dev, xi, pi, centroids, batch, n, k, d).unwrap();
            let buffers = KMeansBuffers {
                centroids,
                next: zeros(dev, batch * k * d),
                moved: zeros(dev, batch * k),
                commit: zeros(dev, batch),
                labels: zeros(dev, batch * n),
            };
            caching::kmeans_l1(dev, xi, buffers, batch, n, k, d).unwrap();
            let (labels, centroids) = (down(dev, buffers.labels), down(dev, buffers.centroids));
            for b in 0..batch {
                let tokens = x.index_axis(Axis(0), b);
                let init = tokens.select(Axis(0), &picks[b * k..(b + 1) * k]);
                let expected = clusca::kmeans_l1(tokens, init);
                prop_assert_eq!(usizes(&labels[b * n..(b + 1) * n]), expected.labels);
                prop_assert_eq!(centroids[b * k * d..(b + 1) * k * d].to_vec(), flat(&expected.centroids));
            }
            Ok(())
        })?;
    }

    #[test]
    fn clusca_propagation_is_the_reference(batch in 1usize..3, n in 1usize..50, d in 1usize..90, k in 1usize..7, gamma in 0.0f32..=1.0, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let k = k.min(n);
            let cache = Array3::from_shape_vec((batch, n, d), values(seed, batch * n * d, 1.0)).unwrap();
            let fresh = values(seed ^ 1, batch * k * d, 1.0);
            let labels: Vec<usize> = (0..batch as u64).flat_map(|b| labels_for(seed ^ b ^ 2, n, k)).collect();
            let mut ranks = vec![u32::MAX; batch * k];
            for b in 0..batch {
                for (c, members) in tetc::members(&labels[b * n..(b + 1) * n], k).iter().enumerate() {
                    if !members.is_empty() {
                        ranks[b * k + c] = indices(seed ^ ((b * k + c) as u64) << 3, 1, members.len())[0] as u32;
                    }
                }
            }
            let dev = &mut SimDevice::new();
            let (ci, fi, li, ri) = (up(dev, &flat(&cache)), up(dev, &fresh), up(dev, &u32s(&labels)), up(dev, &ranks));
            let picks = zeros(dev, batch * k);
            launch::cluster_members(dev, li, ri, picks, batch, n, k).unwrap();
            launch::clusca_propagate(dev, ci, fi, li, picks, ri, batch, n, k, d, gamma).unwrap();
            let (ours, picks) = (down(dev, ci), down(dev, picks));
            let mut expected = cache.clone();
            for b in 0..batch {
                // The reference's (cluster, token) pairs and their outputs, non-empty clusters only.
                let chosen: Vec<(usize, usize)> = (0..k).filter(|&c| ranks[b * k + c] != u32::MAX).map(|c| (c, picks[b * k + c] as usize)).collect();
                let outputs = Array2::from_shape_fn((chosen.len(), d), |(i, j)| fresh[(b * k + chosen[i].0) * d + j]);
                clusca::propagate(expected.index_axis_mut(Axis(0), b), &labels[b * n..(b + 1) * n], k, &chosen, outputs.view(), gamma);
            }
            prop_assert_eq!(ours, flat(&expected));
            Ok(())
        })?;
    }

    #[test]
    fn taylor_update_and_prediction_are_the_reference(len in 1usize..700, order in 0usize..5, updates in 1usize..7, distance in -9i32..0, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let dev = &mut SimDevice::new();
            let factors = zeros(dev, (order + 1) * len);
            let mut reference = TaylorFactors::default();
            let mut stored = 0;
            for u in 0..updates {
                let new = Array3::from_shape_vec((1, 1, len), values(seed ^ u as u64, len, 2.0)).unwrap();
                let gap = -((u % 3) as f32 + 1.0);
                let ni = up(dev, &flat(&new));
                launch::taylor_update(dev, factors, ni, len, stored, order, gap).unwrap();
                stored = stored.min(order) + 1;
                reference.update(new.view(), gap, order);
            }
            prop_assert_eq!(stored, reference.orders.len());
            let held: Vec<f32> = down(dev, factors)[..stored * len].to_vec();
            prop_assert_eq!(held, reference.orders.iter().flat_map(flat).collect::<Vec<_>>());
            let out = zeros(dev, len);
            launch::taylor_predict(dev, factors, out, len, stored, taylor_coefficients(distance as f32)).unwrap();
            prop_assert_eq!(down(dev, out), flat(&reference.predict(distance as f32)));
            Ok(())
        })?;
    }

    #[test]
    fn taylor_prediction_fused_with_the_gate_is_the_reference(batch in 1usize..3, tokens in 1usize..20, d in 1usize..70, stored in 1usize..6, distance in -5i32..0, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let len = batch * tokens * d;
            let orders: Vec<Array3<f32>> = (0..stored).map(|i| Array3::from_shape_vec((batch, tokens, d), values(seed ^ i as u64, len, 1.0)).unwrap()).collect();
            let modulation = Array2::from_shape_vec((batch, 6 * d), values(seed ^ 99, batch * 6 * d, 1.0)).unwrap();
            let x0 = values(seed ^ 98, len, 1.0);
            let dev = &mut SimDevice::new();
            let factors = up(dev, &orders.iter().flat_map(flat).collect::<Vec<_>>());
            let (xi, mi) = (up(dev, &x0), up(dev, &flat(&modulation)));
            let coef = up(dev, &taylor_coefficients(distance as f32).to_values());
            launch::taylor_predict_gated_add(dev, xi, factors, mi, batch * tokens, d, tokens, 6 * d, 5 * d, stored, coef).unwrap();
            let predicted = TaylorFactors { orders }.predict(distance as f32);
            let mut expected = Array3::from_shape_vec((batch, tokens, d), x0).unwrap();
            for b in 0..batch {
                ops::gated_add(expected.index_axis_mut(Axis(0), b), modulation.slice(s![b, 5 * d..]), predicted.index_axis(Axis(0), b));
            }
            prop_assert_eq!(down(dev, xi), flat(&expected));
            Ok(())
        })?;
    }

    #[test]
    fn pdds_simulation_matches(batch in 1usize..3, n in 1usize..40, d in 1usize..100, k in 1usize..6, solver in 0usize..6, stored in 1usize..6, flow in any::<bool>(), seed in any::<u64>()) {
        let solver = match solver { 0 => Solver::ImplicitEuler, 1 => Solver::Bdf2, m => Solver::ImplicitTaylor(m - 1) };
        support::in_every_block_order(|| check_pdds(batch, n, d, k.min(n), solver, stored, flow, seed))?;
    }

    #[test]
    fn flow_euler_step_is_the_reference(batch in 1usize..4, channels in 1usize..5, learn_sigma in any::<bool>(), side in 1usize..9, steps in 1usize..30, shift in 0.5f64..4.0, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let schedule = FlowSchedule::new(steps, shift).unwrap();
            let oc = if learn_sigma { 2 * channels } else { channels };
            let x = ndarray::Array4::from_shape_vec((batch, channels, side, side), values(seed, batch * channels * side * side, 3.0)).unwrap();
            let v = ndarray::Array4::from_shape_vec((batch, oc, side, side), values(seed ^ 1, batch * oc * side * side, 1.0)).unwrap();
            let k = (seed as usize) % steps;
            let dt = (schedule.times[k + 1] - schedule.times[k]) as f32;
            let dev = &mut SimDevice::new();
            let (xi, vi) = (up(dev, &flat(&x)), up(dev, &flat(&v)));
            launch::flow_euler_step(dev, xi, vi, xi, channels, oc, side * side, dt).unwrap();
            let expected = schedule.step(k, x.view(), v.slice(s![.., ..channels, .., ..]));
            prop_assert_eq!(down(dev, xi), flat(&expected));
            Ok(())
        })?;
    }
}

#[test]
fn every_kernel_of_the_crate_has_a_launch_and_the_ptx_entry_names_match() {
    use resca_host::pipeline::Kernel;
    let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, resca_gpu_kernels::KERNELS);
}

#[test]
fn a_launch_with_a_wrong_parameter_is_an_error_naming_the_kernel() {
    use resca_gpu_kernels::tetc::elementwise_dims;
    use resca_host::pipeline::device::{Arg, Kernel, KernelCall};
    let dev = &mut SimDevice::new();
    let s = up(dev, &[1.0f32; 4]);
    let labels = up(dev, &[0u32; 4]);
    // A u32 buffer where the kernel reads f32.
    let call = KernelCall {
        kernel: Kernel::SimilarityEma,
        dims: elementwise_dims(4),
        args: vec![
            Arg::read(labels),
            Arg::write(s),
            Arg::U32(4),
            Arg::F32(0.5),
            Arg::U32(1),
        ],
    };
    let err = dev.launch(&call).unwrap_err().to_string();
    assert!(err.contains("similarity_ema") && err.contains("parameter 0"), "{err}");
    // A slice past the end of its buffer.
    let call = KernelCall {
        kernel: Kernel::SimilarityEma,
        dims: elementwise_dims(4),
        args: vec![
            Arg::read(s),
            Arg::write(dev.alloc::<f32>(2).unwrap().range(1, 4)),
            Arg::U32(4),
            Arg::F32(0.5),
            Arg::U32(1),
        ],
    };
    let err = dev.launch(&call).unwrap_err().to_string();
    assert!(err.contains("buffer") && err.contains("1..5"), "{err}");
    // A missing parameter.
    let call = KernelCall {
        kernel: Kernel::SimilarityEma,
        dims: elementwise_dims(4),
        args: vec![Arg::read(s), Arg::write(s)],
    };
    let err = dev.launch(&call).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

/// Every PDDS solver on one shape, its proxy residuals (the intermediate buffer) and its output
/// against the reference; `stored` orders of the cache held (at most `order + 1`).
#[allow(clippy::too_many_arguments)]
fn check_pdds(
    batch: usize,
    n: usize,
    d: usize,
    k: usize,
    solver: Solver,
    stored: usize,
    flow: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let order = solver.order();
    let stored = stored.min(order + 1);
    let sign = if flow { 1.0 } else { -1.0 };
    let len = batch * n * d;
    // The cache: `order + 1` slots, `stored` of them held (the rest must read as zeros).
    let mut cache = values(seed, (order + 1) * len, 1.0);
    cache[stored * len..].fill(f32::NAN);
    let labels: Vec<usize> = (0..batch as u64).flat_map(|b| labels_for(seed ^ b ^ 4, n, k)).collect();
    let proxies: Vec<usize> = (0..batch as u64).flat_map(|b| indices(seed ^ b ^ 6, k, n)).collect();
    let fresh = values(seed ^ 8, batch * k * d, 1.0);
    let dev = &mut SimDevice::new();
    let (ci, li, pi, fi) = (
        up(dev, &cache),
        up(dev, &u32s(&labels)),
        up(dev, &u32s(&proxies)),
        up(dev, &fresh),
    );
    let (residuals, out) = (zeros(dev, order * batch * k * d), zeros(dev, len));
    // The gated residual add after the update: x += gate * out, gates at offset d of (batch, 3d).
    let (x0, gates) = (values(seed ^ 10, len, 1.0), values(seed ^ 12, batch * 3 * d, 1.0));
    let (xi, gi) = (up(dev, &x0), up(dev, &gates));
    launch::pdds_proxy_residuals(dev, fi, ci, pi, residuals, batch, n, k, d, order, stored, sign).unwrap();
    let proxy_residuals = down(dev, residuals);
    launch::pdds_update(
        dev,
        ci,
        li,
        pi,
        residuals,
        fi,
        out,
        xi,
        gi,
        batch,
        n,
        k,
        d,
        order,
        stored,
        sign,
        solver == Solver::Bdf2,
        3 * d,
        d,
    )
    .unwrap();
    let ours = down(dev, out);
    // `residual::gated_add`'s operations on the output: the same bits.
    let expected_x: Vec<u32> = (0..len)
        .map(|i| (x0[i] + gates[(i / (n * d)) * 3 * d + d + i % d] * ours[i]).to_bits())
        .collect();
    let x_bits: Vec<u32> = down(dev, xi).iter().map(|v| v.to_bits()).collect();
    prop_assert!(
        x_bits == expected_x,
        "pdds_update's gated add differs from x + gate * out"
    );
    // The proxies' rows written by pdds_update are those scatter_rows writes (the last cluster
    // naming a token wins): scattering again changes no bit.
    launch::scatter_rows(dev, fi, pi, out, batch, n, k, d).unwrap();
    let scattered = down(dev, out);
    prop_assert!(
        ours.iter().zip(&scattered).all(|(a, b)| a.to_bits() == b.to_bits()),
        "pdds_update's proxy rows differ from scatter_rows'"
    );
    // The proxies' residuals of orders 1..=M, (M, B, K, D): R(m) = R(m-1) - sign^(m-1) c[m-1][proxy]
    // with R(0) the fresh outputs and orders not stored read as zeros.
    let mut expected_residuals = vec![0.0f32; order * batch * k * d];
    let mut previous = fresh.clone();
    for m in 1..=order {
        for (slot, residual) in expected_residuals[(m - 1) * batch * k * d..m * batch * k * d]
            .iter_mut()
            .enumerate()
        {
            let (b, c, j) = (slot / (k * d), slot / d % k, slot % d);
            let old = if m - 1 < stored {
                cache[(m - 1) * len + (b * n + proxies[b * k + c]) * d + j]
            } else {
                0.0
            };
            *residual = previous[slot] - old * sign.powi(m as i32 - 1);
        }
        previous = expected_residuals[(m - 1) * batch * k * d..m * batch * k * d].to_vec();
    }
    let err = max_abs_diff("pdds_proxy_residuals", &proxy_residuals, &expected_residuals);
    // The reference's float operations in its order: measured 0.
    prop_assert!(err == 0.0, "residuals err {}", err);
    let zero = Array2::<f32>::zeros((n, d));
    let mut expected = Vec::new();
    for b in 0..batch {
        let slots: Vec<Array2<f32>> = (0..=order)
            .map(|m| {
                if m < stored {
                    Array2::from_shape_vec((n, d), cache[m * len + b * n * d..][..n * d].to_vec()).unwrap()
                } else {
                    zero.clone()
                }
            })
            .collect();
        let views: Vec<ArrayView2<f32>> = slots.iter().map(|a| a.view()).collect();
        let fresh_b = Array2::from_shape_vec((k, d), fresh[b * k * d..(b + 1) * k * d].to_vec()).unwrap();
        let simulated = pdds::simulate(
            &views,
            &proxies[b * k..(b + 1) * k],
            &labels[b * n..(b + 1) * n],
            fresh_b.view(),
            solver,
            sign,
        );
        expected.extend(flat(&simulated));
    }
    let err = max_abs_diff("pdds_simulate", &ours, &expected);
    report("pdds", err);
    // Inputs in [-1, 1], up to 4 orders: the confidence's norms and dot as warp sums vs the
    // reference's sequential/BLAS sums (theta within ~1e-7), the rest the same operations.
    // Measured max 4.8e-7.
    prop_assert!(err <= 2e-6, "err {}", err);
    Ok(())
}

/// Every solver, with one cluster and with as many clusters as tokens, a full cache and a cache
/// holding only the last output, in both sampling directions. The last is the largest order the
/// PDDS launches accept, `MAX_TAYLOR_ORDER` = 4 with five cached factors and four proxy
/// residuals (one more is refused: `sim_largest_shapes.rs`).
#[test]
fn pdds_matches_for_every_solver_at_k_1_and_k_n() {
    let solvers = [
        Solver::ImplicitEuler,
        Solver::Bdf2,
        Solver::ImplicitTaylor(1),
        Solver::ImplicitTaylor(2),
        Solver::ImplicitTaylor(3),
        Solver::ImplicitTaylor(MAX_TAYLOR_ORDER as usize),
    ];
    let n = 33;
    for solver in solvers {
        for k in [1, n] {
            for stored in [1, solver.order() + 1] {
                for flow in [false, true] {
                    support::in_every_block_order(|| check_pdds(2, n, 40, k, solver, stored, flow, 17))
                        .unwrap_or_else(|e| panic!("{solver:?}, K = {k}, {stored} stored, flow {flow}: {e}"));
                }
            }
        }
    }
}

/// The K-medoids loop (assign, update, repeat) on the similarities of `n` random tokens,
/// quantised to quarters when `ties`, against the reference.
fn check_kmedoids_loop(
    batch: usize,
    n: usize,
    k: usize,
    seed: u64,
    ties: bool,
    iters: usize,
) -> Result<(), TestCaseError> {
    let sims: Vec<Array2<f32>> = (0..batch as u64)
        .map(|b| {
            let x = Array2::from_shape_vec((n, 6), values(seed ^ b, n * 6, 1.0)).unwrap();
            let s = tetc::cosine_similarity_matrix(x.view());
            if ties { s.mapv(|v| (v * 4.0).round() / 4.0) } else { s }
        })
        .collect();
    let dev = &mut SimDevice::new();
    let s_all: Vec<f32> = sims.iter().flat_map(flat).collect();
    let si = up(dev, &s_all);
    let labels = zeros(dev, batch * n);
    let medoids = [zeros(dev, batch * k), zeros(dev, batch * k)];
    let at = caching::k_medoids(dev, si, labels, medoids, batch, n, k, iters).unwrap();
    let (labels, medoids) = (down(dev, labels), down(dev, medoids[at]));
    for (b, sim) in sims.iter().enumerate() {
        let expected = tetc::k_medoids(sim.view(), k, iters);
        prop_assert_eq!(usizes(&labels[b * n..(b + 1) * n]), expected.labels);
        prop_assert_eq!(usizes(&medoids[b * k..(b + 1) * k]), expected.medoids);
    }
    Ok(())
}

/// K-medoids with one cluster and with every token its own cluster, around the 128-thread
/// medoid block.
#[test]
fn kmedoids_loop_matches_at_k_1_and_k_n() {
    for n in [2, 127, 128, 129] {
        for k in [1, n] {
            for ties in [false, true] {
                support::in_every_block_order(|| check_kmedoids_loop(2, n, k, 5, ties, 3))
                    .unwrap_or_else(|e| panic!("N = {n}, K = {k}, ties {ties}: {e}"));
            }
        }
    }
}
