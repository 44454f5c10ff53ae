//! A GPU-semantics simulator for the kernel bodies of `resca-gpu-kernels`, in the spirit of
//! compute-sanitizer: [`run_grid`] runs a grid block by block, with every thread of a block live at
//! once as a stackful coroutine (corosensei) on one OS thread. A thread runs until it reaches a
//! barrier (`sync_threads`), a warp shuffle or its end; the scheduler then completes the
//! shuffles of warps whose lanes all arrived, and releases a barrier once every thread of the
//! block waits at it. Threads are resumed in a fixed order, so results are deterministic. Blocks
//! run in the order [`with_block_order`] sets (grid order by default): a GPU runs them in any
//! order, so a kernel whose result changes with the order is wrong.
//!
//! Reported as a typed [`SimError`] naming kernel, block, thread, index and source line:
//! * out-of-bounds global and shared loads and stores, and 16-byte shared loads not aligned to
//!   16 bytes,
//! * shared-memory races: two different threads touching the same word between two barriers,
//!   at least one of them writing,
//! * loads of shared words that no thread of the block has written during the launch,
//! * two blocks of one launch writing the same global element (on a GPU the last writer is
//!   whichever block runs last),
//! * barriers not reached by every thread of the block (a thread exited, or waits at another
//!   barrier), and warp collectives (shuffles, `ldmatrix`, `mma.sync`) not executed by every
//!   lane of the warp,
//! * `cp.async` destinations touched before the `cp.async.wait_group` that retires them,
//! * misaligned `ldmatrix` rows and `cp.async` addresses, TF32 `mma.sync` operands that were
//!   not rounded to TF32, warp collectives in a partial warp,
//! * panics of a kernel body (e.g. arithmetic overflow in a debug build).
//!
//! The tensor-core and asynchronous-copy instructions are modelled as follows (docs/gpu.md,
//! "Simulator models"):
//! * `ldmatrix` and `mma.sync` are warp collectives, like the shuffles: each lane hands the
//!   scheduler its operands (for `ldmatrix` the row at its address, read by the lane itself
//!   through the race detector) and gets its part of the result, assembled from the PTX ISA
//!   fragment tables ([`mma`]);
//! * `cp.async` reads its source when issued (checked as a store to the destination at that
//!   point), marks the destination words pending, and writes them, again as a store of the
//!   issuing thread, when `cp.async.wait_group` retires the group; any access to a pending word
//!   is a [`SimError::AsyncCopyPending`], so a missing wait is caught every time;
//! * dynamic shared memory is the block's shared memory sized by the launch, up to the 227 KiB
//!   a block may have on Hopper ([`MAX_SHARED_BYTES`]).
//!
//! Shared memory starts every block filled with a NaN pattern, like the garbage of real shared
//! memory; a load of a word the block has not written is reported rather than read.
//!
//! [`SimDevice`] (in [`device`]) is the pipeline's `Device` on the simulator
//! (`crate::pipeline`): the CLI's `--backend sim`.

pub mod device;
pub mod mma;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use resca_gpu_kernels::{Dim3, Global, GlobalMut, LaunchDims, SharedWord, ThreadCtx, WARP_SIZE};

pub use device::SimDevice;

/// Largest block CUDA allows.
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
/// Largest shared memory per block, static and dynamic together: 227 KiB on Hopper (H100),
/// which a kernel gets beyond the 48 KiB of static `.shared` declarations only as dynamic shared
/// memory with its `MAX_DYNAMIC_SHARED_SIZE_BYTES` raised (Ampere's A100 allows 163 KiB).
pub const MAX_SHARED_BYTES: u32 = 227 * 1024;
/// Stack of each simulated thread.
const STACK_BYTES: usize = 256 * 1024;
/// What fresh shared memory holds: a quiet NaN with a recognisable payload.
const SHARED_POISON: u32 = 0x7fc0_dead;

/// A thread or block coordinate, printed as `(x, y, z)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Coord {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl fmt::Display for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {})", self.x, self.y, self.z)
    }
}

impl Coord {
    /// The coordinate of linear index `rank` in an extent (x fastest).
    fn of_rank(rank: u64, extent: Dim3) -> Self {
        let (ex, ey) = (extent.x as u64, extent.y as u64);
        Self {
            x: (rank % ex) as u32,
            y: (rank / ex % ey) as u32,
            z: (rank / (ex * ey)) as u32,
        }
    }
}

/// Which memory an access went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Global => "global",
            Space::Shared => "shared",
        })
    }
}

/// Whether an access read or wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Load,
    Store,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Load => "load",
            Access::Store => "store",
        })
    }
}

/// What the simulator found wrong with a launch.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("kernel `{kernel}`: invalid launch: {reason}")]
    InvalidLaunch { kernel: String, reason: String },
    #[error(
        "kernel `{kernel}` block {block} thread {thread}: {space} {access} out of bounds: index {index} of \
         {len} elements (address {address:#x}) at {site}"
    )]
    OutOfBounds {
        kernel: String,
        block: Coord,
        thread: Coord,
        space: Space,
        access: Access,
        index: usize,
        len: usize,
        address: usize,
        site: String,
    },
    #[error(
        "kernel `{kernel}` block {block} thread {thread}: 16-byte shared load at word {index} (byte address \
         {address:#x}) is not 16-byte aligned, at {site}"
    )]
    MisalignedShared {
        kernel: String,
        block: Coord,
        thread: Coord,
        index: usize,
        address: usize,
        site: String,
    },
    #[error(
        "kernel `{kernel}` block {block}: shared-memory race on word {index} (byte address {address:#x}): \
         thread {first} did a {first_access} and thread {second} a {second_access} with no barrier in \
         between (the second at {site})"
    )]
    SharedRace {
        kernel: String,
        block: Coord,
        index: usize,
        address: usize,
        first: Coord,
        first_access: Access,
        second: Coord,
        second_access: Access,
        site: String,
    },
    #[error(
        "kernel `{kernel}` block {block}: barrier at {site} not reached by every thread: thread {waiting} \
         waits there, thread {other} {other_state}"
    )]
    DivergentBarrier {
        kernel: String,
        block: Coord,
        site: String,
        waiting: Coord,
        other: Coord,
        other_state: String,
    },
    #[error(
        "kernel `{kernel}` block {block}: warp shuffle at {site} not executed by every lane of warp {warp}: \
         thread {waiting} waits there, thread {other} {other_state} (the same holds for ldmatrix and mma.sync)"
    )]
    DivergentShuffle {
        kernel: String,
        block: Coord,
        warp: u32,
        site: String,
        waiting: Coord,
        other: Coord,
        other_state: String,
    },
    #[error(
        "kernel `{kernel}` block {block} thread {thread}: warp shuffle at {site} reads lane {lane}, which is \
         not a thread of this block"
    )]
    ShuffleLane {
        kernel: String,
        block: Coord,
        thread: Coord,
        lane: u32,
        site: String,
    },
    #[error(
        "kernel `{kernel}` block {block} thread {thread}: shared load of word {index} (byte address \
         {address:#x}), which no thread of the block has written during the launch, at {site} (a word \
         never stored, or a barrier missing between the store and this load)"
    )]
    UnwrittenSharedLoad {
        kernel: String,
        block: Coord,
        thread: Coord,
        index: usize,
        address: usize,
        site: String,
    },
    #[error(
        "kernel `{kernel}`: blocks {first_block} and {second_block} both write element {index} of global \
         buffer {buffer} (the second at {site} by thread {thread}); the result depends on the block order"
    )]
    GlobalWriteConflict {
        kernel: String,
        buffer: String,
        index: usize,
        first_block: Coord,
        second_block: Coord,
        thread: Coord,
        site: String,
    },
    #[error(
        "kernel `{kernel}` block {block} thread {thread}: shared {access} of word {index} (byte address \
         {address:#x}) at {site} while a cp.async of thread {issuer} to it is pending (a missing \
         cp.async.wait_group, or a missing barrier after it)"
    )]
    AsyncCopyPending {
        kernel: String,
        block: Coord,
        thread: Coord,
        access: Access,
        index: usize,
        address: usize,
        issuer: Coord,
        site: String,
    },
    #[error("kernel `{kernel}` block {block} thread {thread}: {instruction} at {site}: {reason}")]
    BadOperand {
        kernel: String,
        block: Coord,
        thread: Coord,
        instruction: &'static str,
        reason: String,
        site: String,
    },
    #[error("kernel `{kernel}` block {block} thread {thread} panicked: {message}")]
    Panic {
        kernel: String,
        block: Coord,
        thread: Coord,
        message: String,
    },
}

/// The kinds of warp shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShuffleKind {
    Xor,
    Down,
    Idx,
}

/// A warp-collective instruction: every lane of the warp executes it at the same site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collective {
    /// `shfl.sync`; operands: the value, then the lane mask / delta / source lane.
    Shuffle(ShuffleKind),
    /// `ldmatrix` of `matrices` 8 x 8 b16 matrices; operands: the 4 words of the lane's row.
    LdMatrix { matrices: u32, trans: bool },
    /// `mma.sync`; operands: a0..a3, b0, b1, c0..c3.
    Mma(mma::MmaShape),
}

impl Collective {
    fn name(self) -> &'static str {
        match self {
            Collective::Shuffle(_) => "warp shuffle",
            Collective::LdMatrix { .. } => "ldmatrix",
            Collective::Mma(_) => "mma.sync",
        }
    }
}

/// The operands a lane hands to a warp collective.
type Operands = [u32; 10];
/// What a warp collective hands back to a lane (a shuffled value in the first word).
type Results = [u32; 4];

type Site = &'static Location<'static>;

/// What a simulated thread hands the scheduler when it suspends.
enum Event {
    Barrier(Site),
    Collective {
        site: Site,
        op: Collective,
        operands: Operands,
    },
    Fault(Box<SimError>),
}

/// Where a thread stands between scheduler rounds.
#[derive(Clone, Copy)]
enum State {
    /// Runnable, with what its pending collective returns (zeros after a barrier).
    Ready(Results),
    Barrier(Site),
    Collective {
        site: Site,
        op: Collective,
        operands: Operands,
    },
    Done,
}

impl State {
    fn describe(&self) -> String {
        match self {
            State::Ready(_) => "is running".to_string(),
            State::Barrier(site) => format!("waits at the barrier at {site}"),
            State::Collective { site, op, .. } => format!("waits at the {} at {site}", op.name()),
            State::Done => "has exited".to_string(),
        }
    }
}

/// One `cp.async` in flight: the words it writes and where.
struct AsyncCopy {
    dst: usize,
    words: [u32; 4],
    len: usize,
}

/// A thread's `cp.async`s: those issued since the last commit, and the committed groups,
/// oldest first.
#[derive(Default)]
struct AsyncCopies {
    uncommitted: Vec<AsyncCopy>,
    groups: VecDeque<Vec<AsyncCopy>>,
}

/// Shadow state of one shared word since the last barrier (epoch): who wrote and read it.
/// Thread ids are `rank + 1`; 0 means nobody.
#[derive(Clone, Copy, Default)]
struct Shadow {
    epoch: u32,
    writer: u32,
    first_reader: u32,
    /// The latest reader other than `first_reader`, if any.
    other_reader: u32,
}

/// The shared memory of the block being simulated.
struct BlockShared {
    words: Vec<u32>,
    shadow: Vec<Shadow>,
    /// Whether a thread of the block has stored to the word during the launch.
    written: Vec<bool>,
    /// The thread id (`rank + 1`) whose `cp.async` to the word is pending, or 0.
    pending: Vec<u32>,
    epoch: u32,
}

/// The order in which [`run_grid`] runs the blocks of a grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlockOrder {
    /// Grid order, x fastest.
    #[default]
    InOrder,
    /// Grid order backwards: the last block first.
    Reversed,
    /// A random permutation drawn from the seed (the same seed, the same order).
    Shuffled(u64),
}

thread_local! {
    /// The block order of this thread's launches.
    static BLOCK_ORDER: Cell<BlockOrder> = const { Cell::new(BlockOrder::InOrder) };
}

/// The block order of this thread's launches.
pub fn block_order() -> BlockOrder {
    BLOCK_ORDER.with(Cell::get)
}

/// Runs `f` with this thread's launches running their blocks in `order`; the previous order is
/// restored afterwards, also when `f` panics.
pub fn with_block_order<R>(order: BlockOrder, f: impl FnOnce() -> R) -> R {
    struct Restore(BlockOrder);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCK_ORDER.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(BLOCK_ORDER.with(|o| o.replace(order)));
    f()
}

/// The block ranks of a grid of `count` blocks in `order`.
fn block_ranks(count: u64, order: BlockOrder) -> Vec<u64> {
    let mut ranks: Vec<u64> = (0..count).collect();
    match order {
        BlockOrder::InOrder => {}
        BlockOrder::Reversed => ranks.reverse(),
        BlockOrder::Shuffled(seed) => ranks.shuffle(&mut ChaCha8Rng::seed_from_u64(seed)),
    }
    ranks
}

/// Which block wrote each element of the global buffers a launch stores to, to find two blocks
/// writing the same element. Buffers are told apart by their first element's address.
#[derive(Default)]
struct GlobalWrites {
    buffers: Vec<WrittenBuffer>,
}

struct WrittenBuffer {
    base: usize,
    /// Per element: the writing block's rank + 1, or 0.
    writer: Vec<u64>,
}

impl GlobalWrites {
    /// Records that block `rank` stored element `index` of the buffer at `base` (of `len`
    /// elements); returns the rank of another block that stored it before, if any.
    fn record(&mut self, base: usize, len: usize, index: usize, rank: u64) -> Option<u64> {
        let buffer = match self
            .buffers
            .iter()
            .position(|b| b.base == base && b.writer.len() == len)
        {
            Some(i) => &mut self.buffers[i],
            None => {
                self.buffers.push(WrittenBuffer {
                    base,
                    writer: vec![0; len],
                });
                self.buffers.last_mut().unwrap()
            }
        };
        let previous = std::mem::replace(&mut buffer.writer[index], rank + 1);
        (previous != 0 && previous != rank + 1).then(|| previous - 1)
    }
}

/// A name for a global buffer in error messages: a kernel parameter's name and the address of
/// the slice the parameter was bound to.
#[derive(Clone, Debug)]
pub struct BufferName {
    pub name: String,
    pub base: usize,
}

/// Identity of a launch and block, for error messages, and the launch's record of global writes.
struct LaunchInfo<'a> {
    kernel: &'a str,
    grid: Dim3,
    block_dim: Dim3,
    block: Coord,
    block_rank: u64,
    buffer_names: &'a [BufferName],
    global_writes: &'a RefCell<GlobalWrites>,
}

/// One simulated GPU thread: what a kernel body gets as its [`ThreadCtx`] in the simulator.
pub struct SimThread<'a> {
    info: &'a LaunchInfo<'a>,
    thread: Coord,
    rank: u32,
    shared: &'a RefCell<BlockShared>,
    copies: RefCell<AsyncCopies>,
    yielder: &'a Yielder<Results, Event>,
}

impl SimThread<'_> {
    /// Stops this thread with an error; the launch fails with it. Never returns: the scheduler
    /// never resumes a faulted thread (it is unwound when the launch ends).
    fn fault(&self, error: SimError) -> ! {
        self.yielder.suspend(Event::Fault(Box::new(error)));
        unreachable!("a faulted simulated thread is never resumed")
    }

    fn out_of_bounds(&self, space: Space, access: Access, index: usize, len: usize, address: usize, site: Site) -> ! {
        self.fault(SimError::OutOfBounds {
            kernel: self.info.kernel.to_string(),
            block: self.info.block,
            thread: self.thread,
            space,
            access,
            index,
            len,
            address,
            site: site.to_string(),
        })
    }

    fn coord_of(&self, id: u32) -> Coord {
        Coord::of_rank(id as u64 - 1, self.info.block_dim)
    }

    /// Records a shared access in the shadow and checks it against the other threads' accesses
    /// since the last barrier.
    fn shared_access(&self, index: usize, access: Access, site: Site) {
        let shared = self.shared.borrow_mut();
        let len = shared.words.len();
        if index >= len {
            drop(shared);
            self.out_of_bounds(Space::Shared, access, index, len, index * 4, site);
        }
        let issuer = shared.pending[index];
        if issuer != 0 {
            drop(shared);
            self.fault(SimError::AsyncCopyPending {
                kernel: self.info.kernel.to_string(),
                block: self.info.block,
                thread: self.thread,
                access,
                index,
                address: index * 4,
                issuer: self.coord_of(issuer),
                site: site.to_string(),
            });
        }
        if access == Access::Load && !shared.written[index] {
            drop(shared);
            self.fault(SimError::UnwrittenSharedLoad {
                kernel: self.info.kernel.to_string(),
                block: self.info.block,
                thread: self.thread,
                index,
                address: index * 4,
                site: site.to_string(),
            });
        }
        self.record_access(shared, index, access, site);
    }

    /// The race check and shadow update of [`SimThread::shared_access`] (also for the writes of
    /// a retiring `cp.async`, which are the issuer's own and are not pending any more).
    fn record_access(&self, mut shared: std::cell::RefMut<'_, BlockShared>, index: usize, access: Access, site: Site) {
        let epoch = shared.epoch;
        let me = self.rank + 1;
        let s = &mut shared.shadow[index];
        if s.epoch != epoch {
            *s = Shadow {
                epoch,
                ..Shadow::default()
            };
        }
        let conflict = match access {
            Access::Load => (s.writer != 0 && s.writer != me).then_some((s.writer, Access::Store)),
            Access::Store => {
                if s.writer != 0 && s.writer != me {
                    Some((s.writer, Access::Store))
                } else if s.first_reader != 0 && s.first_reader != me {
                    Some((s.first_reader, Access::Load))
                } else if s.other_reader != 0 && s.other_reader != me {
                    Some((s.other_reader, Access::Load))
                } else {
                    None
                }
            }
        };
        if let Some((other, other_access)) = conflict {
            drop(shared);
            self.fault(SimError::SharedRace {
                kernel: self.info.kernel.to_string(),
                block: self.info.block,
                index,
                address: index * 4,
                first: self.coord_of(other),
                first_access: other_access,
                second: self.thread,
                second_access: access,
                site: site.to_string(),
            });
        }
        match access {
            Access::Load if s.first_reader == 0 => s.first_reader = me,
            Access::Load if s.first_reader != me => s.other_reader = me,
            Access::Load => {}
            Access::Store => s.writer = me,
        }
        if access == Access::Store {
            shared.written[index] = true;
        }
    }

    /// Records a global store and reports it when another block of the launch stored the same
    /// element.
    fn global_store(&self, base: usize, len: usize, index: usize, site: Site) {
        let info = self.info;
        let Some(first) = info
            .global_writes
            .borrow_mut()
            .record(base, len, index, info.block_rank)
        else {
            return;
        };
        let buffer = match info.buffer_names.iter().find(|b| b.base == base) {
            Some(b) => format!("`{}`", b.name),
            None => format!("at {base:#x} ({len} elements)"),
        };
        self.fault(SimError::GlobalWriteConflict {
            kernel: info.kernel.to_string(),
            buffer,
            index,
            first_block: Coord::of_rank(first, info.grid),
            second_block: info.block,
            thread: self.thread,
            site: site.to_string(),
        })
    }

    fn shuffle(&self, kind: ShuffleKind, value: f32, arg: u32, site: Site) -> f32 {
        let mut operands = [0; 10];
        operands[0] = value.to_bits();
        operands[1] = arg;
        f32::from_bits(self.collective(Collective::Shuffle(kind), operands, site)[0])
    }

    fn collective(&self, op: Collective, operands: Operands, site: Site) -> Results {
        self.yielder.suspend(Event::Collective { site, op, operands })
    }

    fn bad_operand(&self, instruction: &'static str, reason: String, site: Site) -> ! {
        self.fault(SimError::BadOperand {
            kernel: self.info.kernel.to_string(),
            block: self.info.block,
            thread: self.thread,
            instruction,
            reason,
            site: site.to_string(),
        })
    }

    /// `ldmatrix` of `matrices` matrices: lanes `0 .. 8 matrices` read their row (4 words at a
    /// 16-byte aligned word index) and hand it over; the scheduler deals out the fragments.
    fn ldmatrix(&self, row: usize, matrices: u32, trans: bool, site: Site) -> Results {
        let mut operands = [0; 10];
        if self.lane_id() < 8 * matrices {
            if !row.is_multiple_of(4) {
                self.bad_operand(
                    "ldmatrix",
                    format!("row address {:#x} (word {row}) is not 16-byte aligned", row * 4),
                    site,
                );
            }
            for (j, word) in operands[..4].iter_mut().enumerate() {
                self.shared_access(row + j, Access::Load, site);
                *word = self.shared.borrow().words[row + j];
            }
        }
        self.collective(Collective::LdMatrix { matrices, trans }, operands, site)
    }

    fn mma(&self, shape: mma::MmaShape, a: [u32; 4], b: [u32; 2], c: [f32; 4], site: Site) -> [f32; 4] {
        if shape == mma::MmaShape::Tf32M16n8k8 {
            for (name, v) in [
                ("a0", a[0]),
                ("a1", a[1]),
                ("a2", a[2]),
                ("a3", a[3]),
                ("b0", b[0]),
                ("b1", b[1]),
            ] {
                if v & mma::TF32_DROPPED_BITS != 0 {
                    self.bad_operand(
                        "mma.sync m16n8k8 tf32",
                        format!(
                            "operand {name} = {v:#010x} is not a TF32 value (its low 13 bits are set: a \
                             missing cvt.rna.tf32.f32)"
                        ),
                        site,
                    );
                }
            }
        }
        let mut operands = [0; 10];
        operands[..4].copy_from_slice(&a);
        operands[4..6].copy_from_slice(&b);
        for (o, v) in operands[6..].iter_mut().zip(c) {
            *o = v.to_bits();
        }
        self.collective(Collective::Mma(shape), operands, site)
            .map(f32::from_bits)
    }
}

impl ThreadCtx for SimThread<'_> {
    fn thread_idx_x(&self) -> u32 {
        self.thread.x
    }
    fn thread_idx_y(&self) -> u32 {
        self.thread.y
    }
    fn thread_idx_z(&self) -> u32 {
        self.thread.z
    }
    fn block_idx_x(&self) -> u32 {
        self.info.block.x
    }
    fn block_idx_y(&self) -> u32 {
        self.info.block.y
    }
    fn block_idx_z(&self) -> u32 {
        self.info.block.z
    }
    fn block_dim_x(&self) -> u32 {
        self.info.block_dim.x
    }
    fn block_dim_y(&self) -> u32 {
        self.info.block_dim.y
    }
    fn block_dim_z(&self) -> u32 {
        self.info.block_dim.z
    }
    fn grid_dim_x(&self) -> u32 {
        self.info.grid.x
    }
    fn grid_dim_y(&self) -> u32 {
        self.info.grid.y
    }
    fn grid_dim_z(&self) -> u32 {
        self.info.grid.z
    }

    fn sync_threads(&self) {
        self.yielder.suspend(Event::Barrier(Location::caller()));
    }

    /// `fma.rn.f32` is IEEE 754's fused multiply-add, which `f32::mul_add` computes exactly.
    fn fma(&self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    fn tf32(&self, x: f32) -> f32 {
        mma::tf32(x)
    }

    fn bf16x2(&self, lo: f32, hi: f32) -> u32 {
        mma::bf16(lo) as u32 | (mma::bf16(hi) as u32) << 16
    }

    fn mma_tf32_m16n8k8(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        self.mma(mma::MmaShape::Tf32M16n8k8, a, b, c, Location::caller())
    }

    fn mma_bf16_m16n8k16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        self.mma(mma::MmaShape::Bf16M16n8k16, a, b, c, Location::caller())
    }

    fn ldmatrix_x1(&self, row: usize) -> u32 {
        self.ldmatrix(row, 1, false, Location::caller())[0]
    }

    fn ldmatrix_x2(&self, row: usize) -> [u32; 2] {
        let r = self.ldmatrix(row, 2, false, Location::caller());
        [r[0], r[1]]
    }

    fn ldmatrix_x4(&self, row: usize) -> [u32; 4] {
        self.ldmatrix(row, 4, false, Location::caller())
    }

    fn ldmatrix_x4_trans(&self, row: usize) -> [u32; 4] {
        self.ldmatrix(row, 4, true, Location::caller())
    }

    fn cp_async<T: SharedWord>(&self, dst: usize, src: Global<'_, T>, index: usize, words: u32, read: bool) {
        let site = Location::caller();
        let len = words as usize;
        if !matches!(words, 1 | 2 | 4) {
            self.bad_operand("cp.async", format!("{words} words: a copy is 1, 2 or 4 words"), site);
        }
        if !dst.is_multiple_of(len) || !index.is_multiple_of(len) {
            self.bad_operand(
                "cp.async",
                format!(
                    "a {}-byte copy from element {index} to shared word {dst}: both must be aligned to its size",
                    4 * len
                ),
                site,
            );
        }
        let mut data = [0u32; 4];
        if read {
            if index + len > src.len() {
                let address = src.as_ptr() as usize + index * 4;
                self.out_of_bounds(Space::Global, Access::Load, index + len - 1, src.len(), address, site);
            }
            for (j, word) in data[..len].iter_mut().enumerate() {
                // SAFETY: in bounds (checked above) of a buffer valid as for `load`.
                *word = unsafe { *src.as_ptr().add(index + j) }.to_word();
            }
        }
        // The hardware may write the destination any time until the wait: check it as a store now.
        for j in 0..len {
            self.shared_access(dst + j, Access::Store, site);
        }
        let mut shared = self.shared.borrow_mut();
        for j in 0..len {
            shared.pending[dst + j] = self.rank + 1;
        }
        drop(shared);
        self.copies
            .borrow_mut()
            .uncommitted
            .push(AsyncCopy { dst, words: data, len });
    }

    fn cp_async_commit(&self) {
        let mut copies = self.copies.borrow_mut();
        let group = std::mem::take(&mut copies.uncommitted);
        copies.groups.push_back(group);
    }

    fn cp_async_wait(&self, pending: u32) {
        let site = Location::caller();
        loop {
            let group = {
                let mut copies = self.copies.borrow_mut();
                if copies.groups.len() <= pending as usize {
                    return;
                }
                copies.groups.pop_front().expect("a committed group")
            };
            for copy in group {
                for j in 0..copy.len {
                    let mut shared = self.shared.borrow_mut();
                    shared.pending[copy.dst + j] = 0;
                    shared.words[copy.dst + j] = copy.words[j];
                    self.record_access(shared, copy.dst + j, Access::Store, site);
                }
            }
        }
    }

    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        self.shuffle(ShuffleKind::Xor, value, lane_mask, Location::caller())
    }

    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        self.shuffle(ShuffleKind::Down, value, delta, Location::caller())
    }

    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        self.shuffle(ShuffleKind::Idx, value, src_lane, Location::caller())
    }

    fn shared_load<T: SharedWord>(&self, index: usize) -> T {
        self.shared_access(index, Access::Load, Location::caller());
        T::from_word(self.shared.borrow().words[index])
    }

    /// Checks the alignment, then each word as [`ThreadCtx::shared_load`] does.
    fn shared_load4(&self, index: usize) -> [f32; 4] {
        let site = Location::caller();
        if !index.is_multiple_of(4) {
            self.fault(SimError::MisalignedShared {
                kernel: self.info.kernel.to_string(),
                block: self.info.block,
                thread: self.thread,
                index,
                address: index * 4,
                site: site.to_string(),
            });
        }
        let mut words = [0.0f32; 4];
        for (i, word) in words.iter_mut().enumerate() {
            self.shared_access(index + i, Access::Load, site);
            *word = f32::from_bits(self.shared.borrow().words[index + i]);
        }
        words
    }

    fn shared_store<T: SharedWord>(&self, index: usize, value: T) {
        self.shared_access(index, Access::Store, Location::caller());
        self.shared.borrow_mut().words[index] = value.to_word();
    }

    fn load<T: Copy>(&self, buffer: Global<'_, T>, index: usize) -> T {
        if index >= buffer.len() {
            let address = buffer.as_ptr() as usize + index * size_of::<T>();
            self.out_of_bounds(
                Space::Global,
                Access::Load,
                index,
                buffer.len(),
                address,
                Location::caller(),
            );
        }
        // SAFETY: in bounds of a buffer made from a live slice (`Global::new`) or a valid raw
        // pointer (`Global::from_raw`'s contract); simulated threads run on one OS thread.
        unsafe { *buffer.as_ptr().add(index) }
    }

    fn store<T: Copy>(&self, buffer: GlobalMut<'_, T>, index: usize, value: T) {
        if index >= buffer.len() {
            let address = buffer.as_mut_ptr() as usize + index * size_of::<T>();
            self.out_of_bounds(
                Space::Global,
                Access::Store,
                index,
                buffer.len(),
                address,
                Location::caller(),
            );
        }
        self.global_store(buffer.as_mut_ptr() as usize, buffer.len(), index, Location::caller());
        // SAFETY: as for `load`; writes through the pointer of an exclusively borrowed slice.
        unsafe { *buffer.as_mut_ptr().add(index) = value }
    }
}

thread_local! {
    /// Coroutine stacks kept between launches (mapping a stack is the expensive part).
    static STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

fn take_stacks(n: usize) -> Vec<DefaultStack> {
    let mut stacks = STACKS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let keep = pool.len().saturating_sub(n);
        pool.split_off(keep)
    });
    while stacks.len() < n {
        stacks.push(DefaultStack::new(STACK_BYTES).expect("mapping a coroutine stack"));
    }
    stacks
}

fn return_stacks(stacks: Vec<DefaultStack>) {
    STACKS.with(|pool| pool.borrow_mut().extend(stacks));
}

fn check_dims(kernel: &str, dims: &LaunchDims) -> Result<(), SimError> {
    let invalid = |reason: String| {
        Err(SimError::InvalidLaunch {
            kernel: kernel.to_string(),
            reason,
        })
    };
    let (grid, block) = (dims.grid, dims.block);
    if grid.count() == 0 || block.count() == 0 {
        return invalid(format!("empty grid {grid:?} or block {block:?}"));
    }
    if block.count() > MAX_THREADS_PER_BLOCK || block.z > 64 {
        return invalid(format!("block {block:?} exceeds 1024 threads (z <= 64)"));
    }
    if grid.y > 65535 || grid.z > 65535 {
        return invalid(format!("grid {grid:?} exceeds 65535 blocks in y or z"));
    }
    if dims.shared_bytes > MAX_SHARED_BYTES || !dims.shared_bytes.is_multiple_of(4) {
        return invalid(format!(
            "{} bytes of shared memory (at most {MAX_SHARED_BYTES}, the device's limit per block, and a \
             multiple of 4)",
            dims.shared_bytes
        ));
    }
    Ok(())
}

/// Runs `body` as kernel `kernel` over the grid, block by block in the thread's
/// [`block_order`], every thread of a block live at once. The first error found stops the
/// launch; what the kernel wrote before it stays written.
pub fn run_grid<F>(kernel: &str, dims: LaunchDims, body: F) -> Result<(), SimError>
where
    F: Fn(&SimThread<'_>),
{
    run_grid_with_buffer_names(kernel, dims, &[], body)
}

/// [`run_grid`], with names for the global buffers that errors name (those not named are named
/// by their address).
pub fn run_grid_with_buffer_names<F>(
    kernel: &str,
    dims: LaunchDims,
    buffer_names: &[BufferName],
    body: F,
) -> Result<(), SimError>
where
    F: Fn(&SimThread<'_>),
{
    check_dims(kernel, &dims)?;
    let threads = dims.block.count() as usize;
    let words = dims.shared_bytes as usize / 4;
    let shared = RefCell::new(BlockShared {
        words: vec![SHARED_POISON; words],
        shadow: vec![Shadow::default(); words],
        written: vec![false; words],
        pending: vec![0; words],
        epoch: 0,
    });
    let global_writes = RefCell::new(GlobalWrites::default());
    let mut stacks = take_stacks(threads);
    let mut result = Ok(());
    for rank in block_ranks(dims.grid.count(), block_order()) {
        let info = LaunchInfo {
            kernel,
            grid: dims.grid,
            block_dim: dims.block,
            block: Coord::of_rank(rank, dims.grid),
            block_rank: rank,
            buffer_names,
            global_writes: &global_writes,
        };
        {
            let mut s = shared.borrow_mut();
            s.epoch += 1;
            s.words.fill(SHARED_POISON);
            s.written.fill(false);
            s.pending.fill(0);
        }
        let (outcome, reclaimed) = run_block(&info, threads, &shared, &body, stacks);
        stacks = reclaimed;
        if let Err(e) = outcome {
            result = Err(e);
            break;
        }
    }
    return_stacks(stacks);
    result
}

type ThreadCoroutine = Coroutine<Results, Event, (), DefaultStack>;

/// Simulates one block: creates a coroutine per thread and schedules them round by round.
/// Returns the outcome and the stacks for reuse.
fn run_block<F>(
    info: &LaunchInfo<'_>,
    threads: usize,
    shared: &RefCell<BlockShared>,
    body: &F,
    mut stacks: Vec<DefaultStack>,
) -> (Result<(), SimError>, Vec<DefaultStack>)
where
    F: Fn(&SimThread<'_>),
{
    let mut coroutines: Vec<ThreadCoroutine> = Vec::with_capacity(threads);
    for rank in 0..threads {
        let stack = stacks.pop().expect("one stack per thread");
        let thread = Coord::of_rank(rank as u64, info.block_dim);
        let func = move |yielder: &Yielder<Results, Event>, _first: Results| {
            let ctx = SimThread {
                info,
                thread,
                rank: rank as u32,
                shared,
                copies: RefCell::new(AsyncCopies::default()),
                yielder,
            };
            body(&ctx);
        };
        // SAFETY: the closure borrows `info`, `shared` and `body`, which outlive every coroutine:
        // all of them are driven to completion or unwound below, before this function returns.
        coroutines.push(unsafe { Coroutine::with_stack_unchecked(stack, func) });
    }
    let outcome = schedule(info, shared, &mut coroutines);
    for mut coroutine in coroutines {
        coroutine.force_unwind();
        stacks.push(coroutine.into_stack());
    }
    (outcome, stacks)
}

fn schedule(
    info: &LaunchInfo<'_>,
    shared: &RefCell<BlockShared>,
    coroutines: &mut [ThreadCoroutine],
) -> Result<(), SimError> {
    let n = coroutines.len();
    let coord = |rank: usize| Coord::of_rank(rank as u64, info.block_dim);
    let kernel = || info.kernel.to_string();
    let mut states = vec![State::Ready([0; 4]); n];
    loop {
        for (rank, coroutine) in coroutines.iter_mut().enumerate() {
            let State::Ready(input) = states[rank] else { continue };
            let resumed = catch_unwind(AssertUnwindSafe(|| coroutine.resume(input)));
            states[rank] = match resumed {
                Ok(CoroutineResult::Yield(Event::Barrier(site))) => State::Barrier(site),
                Ok(CoroutineResult::Yield(Event::Collective { site, op, operands })) => {
                    State::Collective { site, op, operands }
                }
                Ok(CoroutineResult::Yield(Event::Fault(error))) => return Err(*error),
                Ok(CoroutineResult::Return(())) => State::Done,
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string panic payload".to_string());
                    return Err(SimError::Panic {
                        kernel: kernel(),
                        block: info.block,
                        thread: coord(rank),
                        message,
                    });
                }
            };
        }

        // Warp collectives: a warp proceeds once all of its lanes wait at the same one.
        let mut progressed = false;
        for warp_start in (0..n).step_by(WARP_SIZE as usize) {
            let lanes = warp_start..n.min(warp_start + WARP_SIZE as usize);
            let Some(first) = lanes.clone().find(|&r| matches!(states[r], State::Collective { .. })) else {
                continue;
            };
            let State::Collective {
                site: first_site,
                op: first_op,
                ..
            } = states[first]
            else {
                unreachable!()
            };
            let mut operands = [[0u32; 10]; WARP_SIZE as usize];
            for rank in lanes.clone() {
                match states[rank] {
                    State::Collective { site, op, operands: o } if site == first_site && op == first_op => {
                        operands[rank - warp_start] = o;
                    }
                    other => {
                        return Err(SimError::DivergentShuffle {
                            kernel: kernel(),
                            block: info.block,
                            warp: (warp_start / WARP_SIZE as usize) as u32,
                            site: first_site.to_string(),
                            waiting: coord(first),
                            other: coord(rank),
                            other_state: other.describe(),
                        });
                    }
                }
            }
            let width = lanes.len();
            let results = match first_op {
                Collective::Shuffle(kind) => {
                    let mut results = [[0u32; 4]; WARP_SIZE as usize];
                    for (lane, result) in results[..width].iter_mut().enumerate() {
                        let arg = operands[lane][1];
                        let lane = lane as u32;
                        let source = match kind {
                            ShuffleKind::Xor => lane ^ (arg & (WARP_SIZE - 1)),
                            ShuffleKind::Down => {
                                if lane + arg < WARP_SIZE {
                                    lane + arg
                                } else {
                                    lane
                                }
                            }
                            ShuffleKind::Idx => arg & (WARP_SIZE - 1),
                        };
                        if source as usize >= width {
                            return Err(SimError::ShuffleLane {
                                kernel: kernel(),
                                block: info.block,
                                thread: coord(warp_start + lane as usize),
                                lane: source,
                                site: first_site.to_string(),
                            });
                        }
                        result[0] = operands[source as usize][0];
                    }
                    results
                }
                Collective::LdMatrix { .. } | Collective::Mma(_) if width < WARP_SIZE as usize => {
                    return Err(SimError::BadOperand {
                        kernel: kernel(),
                        block: info.block,
                        thread: coord(first),
                        instruction: first_op.name(),
                        reason: format!("executed by a partial warp of {width} lanes (it needs all 32)"),
                        site: first_site.to_string(),
                    });
                }
                Collective::LdMatrix { matrices, trans } => mma::ldmatrix(&operands, matrices, trans),
                Collective::Mma(shape) => mma::mma(shape, &operands),
            };
            for rank in lanes {
                states[rank] = State::Ready(results[rank - warp_start]);
            }
            progressed = true;
        }
        if progressed {
            continue;
        }

        // Barrier: every thread must wait at the same one.
        let Some(waiting) = states.iter().position(|s| matches!(s, State::Barrier(_))) else {
            return Ok(()); // every thread has exited
        };
        let State::Barrier(site) = states[waiting] else {
            unreachable!()
        };
        for (rank, state) in states.iter().enumerate() {
            let same = matches!(state, State::Barrier(s) if *s == site);
            if !same {
                return Err(SimError::DivergentBarrier {
                    kernel: kernel(),
                    block: info.block,
                    site: site.to_string(),
                    waiting: coord(waiting),
                    other: coord(rank),
                    other_state: state.describe(),
                });
            }
        }
        states.fill(State::Ready([0; 4]));
        // A barrier orders every shared access before it against every one after it.
        shared.borrow_mut().epoch += 1;
    }
}
