//! Kernel parameters as the PTX entry points take them: each entry's parameter list (the kernel
//! table's [`Kernel::params`], checked against the PTX module's declarations and
//! `gpu-kernels/ptx/manifest.json`) and the packing of a launch's [`Arg`]s into the bytes
//! `cuLaunchKernel` copies.
//!
//! A launch is checked as the simulator checks it ([`check_args`]): the number of parameters,
//! each one's kind (read-only slice, writable slice, u32, f32, coefficient struct) and element
//! type, then each slice's bounds. A wrong call is a [`DeviceError::Invalid`], never a kernel
//! reading the wrong bytes.

use std::collections::HashMap;

use resca_gpu_kernels::ptx::{self, PtxModule};

/// One parameter of an entry point (name and kind), as the kernel table declares it.
pub use crate::pipeline::device::Param as ParamLayout;
pub use crate::pipeline::device::ParamKind;
use crate::pipeline::device::{Arg, DeviceError, Kernel, KernelCall, RawSlice, check_args};

/// The parameter lists of every kernel of `module`, checked against the PTX declarations and the
/// manifest: a module or manifest that does not describe the kernel table (a stale or hand-edited
/// file) is an error here, before anything is launched.
pub fn layouts(module: &PtxModule) -> Result<HashMap<Kernel, Vec<ParamLayout>>, String> {
    let manifest: serde_json::Value =
        serde_json::from_str(ptx::MANIFEST).map_err(|e| format!("gpu-kernels/ptx/manifest.json: {e}"))?;
    let listed = manifest["entries"]
        .as_array()
        .ok_or("gpu-kernels/ptx/manifest.json: no `entries`")?;
    let mut out = HashMap::new();
    for &kernel in Kernel::ALL {
        let name = kernel.name();
        let params = kernel.params();
        let entry = ptx::entry(module.ptx, name).ok_or_else(|| format!("{}: no entry `{name}`", module.file))?;
        let declared = listed
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["params"].as_array())
            .ok_or_else(|| format!("manifest.json: no entry `{name}`"))?;
        let ptx_params: Vec<_> = entry.params().collect();
        if ptx_params.len() != params.len() || declared.len() != params.len() {
            return Err(format!(
                "`{name}`: {} parameters in the kernel table, {} in {}, {} in manifest.json",
                params.len(),
                ptx_params.len(),
                module.file,
                declared.len()
            ));
        }
        for (i, ((p, d), param)) in ptx_params.iter().zip(declared).zip(params).enumerate() {
            let p = p.ok_or_else(|| format!("`{name}` parameter {i}: unreadable PTX declaration"))?;
            let rust = param.kind.rust_type();
            if d["name"] != param.name || d["rust"] != rust {
                return Err(format!(
                    "`{name}` parameter {i}: `{}: {rust}` in the kernel table, `{}: {}` in manifest.json",
                    param.name, d["name"], d["rust"]
                ));
            }
            if param.kind.size() != p.size as usize {
                return Err(format!(
                    "`{name}` parameter {i} ({rust}): {} bytes on the host, {} in {}",
                    param.kind.size(),
                    p.size,
                    module.file
                ));
            }
        }
        out.insert(kernel, params.to_vec());
    }
    Ok(out)
}

/// The bytes of one parameter (at most 32), 8-byte aligned as the driver reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(8))]
pub struct ParamBytes(pub [u8; 32]);

impl ParamBytes {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// Packs the arguments of `call` for `params`; `pointer` resolves a slice (checked against its
/// buffer) to the device address of its first element.
pub fn pack(
    call: &KernelCall,
    params: &[ParamLayout],
    mut pointer: impl FnMut(RawSlice, &str) -> Result<u64, DeviceError>,
) -> Result<Vec<ParamBytes>, DeviceError> {
    check_args(call, params)?;
    let name = call.kernel.name();
    let mut out = Vec::with_capacity(params.len());
    for (i, (arg, param)) in call.args.iter().zip(params).enumerate() {
        let mut bytes = ParamBytes::default();
        match *arg {
            Arg::Read(slice) | Arg::Write(slice) => {
                let what = format!("kernel `{name}` parameter {i} `{}`", param.name);
                let address = pointer(slice, &what)?;
                // `Global` / `GlobalMut`: `#[repr(C)] { ptr, len: usize }`.
                bytes.put(0, &address.to_ne_bytes());
                bytes.put(8, &(slice.len as u64).to_ne_bytes());
            }
            Arg::U32(v) => bytes.put(0, &v.to_ne_bytes()),
            Arg::F32(v) => bytes.put(0, &v.to_ne_bytes()),
            Arg::Ddim(c) => {
                for (k, v) in [c.recip, c.recip_m1, c.sqrt_prev, c.sqrt_one_minus_prev]
                    .iter()
                    .enumerate()
                {
                    bytes.put(4 * k, &v.to_ne_bytes());
                }
            }
            Arg::Taylor(c) => {
                let fields = [
                    c.scale1, c.power1, c.scale2, c.power2, c.scale3, c.power3, c.scale4, c.power4,
                ];
                for (k, v) in fields.iter().enumerate() {
                    bytes.put(4 * k, &v.to_ne_bytes());
                }
            }
        }
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use resca_gpu_kernels::ddim::DdimCoefficients;

    use super::*;
    use crate::pipeline::device::DType;

    #[test]
    fn kinds_and_their_rust_types() {
        assert_eq!(ParamKind::Read(DType::F32).rust_type(), "Global<'_, f32>");
        assert_eq!(ParamKind::Write(DType::U32).rust_type(), "GlobalMut<'_, u32>");
        assert_eq!(ParamKind::Read(DType::F64).rust_type(), "Global<'_, f64>");
        assert_eq!(ParamKind::Taylor.rust_type(), "TaylorCoefficients");
        assert_eq!(ParamKind::Read(DType::F64).size(), 16);
        assert_eq!(ParamKind::Taylor.size(), 32);
        assert_eq!(ParamKind::Ddim.size(), 16);
    }

    /// The packed bytes are the Rust values' bytes: what the kernel reads as its parameter.
    #[test]
    fn packing_matches_the_rust_layouts() {
        let coef = DdimCoefficients {
            recip: 1.5,
            recip_m1: -2.0,
            sqrt_prev: 0.25,
            sqrt_one_minus_prev: 3.0,
        };
        let slice = RawSlice {
            id: 7,
            dtype: DType::F32,
            offset: 3,
            len: 5,
        };
        let call = KernelCall {
            kernel: Kernel::DdimStep,
            dims: resca_gpu_kernels::ddim::ddim_step_dims(5),
            args: vec![
                Arg::Read(slice),
                Arg::Read(slice),
                Arg::Write(slice),
                Arg::U32(5),
                Arg::U32(1),
                Arg::U32(2),
                Arg::U32(5),
                Arg::Ddim(coef),
            ],
        };
        let module = &resca_gpu_kernels::ptx::MODULES[0];
        let all = layouts(module).unwrap();
        let packed = pack(&call, &all[&Kernel::DdimStep], |s, _| Ok(0x1000 + 4 * s.offset as u64)).unwrap();
        assert_eq!(packed.len(), 8);
        assert_eq!(&packed[0].0[..8], &0x100cu64.to_ne_bytes());
        assert_eq!(&packed[0].0[8..16], &5u64.to_ne_bytes());
        // SAFETY: DdimCoefficients is four f32s (`#[repr(C)]`).
        let raw: [u8; 16] = unsafe { std::mem::transmute(coef) };
        assert_eq!(&packed[7].0[..16], &raw);
        // A writable slice where the kernel reads, a u32 where it takes a struct: errors.
        let mut wrong = call.clone();
        wrong.args[0] = Arg::Write(slice);
        assert!(pack(&wrong, &all[&Kernel::DdimStep], |_, _| Ok(0)).is_err());
        wrong.args[0] = Arg::Read(RawSlice {
            dtype: DType::U32,
            ..slice
        });
        assert!(pack(&wrong, &all[&Kernel::DdimStep], |_, _| Ok(0)).is_err());
        wrong = call.clone();
        wrong.args.pop();
        assert!(pack(&wrong, &all[&Kernel::DdimStep], |_, _| Ok(0)).is_err());
    }

    #[test]
    fn every_kernel_has_a_layout_in_every_module() {
        for module in resca_gpu_kernels::ptx::MODULES {
            let all = layouts(module).unwrap();
            assert_eq!(all.len(), Kernel::ALL.len());
        }
    }
}
