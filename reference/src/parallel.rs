//! Keeping rayon's workers awake through a forward pass.
//!
//! A forward pass is a chain of short parallel regions (every product split over the cores, the
//! norms, the gated adds, PDDS) with short sequential parts between them. A rayon worker that
//! finds no work spins for a few microseconds, then sleeps; the next region must wake it, and on
//! a virtual machine that is an inter-processor interrupt to a halted vCPU. Measured on a
//! 2-core AMD EPYC Zen 3 VM (`rayon::join` of two 200 us halves after a sequential gap): 26 us of
//! overhead per join with no gap, 113 us after a 100 us gap, 214 us after 1 ms. A ResCa sparse
//! step of DiT-B/2 has ~100 such regions: keeping the workers awake took it from 61-74 ms to
//! 51-57 ms (three alternated pairs of runs).
//!
//! [`with_workers_awake`] runs a closure on a pool worker while every other worker spins in a
//! loop that takes any pending job at once (`rayon::yield_now`) instead of sleeping. The cores
//! stay busy for the whole pass, which is what a compute engine owns them for anyway; set
//! `RESCA_WORKERS=sleep` to keep rayon's usual sleeping workers (e.g. on a machine shared with
//! other work).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for the spinning workers to start before going on without them (they are
/// asleep when the pass begins; waking them takes ~0.1 ms here).
const SPINNER_START_WAIT: Duration = Duration::from_millis(2);

/// A spinner that finds no work for this long goes back to rayon's usual sleep. A forward pass's
/// sequential parts last well under a millisecond; the limit only bounds the cases where a
/// spinner could hold up other work (see [`with_workers_awake`]).
const SPINNER_MAX_IDLE: Duration = Duration::from_millis(50);

/// Set while some caller keeps the workers awake: one at a time.
static WORKERS_HELD: AtomicBool = AtomicBool::new(false);

/// Whether [`with_workers_awake`] keeps the workers spinning: unless `RESCA_WORKERS=sleep`.
pub fn keeps_workers_awake() -> bool {
    static AWAKE: OnceLock<bool> = OnceLock::new();
    *AWAKE.get_or_init(|| std::env::var("RESCA_WORKERS").map_or(true, |v| v != "sleep"))
}

/// Sets a flag when dropped, so that a panic in the caller's closure also ends its spinners.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `f` with rayon's other workers spinning until it returns (see the module doc). Called
/// from inside a rayon pool, with one thread, with `RESCA_WORKERS=sleep`, or while another
/// caller holds the workers, it just runs `f`.
///
/// A spinner is a job that waits for a flag, which rayon does not expect of a job: if a worker
/// takes one while it is inside another job, that job stays suspended under the spinner. With one
/// caller at a time that job can only be one of the caller's own; and a spinner that finds no
/// work for [`SPINNER_MAX_IDLE`] returns, so nothing can wait on it for longer than that.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let spinners = rayon::current_num_threads().saturating_sub(1);
    if spinners == 0
        || rayon::current_thread_index().is_some()
        || !keeps_workers_awake()
        || WORKERS_HELD
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return f();
    }
    let _release = SetOnDrop(&WORKERS_HELD);
    let spinning = AtomicBool::new(true);
    let started = AtomicUsize::new(0);
    let (spinning, started) = (&spinning, &started);
    rayon::scope(|scope| {
        let caller = rayon::current_thread_index();
        for _ in 0..spinners {
            scope.spawn(move |_| {
                // A spinner the caller's own thread picks up (while it waits inside a join) must
                // return at once: it would spin above the caller's frames, holding them up.
                if rayon::current_thread_index() == caller {
                    return;
                }
                started.fetch_add(1, Ordering::Release);
                let mut idle_since = Instant::now();
                while spinning.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle_since = Instant::now();
                    } else if idle_since.elapsed() > SPINNER_MAX_IDLE {
                        return;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let waiting = Instant::now();
        while started.load(Ordering::Acquire) < spinners && waiting.elapsed() < SPINNER_START_WAIT {
            std::hint::spin_loop();
        }
        let _stop = SetOnDrop(spinning);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn returns_the_closures_result_and_runs_it_inline_with_one_thread() {
        let (on_worker, sum) = with_workers_awake(|| {
            let sum: u64 = (0..10_000u64).into_par_iter().map(|v| v * v).sum();
            (rayon::current_thread_index().is_some(), sum)
        });
        assert_eq!(sum, (0..10_000u64).map(|v| v * v).sum::<u64>());
        // With one thread (RAYON_NUM_THREADS=1) the closure runs on the caller, as documented.
        // (Another test may hold the workers at this moment, so only the one-thread case is
        // certain.)
        if rayon::current_num_threads() == 1 || !keeps_workers_awake() {
            assert!(!on_worker);
        }
    }

    #[test]
    fn a_panic_in_the_closure_ends_the_spinners_and_propagates() {
        let caught = std::panic::catch_unwind(|| with_workers_awake(|| panic!("the closure failed")));
        assert!(caught.is_err());
        // The workers are free again: a later call runs and finishes.
        assert_eq!(with_workers_awake(|| (0..10u64).into_par_iter().sum::<u64>()), 45);
    }

    #[test]
    fn concurrent_callers_all_finish() {
        // One caller holds the workers, the others run as plain rayon callers meanwhile.
        let sums: Vec<u64> = std::thread::scope(|threads| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    threads.spawn(move || {
                        (0..50)
                            .map(|_| with_workers_awake(|| (0..1000u64).into_par_iter().map(|v| v * t).sum::<u64>()))
                            .sum()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        assert_eq!(sums, (0..4u64).map(|t| 50 * 499_500 * t).collect::<Vec<_>>());
    }

    #[test]
    fn nested_and_repeated_calls_finish() {
        // Inside the pool the inner call runs inline; many short calls in a row must each end
        // their spinners (a spinner left running would hang this test).
        for _ in 0..200 {
            let value = with_workers_awake(|| with_workers_awake(|| (0..100u64).into_par_iter().sum::<u64>()));
            assert_eq!(value, 4950);
        }
    }
}
