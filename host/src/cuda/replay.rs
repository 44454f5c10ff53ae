//! Kernel launches recorded on one device and replayed on another: the per-kernel check of the
//! GPU against the simulator. [`Recorder`] wraps a device (the simulator), and for the first few
//! launches of every kernel keeps the contents of every buffer the launch touches before it runs
//! and of every buffer it writes after; [`replay`] runs such a launch on another device (a GPU)
//! from the same inputs and returns what it wrote, to be compared with [`compare`].
//!
//! Driving a whole pipeline (forwards, every caching method, both samplers) through a recorder
//! yields every kernel on the shapes the pipeline really launches.

use std::collections::{BTreeMap, HashMap};

use crate::pipeline::device::{Arg, Buffer, DType, Device, DeviceError, Element, Kernel, KernelCall, RawSlice, Slice};

/// A buffer's contents on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    U32(Vec<u32>),
    F64(Vec<f64>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::U32(v) => v.len(),
            HostData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::U32(_) => DType::U32,
            HostData::F64(_) => DType::F64,
        }
    }
}

/// One recorded launch.
#[derive(Clone, Debug)]
pub struct RecordedLaunch {
    /// The call, with the recording device's buffer ids.
    pub call: KernelCall,
    /// Every buffer the call reads or writes, before the launch, by id.
    pub before: BTreeMap<usize, HostData>,
    /// Every buffer the call writes, after the launch, by id.
    pub after: BTreeMap<usize, HostData>,
}

/// A device that records the first `per_kernel` launches of each kernel (see the module docs).
pub struct Recorder<D: Device> {
    pub inner: D,
    per_kernel: usize,
    buffers: HashMap<usize, (usize, DType)>,
    counts: HashMap<Kernel, usize>,
    pub launches: Vec<RecordedLaunch>,
}

fn download_any<D: Device>(dev: &mut D, id: usize, len: usize, dtype: DType) -> Result<HostData, DeviceError> {
    Ok(match dtype {
        DType::F32 => HostData::F32(dev.download_vec(Buffer::<f32>::from_id(id, len).all())?),
        DType::U32 => HostData::U32(dev.download_vec(Buffer::<u32>::from_id(id, len).all())?),
        DType::F64 => HostData::F64(dev.download_vec(Buffer::<f64>::from_id(id, len).all())?),
    })
}

fn slices(call: &KernelCall) -> impl Iterator<Item = (RawSlice, bool)> + '_ {
    call.args.iter().filter_map(|a| match *a {
        Arg::Read(s) => Some((s, false)),
        Arg::Write(s) => Some((s, true)),
        _ => None,
    })
}

impl<D: Device> Recorder<D> {
    pub fn new(inner: D, per_kernel: usize) -> Self {
        Self {
            inner,
            per_kernel,
            buffers: HashMap::new(),
            counts: HashMap::new(),
            launches: Vec::new(),
        }
    }

    /// The kernels recorded at least once.
    pub fn kernels(&self) -> Vec<Kernel> {
        Kernel::ALL
            .iter()
            .copied()
            .filter(|k| self.counts.get(k).is_some_and(|&n| n > 0))
            .collect()
    }

    fn snapshot(&mut self, call: &KernelCall, written_only: bool) -> Result<BTreeMap<usize, HostData>, DeviceError> {
        let mut out = BTreeMap::new();
        for (slice, write) in slices(call) {
            if (written_only && !write) || out.contains_key(&slice.id) {
                continue;
            }
            let (len, dtype) = *self
                .buffers
                .get(&slice.id)
                .ok_or_else(|| DeviceError::Invalid(format!("recorder: unknown buffer {}", slice.id)))?;
            out.insert(slice.id, download_any(&mut self.inner, slice.id, len, dtype)?);
        }
        Ok(out)
    }
}

impl<D: Device> Device for Recorder<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
        let buffer = self.inner.alloc::<T>(len)?;
        self.buffers.insert(buffer.id(), (len, T::DTYPE));
        Ok(buffer)
    }
    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError> {
        self.inner.upload(dst, data)
    }
    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError> {
        self.inner.download(src, out)
    }
    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError> {
        self.inner.copy(src, dst)
    }
    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        self.buffers.remove(&id);
        self.inner.free(id)
    }
    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
        let count = self.counts.entry(call.kernel).or_default();
        if *count >= self.per_kernel {
            return self.inner.launch(call);
        }
        *count += 1;
        let before = self.snapshot(call, false)?;
        self.inner.launch(call)?;
        let after = self.snapshot(call, true)?;
        self.launches.push(RecordedLaunch {
            call: call.clone(),
            before,
            after,
        });
        Ok(())
    }
    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.inner.synchronize()
    }
}

fn upload_any<D: Device>(dev: &mut D, data: &HostData) -> Result<usize, DeviceError> {
    Ok(match data {
        HostData::F32(v) => dev.upload_new(v)?.id(),
        HostData::U32(v) => dev.upload_new(v)?.id(),
        HostData::F64(v) => dev.upload_new(v)?.id(),
    })
}

/// Runs `launch` on `dev` from its recorded inputs; returns what it wrote, by the recording's
/// buffer ids. Every buffer is freed again.
pub fn replay<D: Device>(dev: &mut D, launch: &RecordedLaunch) -> Result<BTreeMap<usize, HostData>, DeviceError> {
    let mut ids = BTreeMap::new();
    for (&id, data) in &launch.before {
        ids.insert(id, (upload_any(dev, data)?, data.len(), data.dtype()));
    }
    let remap = |s: RawSlice| RawSlice { id: ids[&s.id].0, ..s };
    let call = KernelCall {
        kernel: launch.call.kernel,
        dims: launch.call.dims,
        args: launch
            .call
            .args
            .iter()
            .map(|a| match *a {
                Arg::Read(s) => Arg::Read(remap(s)),
                Arg::Write(s) => Arg::Write(remap(s)),
                other => other,
            })
            .collect(),
    };
    dev.launch(&call)?;
    let mut out = BTreeMap::new();
    for &id in launch.after.keys() {
        let (new_id, len, dtype) = ids[&id];
        out.insert(id, download_any(dev, new_id, len, dtype)?);
    }
    for (new_id, _, _) in ids.values() {
        dev.free(*new_id)?;
    }
    Ok(out)
}

/// How two results differ: elements compared, elements not bit-identical, the largest absolute
/// difference (floats; integers count as differing by 1 when they differ) and the largest |value|.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Difference {
    pub elements: usize,
    pub not_identical: usize,
    pub max_abs: f64,
    pub max_value: f64,
}

/// Compares the written buffers of a replay with the recording's.
pub fn compare(expected: &BTreeMap<usize, HostData>, actual: &BTreeMap<usize, HostData>) -> Difference {
    let mut d = Difference::default();
    for (id, e) in expected {
        let Some(a) = actual.get(id) else {
            d.not_identical += e.len();
            d.max_abs = f64::INFINITY;
            continue;
        };
        let mut add = |x: f64, y: f64, same_bits: bool| {
            d.elements += 1;
            if !same_bits {
                d.not_identical += 1;
                let diff = if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() };
                d.max_abs = d.max_abs.max(if diff.is_nan() { f64::INFINITY } else { diff });
            }
            if x.is_finite() {
                d.max_value = d.max_value.max(x.abs());
            }
        };
        match (e, a) {
            (HostData::F32(e), HostData::F32(a)) if e.len() == a.len() => e
                .iter()
                .zip(a)
                .for_each(|(x, y)| add(*x as f64, *y as f64, x.to_bits() == y.to_bits())),
            (HostData::F64(e), HostData::F64(a)) if e.len() == a.len() => e
                .iter()
                .zip(a)
                .for_each(|(x, y)| add(*x, *y, x.to_bits() == y.to_bits())),
            (HostData::U32(e), HostData::U32(a)) if e.len() == a.len() => {
                e.iter().zip(a).for_each(|(x, y)| add(*x as f64, *y as f64, x == y))
            }
            _ => {
                d.not_identical += e.len();
                d.max_abs = f64::INFINITY;
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::launch;
    use crate::sim::SimDevice;

    /// Recording on the simulator and replaying on a second simulator reproduces the launch.
    #[test]
    fn replay_on_the_simulator_reproduces_the_recording() {
        let mut rec = Recorder::new(SimDevice::new(), 2);
        let x = rec.upload_new(&[1.0f32, -2.0, 3.0, 0.5]).unwrap();
        let branch = rec.upload_new(&[0.25f32, 0.5, -1.0, 2.0]).unwrap();
        let gate = rec.upload_new(&[2.0f32, -1.0]).unwrap();
        launch::gated_add(&mut rec, x.all(), branch.all(), gate.all(), 2, 2, 2, 2, 0).unwrap();
        launch::gated_add(&mut rec, x.all(), branch.all(), gate.all(), 2, 2, 2, 2, 0).unwrap();
        launch::gated_add(&mut rec, x.all(), branch.all(), gate.all(), 2, 2, 2, 2, 0).unwrap();
        assert_eq!(
            rec.launches.len(),
            2,
            "only the first two launches of a kernel are kept"
        );
        assert_eq!(rec.kernels(), vec![Kernel::GatedAdd]);
        let first = &rec.launches[0];
        assert_eq!(first.before.len(), 3);
        assert_eq!(first.after.len(), 1);
        let mut other = SimDevice::new();
        let out = replay(&mut other, first).unwrap();
        let d = compare(&first.after, &out);
        assert_eq!((d.elements, d.not_identical), (4, 0));
        assert_eq!(other.resident_elements(), 0);
        // A changed output is noticed.
        let mut wrong = out.clone();
        if let Some(HostData::F32(v)) = wrong.get_mut(&x.id()) {
            v[1] += 1.0;
        }
        let d = compare(&first.after, &wrong);
        assert_eq!(d.not_identical, 1);
        assert!((d.max_abs - 1.0).abs() < 1e-6);
    }
}
