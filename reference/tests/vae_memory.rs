//! The VAE decoder's memory, counted: every allocation goes through a counting allocator, and
//! the most the decoding holds at once (besides the weights, allocated before) stays within
//! `vae::memory_estimate`, which follows the layers: at its peak the last upsampler's input and
//! output (1.25 times the largest feature map) and the convolutions' band buffers. (With the
//! narrowing resnet after it holding its hidden map beside its input, as the decoder once did,
//! the peak is 3.7 MB, 0.22 times the largest map, above the estimate.) This binary holds one
//! test, so that no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::Array4;
use resca_reference::vae::{VaeConfig, VaeDecoder, memory_estimate};

/// The system allocator, counting the bytes live and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            // A moved block is briefly live twice; glibc moves large blocks with mremap, and the
            // decoder only shrinks them.
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The sd-vae's layers at a sixteenth of its widths ([8, 16, 32, 32], 8 groups), decoding 64x64
/// latents to a 512x512 image on 2 cores: the largest feature map is the last upsampler's output,
/// 16 channels at 512x512 (16.8 MB). Measured: the layers' peak 23.5 MB = 1.40x the largest
/// map, within 0.1 MB of the estimate (the band buffers are larger beside these narrow maps than
/// beside the sd-vae's), besides the 3.1 MB of the image.
#[test]
fn the_decoders_peak_allocation_is_the_last_upsamplers_input_and_output() {
    let config = VaeConfig {
        block_out_channels: vec![8, 16, 32, 32],
        norm_num_groups: 8,
        ..VaeConfig::sd_vae()
    };
    let decoder = VaeDecoder::random(config.clone(), 0).unwrap();
    let latents = Array4::from_shape_fn((1, 4, 64, 64), |(_, c, h, w)| {
        ((c * 131 + h * 17 + w * 5) as f32 * 0.37).sin()
    });
    let threads = 2;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let images = pool.install(|| decoder.decode(latents.view())).unwrap();
    let peak = (PEAK.load(Ordering::SeqCst) - before) as u64;
    assert_eq!(images.dim(), (1, 3, 512, 512));

    // The images returned (3 channels, allocated as the decoding starts) aside, what the layers
    // hold at their peak.
    let images_bytes = 4 * images.len() as u64;
    let working = peak - images_bytes;
    let largest = 4 * 16 * 512 * 512u64;
    let estimate = memory_estimate(&config, 1, 64, 64, threads);
    eprintln!(
        "peak {:.1} MB: images {:.1} MB + layers {:.1} MB = {:.2}x the largest feature map ({:.1} MB); \
         estimate {:.1} MB + {:.1} MB",
        peak as f64 / 1e6,
        images_bytes as f64 / 1e6,
        working as f64 / 1e6,
        working as f64 / largest as f64,
        largest as f64 / 1e6,
        estimate.results as f64 / 1e6,
        estimate.working as f64 / 1e6,
    );
    assert_eq!(estimate.results, images_bytes);
    assert!(working <= estimate.working, "{working} > {estimate:?}");
}
