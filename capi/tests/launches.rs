//! Every launch the pipeline makes, passed to the C interface as a host would pass it: the
//! interface accepts it and computes the pipeline's geometry (so a host gets the launch the Rust
//! backends make), and with every buffer cut to the least length the interface accepts, the
//! launch still runs on the simulator without an out-of-bounds access and writes what the
//! pipeline's launch wrote (so the length rules cover what the kernels touch).

#[path = "../../host/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use resca::kernels::{HostBuffer, HostCall, Value, dims_of, element_bytes, sim_launch};
use resca_host::cuda::replay::{HostData, RecordedLaunch, Recorder};
use resca_host::pipeline::device::{Arg, Kernel, KernelCall, RawSlice};
use resca_host::sim::SimDevice;

/// Fake, aligned, non-overlapping device addresses for the geometry check: buffer `id` at
/// `id << 32`.
fn fake_address(slice: RawSlice) -> u64 {
    ((slice.id as u64 + 1) << 32) + (slice.offset * element_bytes(slice.dtype)) as u64
}

/// The call as a host passes it; `address` places each slice.
fn host_call(call: &KernelCall, address: impl Fn(RawSlice) -> u64) -> HostCall {
    let values = call
        .args
        .iter()
        .map(|arg| match *arg {
            Arg::Read(s) | Arg::Write(s) => Value::Buffer(HostBuffer {
                address: address(s),
                len: s.len,
                dtype: s.dtype,
                written: matches!(arg, Arg::Write(_)),
            }),
            Arg::U32(v) => Value::U32(v),
            Arg::F32(v) => Value::F32(v),
            Arg::Ddim(c) => Value::Ddim(c),
            Arg::Taylor(c) => Value::Taylor(c),
        })
        .collect();
    HostCall {
        kernel: call.kernel,
        values,
    }
}

/// Buffers whose extent is set by the values of another buffer, beyond what a length rule can
/// check: the label table rows `label_embed_silu` reads are the labels' (its rule asks for one
/// row). Replays keep them whole.
const INDEXED_BY_VALUES: &[(&str, &str)] = &[("label_embed_silu", "table")];

/// The least length of buffer argument `i` the interface accepts for the same launch (the
/// others as they are): the acceptance is monotone in the length, so a bisection finds it.
fn least_length(call: &HostCall, i: usize) -> usize {
    let Value::Buffer(buffer) = call.values[i] else {
        unreachable!()
    };
    let expected = dims_of(call).unwrap();
    let accepts = |len: usize| {
        let mut shorter = call.clone();
        shorter.values[i] = Value::Buffer(HostBuffer { len, ..buffer });
        dims_of(&shorter).is_ok_and(|dims| dims == expected)
    };
    let (mut low, mut high) = (0, buffer.len);
    while low < high {
        let mid = (low + high) / 2;
        if accepts(mid) { high = mid } else { low = mid + 1 }
    }
    high
}

/// Contents of a recorded buffer as raw bytes.
fn bytes(data: &HostData) -> Vec<u8> {
    match data {
        HostData::F32(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        HostData::U32(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        HostData::F64(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
    }
}

/// Replays a recorded launch through `resca_sim_launch`'s code on host copies of its buffers,
/// every buffer cut to its least accepted length; returns the kernels' written elements that
/// differ from the recording (none expected), or the simulator's error.
fn replay_through_the_interface(launch: &RecordedLaunch) -> Result<usize, String> {
    // One host copy per recorded buffer, so that slices of one buffer alias as on the device.
    let mut memory: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (&id, data) in &launch.before {
        let raw = bytes(data);
        let mut words = vec![0u64; raw.len().div_ceil(8)];
        // SAFETY: `words` holds at least `raw.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), words.as_mut_ptr().cast::<u8>(), raw.len()) };
        memory.insert(id, words);
    }
    let address = |s: RawSlice| memory[&s.id].as_ptr() as u64 + (s.offset * element_bytes(s.dtype)) as u64;
    let mut call = host_call(&launch.call, address);
    let params = launch.call.kernel.params();
    let least: Vec<(usize, usize)> = call
        .buffers()
        .filter(|(i, _)| !INDEXED_BY_VALUES.contains(&(launch.call.kernel.name(), params[*i].name)))
        .map(|(i, _)| (i, least_length(&call, i)))
        .collect();
    for (i, len) in least {
        if let Value::Buffer(b) = &mut call.values[i] {
            b.len = len;
        }
    }
    // SAFETY: every buffer points into `memory`, within the recorded buffer it came from.
    unsafe { sim_launch(&call) }.map_err(|e| e.message)?;
    // Every element the recording's launch wrote within the cut lengths must match.
    let mut differing = 0;
    for (i, arg) in launch.call.args.iter().enumerate() {
        let Arg::Write(slice) = *arg else { continue };
        let Value::Buffer(cut) = call.values[i] else {
            unreachable!()
        };
        let after = bytes(&launch.after[&slice.id]);
        let size = element_bytes(slice.dtype);
        let start = slice.offset * size;
        // SAFETY: `memory[slice.id]` holds the recorded buffer's bytes.
        let ours =
            unsafe { std::slice::from_raw_parts(memory[&slice.id].as_ptr().cast::<u8>().add(start), cut.len * size) };
        differing += ours
            .chunks_exact(size)
            .zip(after[start..start + cut.len * size].chunks_exact(size))
            .filter(|(a, b)| a != b)
            .count();
    }
    Ok(differing)
}

/// The simulator, recording the first launches of each kernel, with every launch first checked
/// through the interface's geometry.
struct Checked {
    recorder: Recorder<SimDevice>,
    geometry_checked: usize,
}

impl resca_host::pipeline::Device for Checked {
    fn name(&self) -> &'static str {
        "sim"
    }
    fn alloc<T: resca_host::pipeline::Element>(
        &mut self,
        len: usize,
    ) -> Result<resca_host::pipeline::Buffer<T>, resca_host::pipeline::DeviceError> {
        self.recorder.alloc(len)
    }
    fn upload<T: resca_host::pipeline::Element>(
        &mut self,
        dst: resca_host::pipeline::Slice<T>,
        data: &[T],
    ) -> Result<(), resca_host::pipeline::DeviceError> {
        self.recorder.upload(dst, data)
    }
    fn download<T: resca_host::pipeline::Element>(
        &mut self,
        src: resca_host::pipeline::Slice<T>,
        out: &mut [T],
    ) -> Result<(), resca_host::pipeline::DeviceError> {
        self.recorder.download(src, out)
    }
    fn copy<T: resca_host::pipeline::Element>(
        &mut self,
        src: resca_host::pipeline::Slice<T>,
        dst: resca_host::pipeline::Slice<T>,
    ) -> Result<(), resca_host::pipeline::DeviceError> {
        self.recorder.copy(src, dst)
    }
    fn free(&mut self, id: usize) -> Result<(), resca_host::pipeline::DeviceError> {
        self.recorder.free(id)
    }
    fn launch(&mut self, call: &KernelCall) -> Result<(), resca_host::pipeline::DeviceError> {
        let planned = dims_of(&host_call(call, fake_address)).unwrap_or_else(|e| {
            panic!(
                "the interface refuses the pipeline's `{}` launch: {}",
                call.kernel.name(),
                e.message
            )
        });
        assert_eq!(
            planned,
            Some(call.dims),
            "kernel `{}`: the interface's geometry",
            call.kernel.name()
        );
        self.geometry_checked += 1;
        self.recorder.launch(call)
    }
    fn synchronize(&mut self) -> Result<(), resca_host::pipeline::DeviceError> {
        self.recorder.synchronize()
    }
}

#[test]
fn every_pipeline_launch_gets_its_geometry_and_runs_at_the_least_accepted_lengths() {
    let mut kernels = BTreeSet::new();
    let mut checked = 0;
    let mut replayed = 0;
    for model in [support::tiny_model(), support::odd_model(1)] {
        let dev = Checked {
            recorder: Recorder::new(SimDevice::new(), 2),
            geometry_checked: 0,
        };
        let (dev, _) = support::drive(dev, &model);
        checked += dev.geometry_checked;
        for launch in &dev.recorder.launches {
            let name = launch.call.kernel.name();
            let differing = replay_through_the_interface(launch)
                .unwrap_or_else(|e| panic!("`{name}` at the least accepted lengths: {e}"));
            assert_eq!(
                differing, 0,
                "`{name}`: {differing} written elements differ from the pipeline's launch"
            );
            kernels.insert(launch.call.kernel.name());
            replayed += 1;
        }
    }
    eprintln!("{checked} pipeline launches planned through the interface, {replayed} replayed at the least lengths");
    let all: BTreeSet<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    let missing: Vec<_> = all.difference(&kernels).collect();
    assert!(missing.is_empty(), "the workload never launches {missing:?}");
}
