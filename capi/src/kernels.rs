//! Kernel launches by name, as a host passes them: one [`RescaArg`] per parameter of the kernel
//! table (`resca_gpu_kernels::table`), checked by name, kind and element type, then turned into
//! a call of the pipeline's own typed launch function (`resca_host::pipeline::launch`), which
//! computes the launch geometry and the arguments exactly as every Rust backend launches them.
//!
//! The geometry of most kernels follows from their parameters; where it needs a size the kernel
//! does not take (the batch of `flash_attention`, say), the size is a buffer's length (documented per
//! kernel in [`Rule`]). Every buffer must hold what the sizes say the kernel touches: the rules
//! check it before anything is launched, so that a wrong size is a message, not a fault.
//!
//! One [`Planner`] serves every way of running a launch: on a GPU through the host's context and
//! stream (`crate::gpu`), on the CPU simulator over host memory ([`resca_sim_launch`]), or not
//! at all, for the geometry only ([`resca_launch_dims`]).

use std::ffi::{CStr, c_char};

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{
    LaunchDims, WARP_SIZE, attention, clusca, ddim, embed, final_layer, flow, gather, gemm, gemm_tiled, guidance, norm,
    pdds, residual, taylor, tetc,
};
use resca_host::pipeline::device::{
    Arg, Buffer, DType, Device, DeviceError, Element, Kernel, KernelCall, ParamKind, RawSlice, Slice,
};
use resca_host::pipeline::launch::{self, Epilogue, GemmTile, GemmWeight, Precision};
use resca_host::sim::SimDevice;

use crate::error::{Error, RescaStatus, Result, entry};

/// `RescaArg.kind`: a buffer of `float` (a `Global<f32>` / `GlobalMut<f32>` parameter).
pub const RESCA_ARG_BUFFER_F32: u32 = 1;
/// `RescaArg.kind`: a buffer of `uint32_t`.
pub const RESCA_ARG_BUFFER_U32: u32 = 2;
/// `RescaArg.kind`: a buffer of `double`.
pub const RESCA_ARG_BUFFER_F64: u32 = 3;
/// `RescaArg.kind`: a `uint32_t` value (`value_u32`).
pub const RESCA_ARG_U32: u32 = 4;
/// `RescaArg.kind`: a `float` value (`value_f32`).
pub const RESCA_ARG_F32: u32 = 5;
/// `RescaArg.kind`: `DdimCoefficients` (`coefficients[0..4]`: recip, recip_m1, sqrt_prev,
/// sqrt_one_minus_prev).
pub const RESCA_ARG_DDIM: u32 = 6;
/// `RescaArg.kind`: `TaylorCoefficients` (`coefficients[0..8]`: scale1, power1, scale2,
/// power2, scale3, power3, scale4, power4).
pub const RESCA_ARG_TAYLOR: u32 = 7;

/// One kernel argument, for the parameter of the same position in the kernel table (see
/// docs/linking.md for every kernel's parameters).
///
/// Ownership: the library reads the struct and `name` during the call only. `address` is the
/// host's memory (device memory for `resca_gpu_launch`, host memory for `resca_sim_launch`); the
/// library never frees it and keeps no reference to it after the call returns (a GPU launch
/// reads it later, in stream order, as any kernel launch does).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RescaArg {
    /// The parameter's name as the kernel table declares it (checked), NUL-terminated.
    pub name: *const c_char,
    /// `RESCA_ARG_*`: what the argument is (checked against the parameter's kind).
    pub kind: u32,
    /// Buffers: the address of the first element (may be 0 only when `len` is 0).
    pub address: u64,
    /// Buffers: the number of elements from `address` that the kernel may touch.
    pub len: u64,
    /// `RESCA_ARG_U32`: the value.
    pub value_u32: u32,
    /// `RESCA_ARG_F32`: the value.
    pub value_f32: f32,
    /// `RESCA_ARG_DDIM` (4 used) and `RESCA_ARG_TAYLOR` (8 used): the struct's fields in order.
    pub coefficients: [f32; 8],
}

/// The geometry of a launch, as `cuLaunchKernel` takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescaLaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Static shared memory per block, in bytes (the kernel declares it: no dynamic shared
    /// memory is passed).
    pub shared_bytes: u32,
    /// 0 when the sizes make the launch empty: nothing is launched then.
    pub launched: u32,
}

impl From<LaunchDims> for RescaLaunchDims {
    fn from(dims: LaunchDims) -> Self {
        Self {
            grid: [dims.grid.x, dims.grid.y, dims.grid.z],
            block: [dims.block.x, dims.block.y, dims.block.z],
            shared_bytes: dims.shared_bytes,
            launched: 1,
        }
    }
}

/// A buffer argument of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBuffer {
    pub address: u64,
    pub len: usize,
    pub dtype: DType,
    /// Whether the kernel writes it (a `GlobalMut` parameter).
    pub written: bool,
}

/// One argument of the host, checked against its parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Buffer(HostBuffer),
    U32(u32),
    F32(f32),
    Ddim(DdimCoefficients),
    Taylor(TaylorCoefficients),
}

/// A kernel with the host's arguments, one per parameter in table order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostCall {
    pub kernel: Kernel,
    pub values: Vec<Value>,
}

impl HostCall {
    /// The buffer arguments with their parameter positions.
    pub fn buffers(&self) -> impl Iterator<Item = (usize, HostBuffer)> + '_ {
        self.values.iter().enumerate().filter_map(|(i, v)| match *v {
            Value::Buffer(b) => Some((i, b)),
            _ => None,
        })
    }
}

/// Bytes of one element.
pub fn element_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::U32 => 4,
        DType::F64 => 8,
    }
}

/// The `RESCA_ARG_*` constant of a parameter kind, and its name in messages.
fn kind_code(kind: ParamKind) -> (u32, &'static str) {
    match kind {
        ParamKind::Read(DType::F32) | ParamKind::Write(DType::F32) => (RESCA_ARG_BUFFER_F32, "RESCA_ARG_BUFFER_F32"),
        ParamKind::Read(DType::U32) | ParamKind::Write(DType::U32) => (RESCA_ARG_BUFFER_U32, "RESCA_ARG_BUFFER_U32"),
        ParamKind::Read(DType::F64) | ParamKind::Write(DType::F64) => (RESCA_ARG_BUFFER_F64, "RESCA_ARG_BUFFER_F64"),
        ParamKind::U32 => (RESCA_ARG_U32, "RESCA_ARG_U32"),
        ParamKind::F32 => (RESCA_ARG_F32, "RESCA_ARG_F32"),
        ParamKind::Ddim => (RESCA_ARG_DDIM, "RESCA_ARG_DDIM"),
        ParamKind::Taylor => (RESCA_ARG_TAYLOR, "RESCA_ARG_TAYLOR"),
    }
}

/// The name of a `RESCA_ARG_*` constant, or `unknown kind N`.
fn kind_name(code: u32) -> String {
    let names = [
        "RESCA_ARG_BUFFER_F32",
        "RESCA_ARG_BUFFER_U32",
        "RESCA_ARG_BUFFER_F64",
        "RESCA_ARG_U32",
        "RESCA_ARG_F32",
        "RESCA_ARG_DDIM",
        "RESCA_ARG_TAYLOR",
    ];
    match code {
        1..=7 => names[code as usize - 1].to_string(),
        _ => format!("unknown kind {code}"),
    }
}

/// A NUL-terminated string argument of an entry point.
///
/// # Safety
/// `text` is null or points to a NUL-terminated string.
pub unsafe fn c_str<'a>(text: *const c_char, what: &str) -> Result<&'a str> {
    if text.is_null() {
        return Err(Error::invalid(format!("{what} is a null pointer")));
    }
    // SAFETY: the caller's contract.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8: {}", text.to_string_lossy())))
}

/// The kernel of the table named `name`.
pub fn kernel_named(name: &str) -> Result<Kernel> {
    Kernel::ALL.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
        Error::invalid(format!(
            "no kernel `{name}` in the kernel table (docs/linking.md lists the {})",
            Kernel::ALL.len()
        ))
    })
}

/// Reads and checks the host's arguments of `kernel`.
///
/// # Safety
/// `kernel` is null or NUL-terminated; `args` is null or points to `count` arguments whose
/// `name`s are null or NUL-terminated.
pub unsafe fn read_call(kernel: *const c_char, args: *const RescaArg, count: usize) -> Result<HostCall> {
    // SAFETY: the caller's contract.
    let kernel = kernel_named(unsafe { c_str(kernel, "the kernel name") }?)?;
    let params = kernel.params();
    let name = kernel.name();
    if args.is_null() && count > 0 {
        return Err(Error::invalid(format!(
            "kernel `{name}`: the arguments are a null pointer"
        )));
    }
    if count != params.len() {
        let names: Vec<&str> = params.iter().map(|p| p.name).collect();
        return Err(Error::invalid(format!(
            "kernel `{name}` takes {} parameters ({}), {count} arguments given",
            params.len(),
            names.join(", ")
        )));
    }
    // SAFETY: `count` arguments at `args` (the caller's contract); none when `count` is 0.
    let args = if count == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(args, count) }
    };
    let mut values = Vec::with_capacity(count);
    for (i, (arg, param)) in args.iter().zip(params).enumerate() {
        let what = format!("kernel `{name}` argument {i}");
        // SAFETY: the caller's contract.
        let given = unsafe { c_str(arg.name, &format!("{what}'s name")) }?;
        if given != param.name {
            return Err(Error::invalid(format!(
                "{what} is named `{given}`, the parameter is `{}`",
                param.name
            )));
        }
        let (code, code_name) = kind_code(param.kind);
        if arg.kind != code {
            return Err(Error::invalid(format!(
                "{what} `{given}` is {}, the parameter is {} ({code_name})",
                kind_name(arg.kind),
                param.kind.rust_type()
            )));
        }
        let c = arg.coefficients;
        values.push(match param.kind {
            ParamKind::Read(dtype) | ParamKind::Write(dtype) => {
                let len = usize::try_from(arg.len)
                    .map_err(|_| Error::invalid(format!("{what} `{given}`: length {} is too large", arg.len)))?;
                if arg.address == 0 && len > 0 {
                    return Err(Error::invalid(format!(
                        "{what} `{given}`: a null address with {len} elements"
                    )));
                }
                if arg.address % element_bytes(dtype) as u64 != 0 {
                    return Err(Error::invalid(format!(
                        "{what} `{given}`: address {:#x} is not aligned to its {}-byte elements",
                        arg.address,
                        element_bytes(dtype)
                    )));
                }
                Value::Buffer(HostBuffer {
                    address: arg.address,
                    len,
                    dtype,
                    written: matches!(param.kind, ParamKind::Write(_)),
                })
            }
            ParamKind::U32 => Value::U32(arg.value_u32),
            ParamKind::F32 => Value::F32(arg.value_f32),
            ParamKind::Ddim => Value::Ddim(DdimCoefficients {
                recip: c[0],
                recip_m1: c[1],
                sqrt_prev: c[2],
                sqrt_one_minus_prev: c[3],
            }),
            ParamKind::Taylor => Value::Taylor(TaylorCoefficients {
                scale1: c[0],
                power1: c[1],
                scale2: c[2],
                power2: c[3],
                scale3: c[4],
                power3: c[5],
                scale4: c[6],
                power4: c[7],
            }),
        });
    }
    Ok(HostCall { kernel, values })
}

/// Runs a host call through its kernel's launch function: `placement[i]` is where buffer
/// argument `i` lives on the device that runs it (`None` for the other parameters), and
/// `launcher` runs the call the launch function makes (nothing is run when the sizes make the
/// launch empty). Returns the geometry of the launch, or `None` when it was empty.
pub fn plan(
    call: &HostCall,
    placement: &[Option<RawSlice>],
    launcher: &mut dyn FnMut(&KernelCall) -> std::result::Result<(), DeviceError>,
) -> std::result::Result<Option<LaunchDims>, DeviceError> {
    let params = Params { call, placement };
    let mut planner = Planner {
        call,
        placement,
        launcher,
        dims: None,
    };
    (rule(call.kernel).plan)(&mut planner, &params)?;
    Ok(planner.dims)
}

/// The pipeline's device for one host call: it refuses everything but the one launch, which it
/// checks against the host's arguments before handing it to its launcher.
pub struct Planner<'a> {
    call: &'a HostCall,
    placement: &'a [Option<RawSlice>],
    launcher: &'a mut dyn FnMut(&KernelCall) -> std::result::Result<(), DeviceError>,
    dims: Option<LaunchDims>,
}

impl Planner<'_> {
    fn refuse(&self, what: &str) -> DeviceError {
        DeviceError::Invalid(format!(
            "kernel `{}`: its launch function asked for {what} (a launch of the C interface only launches)",
            self.call.kernel.name()
        ))
    }

    /// The launch function's call must pass the host's values and buffers: the same slices
    /// (the start of each host buffer, no longer than it) and the same values, bit for bit.
    fn check_same(&self, launched: &KernelCall) -> std::result::Result<(), DeviceError> {
        let name = self.call.kernel.name();
        if launched.kernel != self.call.kernel {
            return Err(DeviceError::Invalid(format!(
                "kernel `{name}`: the launch function launched `{}`",
                launched.kernel.name()
            )));
        }
        let params = self.call.kernel.params();
        for (i, (ours, theirs)) in launched.args.iter().zip(&self.call.values).enumerate() {
            let same = match (*ours, *theirs) {
                (Arg::Read(s) | Arg::Write(s), Value::Buffer(_)) => self.placement[i]
                    .is_some_and(|p| p.id == s.id && p.offset == s.offset && p.dtype == s.dtype && s.len <= p.len),
                (Arg::U32(a), Value::U32(b)) => a == b,
                (Arg::F32(a), Value::F32(b)) => a.to_bits() == b.to_bits(),
                (Arg::Ddim(a), Value::Ddim(b)) => a == b,
                (Arg::Taylor(a), Value::Taylor(b)) => a == b,
                _ => false,
            };
            if !same {
                let shown = |arg: &Arg| match arg {
                    Arg::U32(v) => v.to_string(),
                    Arg::F32(v) => format!("{v:e}"),
                    other => format!("{other:?}"),
                };
                let host = match *theirs {
                    Value::U32(v) => v.to_string(),
                    Value::F32(v) => format!("{v:e}"),
                    other => format!("{other:?}"),
                };
                return Err(DeviceError::Invalid(format!(
                    "kernel `{name}`: parameter `{}` is {host}, the launch for these sizes passes {} \
                     (docs/linking.md gives each kernel's rule)",
                    params[i].name,
                    shown(ours)
                )));
            }
        }
        Ok(())
    }
}

impl Device for Planner<'_> {
    fn name(&self) -> &'static str {
        "c-interface"
    }
    fn alloc<T: Element>(&mut self, _: usize) -> std::result::Result<Buffer<T>, DeviceError> {
        Err(self.refuse("an allocation"))
    }
    fn upload<T: Element>(&mut self, _: Slice<T>, _: &[T]) -> std::result::Result<(), DeviceError> {
        Err(self.refuse("an upload"))
    }
    fn download<T: Element>(&mut self, _: Slice<T>, _: &mut [T]) -> std::result::Result<(), DeviceError> {
        Err(self.refuse("a download"))
    }
    fn copy<T: Element>(&mut self, _: Slice<T>, _: Slice<T>) -> std::result::Result<(), DeviceError> {
        Err(self.refuse("a copy"))
    }
    fn free(&mut self, _: usize) -> std::result::Result<(), DeviceError> {
        Err(self.refuse("a free"))
    }
    fn launch(&mut self, call: &KernelCall) -> std::result::Result<(), DeviceError> {
        if self.dims.is_some() {
            return Err(self.refuse("a second launch"));
        }
        call.check()?;
        self.check_same(call)?;
        (self.launcher)(call)?;
        self.dims = Some(call.dims);
        Ok(())
    }
    fn synchronize(&mut self) -> std::result::Result<(), DeviceError> {
        Err(self.refuse("a synchronisation"))
    }
}

/// The host's arguments by parameter name, for the rules.
pub struct Params<'a> {
    call: &'a HostCall,
    placement: &'a [Option<RawSlice>],
}

/// `a b c ...` without overflow (lengths are compared as u128).
fn product(factors: &[usize]) -> u128 {
    factors.iter().fold(1u128, |p, &f| p.saturating_mul(f as u128))
}

impl Params<'_> {
    fn kernel(&self) -> Kernel {
        self.call.kernel
    }

    fn index(&self, name: &str) -> usize {
        self.call
            .kernel
            .params()
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("kernel `{}` has no parameter `{name}`", self.call.kernel.name()))
    }

    /// A `u32` parameter, as the launch functions take sizes.
    fn u(&self, name: &str) -> usize {
        match self.call.values[self.index(name)] {
            Value::U32(v) => v as usize,
            other => panic!("parameter `{name}` is {other:?}, not a u32"),
        }
    }

    fn f(&self, name: &str) -> f32 {
        match self.call.values[self.index(name)] {
            Value::F32(v) => v,
            other => panic!("parameter `{name}` is {other:?}, not an f32"),
        }
    }

    fn ddim(&self, name: &str) -> DdimCoefficients {
        match self.call.values[self.index(name)] {
            Value::Ddim(v) => v,
            other => panic!("parameter `{name}` is {other:?}, not DdimCoefficients"),
        }
    }

    fn taylor(&self, name: &str) -> TaylorCoefficients {
        match self.call.values[self.index(name)] {
            Value::Taylor(v) => v,
            other => panic!("parameter `{name}` is {other:?}, not TaylorCoefficients"),
        }
    }

    fn placed(&self, name: &str) -> RawSlice {
        self.placement[self.index(name)].unwrap_or_else(|| panic!("buffer `{name}` has no placement"))
    }

    /// The host buffer's length.
    fn len(&self, name: &str) -> usize {
        self.placed(name).len
    }

    /// The whole host buffer.
    fn all<T: Element>(&self, name: &str) -> Slice<T> {
        self.first(name, self.len(name))
    }

    /// The first `len` elements of the host buffer (after [`Params::need`]).
    fn first<T: Element>(&self, name: &str, len: usize) -> Slice<T> {
        let placed = self.placed(name);
        assert_eq!(placed.dtype, T::DTYPE, "buffer `{name}`");
        Buffer::<T>::from_id(placed.id, placed.offset + placed.len).range(placed.offset, len.min(placed.len))
    }

    /// Refuses a buffer shorter than `required` elements; `rule` says where the number comes from.
    fn need(&self, name: &str, required: u128, rule: &str) -> std::result::Result<(), DeviceError> {
        let len = self.len(name);
        if (len as u128) < required {
            return Err(DeviceError::Invalid(format!(
                "kernel `{}`: `{name}` holds {len} elements, {rule} = {required} needed",
                self.call.kernel.name()
            )));
        }
        Ok(())
    }

    /// How many items of `per_item` elements buffer `name` holds, exactly (`rule` names the item).
    fn count(&self, name: &str, per_item: u128, rule: &str) -> std::result::Result<usize, DeviceError> {
        let len = self.len(name) as u128;
        if per_item == 0 {
            return Ok(0);
        }
        if !len.is_multiple_of(per_item) {
            return Err(DeviceError::Invalid(format!(
                "kernel `{}`: `{name}` holds {len} elements, not a whole number of {rule} = {per_item} \
                 (its length sets the batch)",
                self.call.kernel.name()
            )));
        }
        Ok((len / per_item) as usize)
    }

    /// Refuses a zero divisor of the gate or modulation row (`tokens`), for a non-empty launch.
    fn positive(&self, name: &str, rows: usize) -> std::result::Result<(), DeviceError> {
        if rows > 0 && self.u(name) == 0 {
            return Err(DeviceError::Invalid(format!(
                "kernel `{}`: `{name}` is 0 (rows are grouped by it)",
                self.call.kernel.name()
            )));
        }
        Ok(())
    }

    /// The elements a per-sample vector (gate, modulation) is read at: `((rows - 1) / tokens)
    /// stride + offset + width`.
    fn per_sample(&self, rows: usize, tokens: usize, stride: usize, offset: usize, width: usize) -> u128 {
        if rows == 0 || tokens == 0 {
            return 0;
        }
        product(&[(rows - 1) / tokens, stride]) + offset as u128 + width as u128
    }

    /// The gate's `tokens`, `gate_stride` and `gate_offset`, checked for a gated-residual launch
    /// of `rows` rows of `width` (each a value and its name in the rule): `tokens` is not 0
    /// (for a non-empty launch) and `gate` holds the per-sample elements the rows read.
    fn gate(
        &self,
        rows: (usize, &str),
        width: (usize, &str),
    ) -> std::result::Result<(usize, usize, usize), DeviceError> {
        let (tokens, stride, offset) = (self.u("tokens"), self.u("gate_stride"), self.u("gate_offset"));
        self.positive("tokens", rows.0)?;
        let required = self.per_sample(rows.0, tokens, stride, offset, width.0);
        let rule = format!("(({} - 1)/tokens) gate_stride + gate_offset + {}", rows.1, width.1);
        self.need("gate", required, &rule)?;
        Ok((tokens, stride, offset))
    }
}

type PlanFn = fn(&mut Planner, &Params) -> std::result::Result<(), DeviceError>;

/// How the C interface launches one kernel: its geometry and the lengths its buffers need, in
/// words (for docs/linking.md), and the plan that checks them and calls the kernel's launch
/// function.
pub struct Rule {
    /// The `*_dims` function of `resca-gpu-kernels` the launch function calls, with its
    /// arguments in the parameters' terms, and the grid and block it gives.
    pub geometry: fn() -> String,
    /// The lengths the buffers need (`≥`: at least; `=`: exactly, the length sets a size).
    pub lengths: &'static str,
    plan: PlanFn,
}

/// The rule of every kernel. A kernel added to the table must get its rule here (the match is
/// exhaustive): the launch function it goes through, the sizes that function takes, and the
/// buffer lengths the kernel body touches.
pub fn rule(kernel: Kernel) -> Rule {
    use Kernel as K;
    match kernel {
        K::TimestepFeatures => Rule {
            geometry: || {
                format!(
                    "`timestep_features_dims(batch)`, batch = t.len: grid (batch), block ({})",
                    embed::TIMESTEP_FEATURES / 2
                )
            },
            lengths: "out ≥ 256 t.len",
            plan: |dev, p| {
                p.need(
                    "out",
                    product(&[embed::TIMESTEP_FEATURES as usize, p.len("t")]),
                    "256 t.len",
                )?;
                launch::timestep_features(dev, p.all("t"), p.all("out"))
            },
        },
        K::LinearRows | K::LinearRowsSilu => Rule {
            geometry: || {
                format!(
                    "`linear_rows_dims(out_features)`: grid (⌈out_features/{}⌉), block ({})",
                    embed::LINEAR_ROWS_WARPS,
                    embed::LINEAR_ROWS_WARPS * WARP_SIZE
                )
            },
            lengths: "x ≥ rows in_features, w ≥ out_features in_features, bias ≥ out_features, out ≥ rows out_features",
            plan: |dev, p| {
                let (rows, i, o) = (p.u("rows"), p.u("in_features"), p.u("out_features"));
                p.need("x", product(&[rows, i]), "rows in_features")?;
                p.need("w", product(&[o, i]), "out_features in_features")?;
                p.need("bias", o as u128, "out_features")?;
                p.need("out", product(&[rows, o]), "rows out_features")?;
                let silu = p.kernel() == K::LinearRowsSilu;
                launch::linear_rows(
                    dev,
                    p.all("x"),
                    p.all("w"),
                    p.all("bias"),
                    p.all("out"),
                    rows,
                    i,
                    o,
                    silu,
                )
            },
        },
        K::LabelEmbedSilu => Rule {
            geometry: || {
                format!(
                    "`label_embed_silu_dims(batch, hidden)`, batch = labels.len: grid (⌈hidden/{0}⌉, batch), \
                     block ({0})",
                    embed::LABEL_EMBED_THREADS
                )
            },
            lengths: "t_emb ≥ labels.len hidden, silu_c ≥ labels.len hidden, table ≥ hidden (every label < \
                      table.len / hidden)",
            plan: |dev, p| {
                let (batch, hidden) = (p.len("labels"), p.u("hidden"));
                p.need("t_emb", product(&[batch, hidden]), "labels.len hidden")?;
                p.need("silu_c", product(&[batch, hidden]), "labels.len hidden")?;
                p.need("table", hidden as u128, "hidden")?;
                let (t_emb, table, labels, out) = (p.all("t_emb"), p.all("table"), p.all("labels"), p.all("silu_c"));
                launch::label_embed_silu(dev, t_emb, table, labels, out, hidden)
            },
        },
        K::PatchEmbed => Rule {
            geometry: || {
                format!(
                    "`patch_embed_dims(batch, tokens)`, tokens = (side/patch)², batch = x.len / (channels side²): \
                     grid (⌈tokens/{}⌉, batch), block ({})",
                    embed::PATCH_TOKENS_PER_BLOCK,
                    embed::PATCH_THREADS
                )
            },
            lengths: "x = batch channels side² (whole images), w ≥ hidden channels patch², bias ≥ hidden, \
                      pos ≥ tokens hidden, out ≥ batch tokens hidden; channels patch² ≤ 256",
            plan: |dev, p| {
                let (c, side, patch, hidden) = (p.u("channels"), p.u("side"), p.u("patch"), p.u("hidden"));
                let batch = p.count("x", product(&[c, side, side]), "channels side²")?;
                let grid_side = side.checked_div(patch).unwrap_or(0);
                let tokens = grid_side * grid_side;
                p.need("w", product(&[hidden, c, patch, patch]), "hidden channels patch²")?;
                p.need("bias", hidden as u128, "hidden")?;
                p.need("pos", product(&[tokens, hidden]), "tokens hidden")?;
                p.need("out", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                let (x, w, bias, pos, out) = (p.all("x"), p.all("w"), p.all("bias"), p.all("pos"), p.all("out"));
                launch::patch_embed(dev, x, w, bias, pos, out, batch, c, side, patch, hidden)
            },
        },
        K::LayerNormModulate => Rule {
            geometry: || {
                format!(
                    "`layer_norm_modulate_dims(rows)`: grid (⌈rows/{}⌉), block ({})",
                    norm::NORM_ROWS_PER_BLOCK,
                    norm::NORM_ROWS_PER_BLOCK * WARP_SIZE
                )
            },
            lengths: "x ≥ rows hidden, out ≥ rows hidden, modulation ≥ ((rows - 1)/tokens) mod_stride + \
                      max(shift_offset, scale_offset) + hidden; tokens ≥ 1",
            plan: |dev, p| {
                let (rows, hidden, tokens) = (p.u("rows"), p.u("hidden"), p.u("tokens"));
                let (stride, shift, scale) = (p.u("mod_stride"), p.u("shift_offset"), p.u("scale_offset"));
                p.positive("tokens", rows)?;
                p.need("x", product(&[rows, hidden]), "rows hidden")?;
                p.need("out", product(&[rows, hidden]), "rows hidden")?;
                let modulation = p.per_sample(rows, tokens, stride, shift.max(scale), hidden);
                let rule = "((rows - 1)/tokens) mod_stride + max(shift_offset, scale_offset) + hidden";
                p.need("modulation", modulation, rule)?;
                let (x, m, out) = (p.all("x"), p.all("modulation"), p.all("out"));
                launch::layer_norm_modulate(dev, x, m, out, rows, hidden, tokens, stride, shift, scale)
            },
        },
        K::GemmBias | K::GemmBiasGelu => Rule {
            geometry: gemm_geometry,
            lengths: "a ≥ m k, w ≥ n k, bias ≥ n, out ≥ m n",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                p.need("a", product(&[m, k]), "m k")?;
                p.need("w", product(&[n, k]), "n k")?;
                p.need("bias", n as u128, "n")?;
                p.need("out", product(&[m, n]), "m n")?;
                let epilogue = match p.kernel() {
                    K::GemmBias => Epilogue::Bias,
                    _ => Epilogue::BiasGelu,
                };
                launch::gemm(
                    dev,
                    p.all("a"),
                    p.all("w"),
                    p.all("bias"),
                    p.all("out"),
                    m,
                    n,
                    k,
                    epilogue,
                )
            },
        },
        K::GemmBiasGatedResidual => Rule {
            geometry: gemm_geometry,
            lengths: "a ≥ m k, w ≥ n k, bias ≥ n, x ≥ m n, gate ≥ ((m - 1)/tokens) gate_stride + gate_offset + n; \
                      tokens ≥ 1",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                let (tokens, stride, offset) = p.gate((m, "m"), (n, "n"))?;
                p.need("a", product(&[m, k]), "m k")?;
                p.need("w", product(&[n, k]), "n k")?;
                p.need("bias", n as u128, "n")?;
                p.need("x", product(&[m, n]), "m n")?;
                let (a, w, bias, x, g) = (p.all("a"), p.all("w"), p.all("bias"), p.all("x"), p.all("gate"));
                launch::gemm_gated_residual(dev, a, w, bias, x, g, m, n, k, tokens, stride, offset)
            },
        },
        K::Gemm128Bias | K::Gemm128BiasGelu | K::Gemm64Bias | K::Gemm64BiasGelu => Rule {
            geometry: tiled_geometry,
            lengths: "a ≥ m k, w ≥ n k, bias ≥ n, out ≥ m n",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                p.need("a", product(&[m, k]), "m k")?;
                p.need("w", product(&[n, k]), "n k")?;
                p.need("bias", n as u128, "n")?;
                p.need("out", product(&[m, n]), "m n")?;
                let (tile, epilogue) = match p.kernel() {
                    K::Gemm128Bias => (GemmTile::Tile128, Epilogue::Bias),
                    K::Gemm128BiasGelu => (GemmTile::Tile128, Epilogue::BiasGelu),
                    K::Gemm64Bias => (GemmTile::Tile64, Epilogue::Bias),
                    _ => (GemmTile::Tile64, Epilogue::BiasGelu),
                };
                let (a, w, bias, out) = (p.all("a"), p.all("w"), p.all("bias"), p.all("out"));
                launch::gemm_tiled(dev, tile, a, w, bias, out, m, n, k, epilogue)
            },
        },
        K::Gemm128BiasGatedResidual | K::Gemm64BiasGatedResidual => Rule {
            geometry: tiled_geometry,
            lengths: "a ≥ m k, w ≥ n k, bias ≥ n, x ≥ m n, gate ≥ ((m - 1)/tokens) gate_stride + gate_offset + n; \
                      tokens ≥ 1",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                let (tokens, stride, offset) = p.gate((m, "m"), (n, "n"))?;
                p.need("a", product(&[m, k]), "m k")?;
                p.need("w", product(&[n, k]), "n k")?;
                p.need("bias", n as u128, "n")?;
                p.need("x", product(&[m, n]), "m n")?;
                let tile = match p.kernel() {
                    K::Gemm128BiasGatedResidual => GemmTile::Tile128,
                    _ => GemmTile::Tile64,
                };
                let (a, w, bias, x, g) = (p.all("a"), p.all("w"), p.all("bias"), p.all("x"), p.all("gate"));
                launch::gemm_tiled_gated_residual(dev, tile, a, w, bias, x, g, m, n, k, tokens, stride, offset)
            },
        },
        K::GemmSplitkPartial => Rule {
            geometry: || {
                format!(
                    "`gemm_splitk_partial_dims(m, n, splits)`, splits = max(1, ⌈k/k_per_split⌉): grid (⌈n/64⌉, \
                     ⌈m/64⌉, splits), block ({})",
                    gemm_tiled::TILED_THREADS
                )
            },
            lengths: "a ≥ m k, w ≥ n k, partials ≥ splits m n; k_per_split ≥ 1",
            plan: |dev, p| {
                let (m, n, k, per) = (p.u("m"), p.u("n"), p.u("k"), p.u("k_per_split"));
                p.need("a", product(&[m, k]), "m k")?;
                p.need("w", product(&[n, k]), "n k")?;
                let splits = launch::splitk_count(k, per);
                p.need("partials", product(&[splits, m, n]), "splits m n")?;
                launch::gemm_splitk_partial(dev, p.all("a"), p.all("w"), p.all("partials"), m, n, k, per)
            },
        },
        K::GemmSplitkBias | K::GemmSplitkBiasGelu => Rule {
            geometry: splitk_reduce_geometry,
            lengths: "partials ≥ splits m n, bias ≥ n, out ≥ m n; splits ≥ 1",
            plan: |dev, p| {
                let (m, n, splits) = (p.u("m"), p.u("n"), p.u("splits"));
                p.need("partials", product(&[splits, m, n]), "splits m n")?;
                p.need("bias", n as u128, "n")?;
                p.need("out", product(&[m, n]), "m n")?;
                let epilogue = match p.kernel() {
                    K::GemmSplitkBias => Epilogue::Bias,
                    _ => Epilogue::BiasGelu,
                };
                let (partials, bias, out) = (p.all("partials"), p.all("bias"), p.all("out"));
                launch::gemm_splitk_reduce(dev, partials, bias, out, m, n, splits, epilogue)
            },
        },
        K::GemmSplitkBiasGatedResidual => Rule {
            geometry: splitk_reduce_geometry,
            lengths: "partials ≥ splits m n, bias ≥ n, x ≥ m n, gate ≥ ((m - 1)/tokens) gate_stride + gate_offset + n; \
                      splits ≥ 1, tokens ≥ 1",
            plan: |dev, p| {
                let (m, n, splits) = (p.u("m"), p.u("n"), p.u("splits"));
                let (tokens, stride, offset) = p.gate((m, "m"), (n, "n"))?;
                p.need("partials", product(&[splits, m, n]), "splits m n")?;
                p.need("bias", n as u128, "n")?;
                p.need("x", product(&[m, n]), "m n")?;
                let (partials, bias, x, g) = (p.all("partials"), p.all("bias"), p.all("x"), p.all("gate"));
                launch::gemm_splitk_gated_residual(dev, partials, bias, x, g, m, n, splits, tokens, stride, offset)
            },
        },
        K::GemmTf32Bias
        | K::GemmTf32BiasGelu
        | K::GemmTf32X3Bias
        | K::GemmTf32X3BiasGelu
        | K::GemmBf16Bias
        | K::GemmBf16BiasGelu => Rule {
            geometry: gemm_tc_geometry,
            lengths: "a ≥ m k, w ≥ n k (f32) or n bf16_weight_words(k) (packed BF16), bias ≥ n, out ≥ m n",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                let (precision, _) = tc_precision(p.kernel());
                p.need("a", product(&[m, k]), "m k")?;
                let weight = tc_weight(p, precision, n, k)?;
                p.need("bias", n as u128, "n")?;
                p.need("out", product(&[m, n]), "m n")?;
                let epilogue = match p.kernel() {
                    K::GemmTf32Bias | K::GemmTf32X3Bias | K::GemmBf16Bias => Epilogue::Bias,
                    _ => Epilogue::BiasGelu,
                };
                let (a, bias, out) = (p.all("a"), p.all("bias"), p.all("out"));
                launch::gemm_tc(dev, precision, a, weight, bias, out, m, n, k, epilogue)
            },
        },
        K::GemmTf32BiasGatedResidual | K::GemmTf32X3BiasGatedResidual | K::GemmBf16BiasGatedResidual => Rule {
            geometry: gemm_tc_geometry,
            lengths: "a ≥ m k, w ≥ n k (f32) or n bf16_weight_words(k) (packed BF16), bias ≥ n, x ≥ m n, \
                      gate ≥ ((m - 1)/tokens) gate_stride + gate_offset + n; tokens ≥ 1",
            plan: |dev, p| {
                let (m, n, k) = (p.u("m"), p.u("n"), p.u("k"));
                let (tokens, stride, offset) = p.gate((m, "m"), (n, "n"))?;
                let (precision, _) = tc_precision(p.kernel());
                p.need("a", product(&[m, k]), "m k")?;
                let weight = tc_weight(p, precision, n, k)?;
                p.need("bias", n as u128, "n")?;
                p.need("x", product(&[m, n]), "m n")?;
                let (a, bias, x, g) = (p.all("a"), p.all("bias"), p.all("x"), p.all("gate"));
                launch::gemm_tc_gated_residual(dev, precision, a, weight, bias, x, g, m, n, k, tokens, stride, offset)
            },
        },
        K::FlashAttention => Rule {
            geometry: || {
                format!(
                    "`attention_dims(batch, tokens, heads)`, batch = qkv.len / (3 tokens heads head_dim): \
                     grid (⌈tokens/{}⌉, heads, batch), block ({})",
                    attention::ATTN_QUERY_TILE,
                    attention::ATTN_WARPS * WARP_SIZE
                )
            },
            lengths: "qkv = batch 3 tokens heads head_dim, out ≥ batch tokens heads head_dim; head_dim ≤ 128; \
                      scale = 1/√head_dim (f32)",
            plan: |dev, p| {
                let (tokens, heads, head_dim) = (p.u("tokens"), p.u("heads"), p.u("head_dim"));
                let batch = p.count("qkv", product(&[3, tokens, heads, head_dim]), "3 tokens heads head_dim")?;
                let out = product(&[batch, tokens, heads, head_dim]);
                p.need("out", out, "batch tokens heads head_dim")?;
                launch::attention(dev, p.all("qkv"), p.all("out"), batch, tokens, heads, head_dim)
            },
        },
        K::FlashAttentionTf32 | K::FlashAttentionTf32X3 | K::FlashAttentionBf16 => Rule {
            geometry: || {
                format!(
                    "`attention_tc_dims(batch, tokens, heads, head_dim)`, batch = qkv.len / (3 tokens heads head_dim): \
                     grid (⌈tokens/{}⌉, heads, batch), block ({}), dynamic shared memory \
                     `attention_tc_shared_bytes(head_dim)` (at most {} bytes)",
                    resca_gpu_kernels::attention_tc::ATTN_TC_QUERY_TILE,
                    resca_gpu_kernels::attention_tc::ATTN_TC_WARPS * WARP_SIZE,
                    resca_gpu_kernels::attention_tc::ATTN_TC_MAX_SHARED_BYTES
                )
            },
            lengths: "qkv = batch 3 tokens heads head_dim, out ≥ batch tokens heads head_dim; head_dim ≤ 128; \
                      scale = 1/√head_dim (f32)",
            plan: |dev, p| {
                let (tokens, heads, head_dim) = (p.u("tokens"), p.u("heads"), p.u("head_dim"));
                let batch = p.count("qkv", product(&[3, tokens, heads, head_dim]), "3 tokens heads head_dim")?;
                let out = product(&[batch, tokens, heads, head_dim]);
                p.need("out", out, "batch tokens heads head_dim")?;
                let precision = match p.kernel() {
                    K::FlashAttentionTf32 => Precision::Tf32,
                    K::FlashAttentionTf32X3 => Precision::Tf32x3,
                    _ => Precision::Bf16,
                };
                let (qkv, out) = (p.all("qkv"), p.all("out"));
                launch::attention_tc(dev, precision, qkv, out, batch, tokens, heads, head_dim)
            },
        },
        K::Unpatchify => Rule {
            geometry: || {
                threads_1d(
                    "unpatchify_dims(batch out_channels side²)",
                    final_layer::UNPATCHIFY_THREADS,
                )
            },
            lengths: "out ≥ batch out_channels side², tokens ≥ batch (side/patch)² patch² out_channels; patch ≥ 1",
            plan: |dev, p| {
                let (batch, oc, side, patch) = (p.u("batch"), p.u("out_channels"), p.u("side"), p.u("patch"));
                let total = product(&[batch, oc, side, side]);
                if total > 0 && patch == 0 {
                    return Err(DeviceError::Invalid("kernel `unpatchify`: `patch` is 0".into()));
                }
                let grid_side = side.checked_div(patch).unwrap_or(0);
                p.need("out", total, "batch out_channels side²")?;
                let tokens = product(&[batch, grid_side, grid_side, patch, patch, oc]);
                p.need("tokens", tokens, "batch (side/patch)² patch² out_channels")?;
                launch::unpatchify(dev, p.all("tokens"), p.all("out"), batch, oc, side, patch)
            },
        },
        K::CfgMix => Rule {
            geometry: || {
                format!(
                    "`cfg_mix_dims(pairs, out_channels, pixels)`: grid (⌈pairs min({}, out_channels) pixels/{1}⌉), \
                     block ({1})",
                    guidance::GUIDED_CHANNELS,
                    guidance::CFG_THREADS
                )
            },
            lengths: "out ≥ 2 pairs out_channels pixels",
            plan: |dev, p| {
                let (pairs, oc, pixels) = (p.u("pairs"), p.u("out_channels"), p.u("pixels"));
                p.need("out", product(&[2, pairs, oc, pixels]), "2 pairs out_channels pixels")?;
                launch::cfg_mix(dev, p.all("out"), pairs, oc, pixels, p.f("scale"))
            },
        },
        K::DdimStep => Rule {
            geometry: || threads_1d("ddim_step_dims(total)", ddim::DDIM_THREADS),
            lengths: STEP_LENGTHS,
            plan: |dev, p| {
                let (total, c, oc, pixels) = step_sizes(p)?;
                let (x, model_out, out) = (p.first("x", total), p.all("model_out"), p.all("out"));
                launch::ddim_step(dev, x, model_out, out, c, oc, pixels, p.ddim("coef"))
            },
        },
        K::FlowEulerStep => Rule {
            geometry: || threads_1d("flow_euler_step_dims(total)", flow::FLOW_THREADS),
            lengths: STEP_LENGTHS,
            plan: |dev, p| {
                let (total, c, oc, pixels) = step_sizes(p)?;
                let (x, model_out, out) = (p.first("x", total), p.all("model_out"), p.all("out"));
                launch::flow_euler_step(dev, x, model_out, out, c, oc, pixels, p.f("dt"))
            },
        },
        K::GatedAdd => Rule {
            geometry: || threads_1d("gated_add_dims(rows hidden)", residual::GATED_ADD_THREADS),
            lengths: "x ≥ rows hidden, branch ≥ rows hidden, gate ≥ ((rows - 1)/tokens) gate_stride + \
                      gate_offset + hidden; tokens ≥ 1",
            plan: |dev, p| {
                let (rows, hidden) = (p.u("rows"), p.u("hidden"));
                let (tokens, stride, offset) = p.gate((rows, "rows"), (hidden, "hidden"))?;
                p.need("x", product(&[rows, hidden]), "rows hidden")?;
                p.need("branch", product(&[rows, hidden]), "rows hidden")?;
                let (x, branch, g) = (p.all("x"), p.all("branch"), p.all("gate"));
                launch::gated_add(dev, x, branch, g, rows, hidden, tokens, stride, offset)
            },
        },
        K::TaylorUpdate => Rule {
            geometry: || threads_1d("taylor_dims(len)", taylor::TAYLOR_THREADS),
            lengths: "new ≥ len, factors ≥ (min(stored, max_order) + 1) len; max_order ≤ 4, stored ≤ 5",
            plan: |dev, p| {
                let (len, stored, max_order) = (p.u("len"), p.u("stored"), p.u("max_order"));
                p.need("new", len as u128, "len")?;
                let slots = stored.min(max_order) + 1;
                p.need("factors", product(&[slots, len]), "(min(stored, max_order) + 1) len")?;
                launch::taylor_update(dev, p.all("factors"), p.all("new"), len, stored, max_order, p.f("gap"))
            },
        },
        K::TaylorPredict => Rule {
            geometry: || threads_1d("taylor_dims(len)", taylor::TAYLOR_THREADS),
            lengths: "out ≥ len, factors ≥ clamp(stored, 1, 5) len; stored ≤ 5",
            plan: |dev, p| {
                let (len, stored) = (p.u("len"), p.u("stored"));
                p.need("out", len as u128, "len")?;
                p.need(
                    "factors",
                    product(&[stored.clamp(1, 5), len]),
                    "clamp(stored, 1, 5) len",
                )?;
                launch::taylor_predict(dev, p.all("factors"), p.all("out"), len, stored, p.taylor("coef"))
            },
        },
        K::TaylorPredictGatedAdd => Rule {
            geometry: || threads_1d("taylor_dims(rows hidden)", taylor::TAYLOR_THREADS),
            lengths: "x ≥ rows hidden, factors ≥ clamp(stored, 1, 5) rows hidden, gate ≥ ((rows - 1)/tokens) \
                      gate_stride + gate_offset + hidden, coef = 8 (the fields of TaylorCoefficients in order); \
                      tokens ≥ 1; stored ≤ 5",
            plan: |dev, p| {
                let (rows, hidden, stored) = (p.u("rows"), p.u("hidden"), p.u("stored"));
                let (tokens, stride, offset) = p.gate((rows, "rows"), (hidden, "hidden"))?;
                p.need("x", product(&[rows, hidden]), "rows hidden")?;
                let factors = product(&[stored.clamp(1, 5), rows, hidden]);
                p.need("factors", factors, "clamp(stored, 1, 5) rows hidden")?;
                p.need("coef", taylor::TAYLOR_COEFFICIENT_VALUES as u128, "8")?;
                let coef = p.first("coef", taylor::TAYLOR_COEFFICIENT_VALUES);
                let (x, f, g) = (p.all("x"), p.all("factors"), p.all("gate"));
                launch::taylor_predict_gated_add(dev, x, f, g, rows, hidden, tokens, stride, offset, stored, coef)
            },
        },
        K::RowNormalize => Rule {
            geometry: || {
                format!(
                    "`row_normalize_dims(rows)`: grid (⌈rows/{}⌉), block ({})",
                    tetc::NORMALIZE_ROWS_PER_BLOCK,
                    tetc::NORMALIZE_ROWS_PER_BLOCK * WARP_SIZE
                )
            },
            lengths: "x ≥ rows dim, out ≥ rows dim",
            plan: |dev, p| {
                let (rows, dim) = (p.u("rows"), p.u("dim"));
                p.need("x", product(&[rows, dim]), "rows dim")?;
                p.need("out", product(&[rows, dim]), "rows dim")?;
                launch::row_normalize(dev, p.all("x"), p.all("out"), rows, dim)
            },
        },
        K::Similarity => Rule {
            geometry: || {
                format!(
                    "`similarity_dims(batch, tokens)`, batch = s.len / tokens²: grid (⌈tokens/{}⌉, ⌈tokens/{}⌉, \
                     batch), block ({2}, {2})",
                    gemm::GEMM_TILE_N,
                    gemm::GEMM_TILE_M,
                    gemm::GEMM_THREADS_SIDE
                )
            },
            lengths: "s = batch tokens², xn ≥ batch tokens dim",
            plan: |dev, p| {
                let (tokens, dim) = (p.u("tokens"), p.u("dim"));
                let batch = p.count("s", product(&[tokens, tokens]), "tokens²")?;
                p.need("xn", product(&[batch, tokens, dim]), "batch tokens dim")?;
                launch::similarity(dev, p.all("xn"), p.all("s"), batch, tokens, dim)
            },
        },
        K::SimilarityEma => Rule {
            geometry: || threads_1d("elementwise_dims(total)", tetc::TETC_THREADS),
            lengths: "s ≥ total, smoothed ≥ total; has_previous 0 or 1",
            plan: |dev, p| {
                let total = p.u("total");
                p.need("s", total as u128, "total")?;
                p.need("smoothed", total as u128, "total")?;
                let (s, smoothed) = (p.first("s", total), p.all("smoothed"));
                launch::similarity_ema(dev, s, smoothed, p.f("alpha"), p.u("has_previous") != 0)
            },
        },
        K::KmedoidsAssign => Rule {
            geometry: || per_item_geometry("batch, tokens"),
            lengths: "s ≥ batch tokens², medoids ≥ batch clusters, labels ≥ batch tokens (every medoid < tokens)",
            plan: |dev, p| {
                let (batch, tokens, clusters) = (p.u("batch"), p.u("tokens"), p.u("clusters"));
                p.need("s", product(&[batch, tokens, tokens]), "batch tokens²")?;
                p.need("medoids", product(&[batch, clusters]), "batch clusters")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                let (s, medoids, labels) = (p.all("s"), p.all("medoids"), p.all("labels"));
                launch::kmedoids_assign(dev, s, medoids, labels, batch, tokens, clusters)
            },
        },
        K::KmedoidsUpdate => Rule {
            geometry: || {
                format!(
                    "`kmedoids_update_dims(batch, clusters)`, batch = next.len / clusters: grid (clusters, batch), \
                     block ({})",
                    tetc::MEDOID_THREADS
                )
            },
            lengths: "next = batch clusters, medoids ≥ batch clusters, s ≥ batch tokens², labels ≥ batch tokens",
            plan: |dev, p| {
                let (tokens, clusters) = (p.u("tokens"), p.u("clusters"));
                let batch = p.count("next", clusters as u128, "clusters")?;
                p.need("medoids", product(&[batch, clusters]), "batch clusters")?;
                p.need("s", product(&[batch, tokens, tokens]), "batch tokens²")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                let (s, labels, medoids, next) = (p.all("s"), p.all("labels"), p.all("medoids"), p.all("next"));
                launch::kmedoids_update(dev, s, labels, medoids, next, batch, tokens, clusters)
            },
        },
        K::CenterRandomProxies => Rule {
            geometry: || per_item_geometry("batch, clusters"),
            lengths: "s ≥ batch tokens², labels ≥ batch tokens, medoids ≥ batch clusters, uniforms ≥ batch \
                      clusters, proxies ≥ batch clusters",
            plan: |dev, p| {
                let (batch, tokens, clusters) = (p.u("batch"), p.u("tokens"), p.u("clusters"));
                p.need("s", product(&[batch, tokens, tokens]), "batch tokens²")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                for name in ["medoids", "uniforms", "proxies"] {
                    p.need(name, product(&[batch, clusters]), "batch clusters")?;
                }
                let (s, labels, medoids) = (p.all("s"), p.all("labels"), p.all("medoids"));
                let (uniforms, proxies) = (p.all("uniforms"), p.all("proxies"));
                launch::center_random_proxies(dev, s, labels, medoids, uniforms, proxies, batch, tokens, clusters)
            },
        },
        K::ClusterCounts => Rule {
            geometry: || per_item_geometry("batch, clusters"),
            lengths: "labels ≥ batch tokens, counts ≥ batch clusters",
            plan: |dev, p| {
                let (batch, tokens, clusters) = (p.u("batch"), p.u("tokens"), p.u("clusters"));
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                p.need("counts", product(&[batch, clusters]), "batch clusters")?;
                launch::cluster_counts(dev, p.all("labels"), p.all("counts"), batch, tokens, clusters)
            },
        },
        K::ClusterMembers => Rule {
            geometry: || per_item_geometry("batch, clusters"),
            lengths: "labels ≥ batch tokens, ranks ≥ batch clusters, members ≥ batch clusters",
            plan: |dev, p| {
                let (batch, tokens, clusters) = (p.u("batch"), p.u("tokens"), p.u("clusters"));
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                p.need("ranks", product(&[batch, clusters]), "batch clusters")?;
                p.need("members", product(&[batch, clusters]), "batch clusters")?;
                let (labels, ranks, members) = (p.all("labels"), p.all("ranks"), p.all("members"));
                launch::cluster_members(dev, labels, ranks, members, batch, tokens, clusters)
            },
        },
        K::KmeansAssignL1 => Rule {
            geometry: || per_item_geometry("batch, tokens"),
            lengths: "x ≥ batch tokens hidden, centroids ≥ batch clusters hidden, labels ≥ batch tokens",
            plan: |dev, p| {
                let (batch, tokens, clusters, hidden) = (p.u("batch"), p.u("tokens"), p.u("clusters"), p.u("hidden"));
                p.need("x", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                p.need(
                    "centroids",
                    product(&[batch, clusters, hidden]),
                    "batch clusters hidden",
                )?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                let (x, centroids, labels) = (p.all("x"), p.all("centroids"), p.all("labels"));
                launch::kmeans_assign_l1(dev, x, centroids, labels, batch, tokens, clusters, hidden)
            },
        },
        K::KmeansUpdate => Rule {
            geometry: || {
                format!(
                    "`kmeans_update_dims(batch, clusters)`, batch = moved.len / clusters: grid (clusters, batch), \
                     block ({})",
                    clusca::KMEANS_THREADS
                )
            },
            lengths: "moved = batch clusters, x ≥ batch tokens hidden, labels ≥ batch tokens, centroids ≥ batch \
                      clusters hidden, next ≥ batch clusters hidden",
            plan: |dev, p| {
                let (tokens, clusters, hidden) = (p.u("tokens"), p.u("clusters"), p.u("hidden"));
                let batch = p.count("moved", clusters as u128, "clusters")?;
                p.need("x", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                p.need(
                    "centroids",
                    product(&[batch, clusters, hidden]),
                    "batch clusters hidden",
                )?;
                p.need("next", product(&[batch, clusters, hidden]), "batch clusters hidden")?;
                let (x, labels, centroids) = (p.all("x"), p.all("labels"), p.all("centroids"));
                let (next, moved) = (p.all("next"), p.all("moved"));
                launch::kmeans_update(dev, x, labels, centroids, next, moved, batch, tokens, clusters, hidden)
            },
        },
        K::CommitRows => Rule {
            geometry: || threads_1d("elementwise_dims(total)", tetc::TETC_THREADS),
            lengths: "src ≥ total, dst ≥ total, mask ≥ ⌈total/row_len⌉",
            plan: |dev, p| {
                let (total, row_len) = (p.u("total"), p.u("row_len"));
                p.need("src", total as u128, "total")?;
                p.need("dst", total as u128, "total")?;
                p.need("mask", total.div_ceil(row_len.max(1)) as u128, "⌈total/row_len⌉")?;
                let (src, dst, mask) = (p.all("src"), p.first("dst", total), p.all("mask"));
                launch::commit_rows(dev, src, dst, mask, row_len)
            },
        },
        K::CluscaPropagate => Rule {
            geometry: || threads_1d("elementwise_dims(batch tokens hidden)", tetc::TETC_THREADS),
            lengths: "cache0 ≥ batch tokens hidden, fresh ≥ batch clusters hidden, labels ≥ batch tokens, picks ≥ \
                      batch clusters, ranks ≥ batch clusters",
            plan: |dev, p| {
                let (batch, tokens, clusters, hidden) = (p.u("batch"), p.u("tokens"), p.u("clusters"), p.u("hidden"));
                p.need("cache0", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                p.need("fresh", product(&[batch, clusters, hidden]), "batch clusters hidden")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                p.need("picks", product(&[batch, clusters]), "batch clusters")?;
                p.need("ranks", product(&[batch, clusters]), "batch clusters")?;
                let (cache0, fresh, labels) = (p.all("cache0"), p.all("fresh"), p.all("labels"));
                let (picks, ranks, gamma) = (p.all("picks"), p.all("ranks"), p.f("gamma"));
                launch::clusca_propagate(
                    dev, cache0, fresh, labels, picks, ranks, batch, tokens, clusters, hidden, gamma,
                )
            },
        },
        K::GatherRows => Rule {
            geometry: || threads_1d("gather_dims(batch per_row hidden)", gather::GATHER_THREADS),
            lengths: "out ≥ batch per_row hidden, indices ≥ batch per_row, src ≥ batch tokens hidden (every index \
                      < tokens)",
            plan: |dev, p| {
                let (batch, tokens, per_row, hidden) = (p.u("batch"), p.u("tokens"), p.u("per_row"), p.u("hidden"));
                p.need("out", product(&[batch, per_row, hidden]), "batch per_row hidden")?;
                p.need("indices", product(&[batch, per_row]), "batch per_row")?;
                p.need("src", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                let (src, indices, out) = (p.all("src"), p.all("indices"), p.all("out"));
                launch::gather_rows(dev, src, indices, out, batch, tokens, per_row, hidden)
            },
        },
        K::ScatterRows => Rule {
            geometry: || threads_1d("gather_dims(batch per_row hidden)", gather::GATHER_THREADS),
            lengths: "rows ≥ batch per_row hidden, indices ≥ batch per_row, dst ≥ batch tokens hidden (every index \
                      < tokens)",
            plan: |dev, p| {
                let (batch, tokens, per_row, hidden) = (p.u("batch"), p.u("tokens"), p.u("per_row"), p.u("hidden"));
                p.need("rows", product(&[batch, per_row, hidden]), "batch per_row hidden")?;
                p.need("indices", product(&[batch, per_row]), "batch per_row")?;
                p.need("dst", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                let (rows, indices, dst) = (p.all("rows"), p.all("indices"), p.all("dst"));
                launch::scatter_rows(dev, rows, indices, dst, batch, tokens, per_row, hidden)
            },
        },
        K::PddsProxyResiduals => Rule {
            geometry: || threads_1d("proxy_residuals_dims(batch clusters hidden)", pdds::PDDS_THREADS),
            lengths: "fresh ≥ batch clusters hidden, proxies ≥ batch clusters, residuals ≥ order batch clusters \
                      hidden, cache ≥ min(order, stored) batch tokens hidden (every proxy < tokens); order ≤ 4; stored ≤ 5; sign 1 or -1",
            plan: |dev, p| {
                let (batch, tokens, clusters, hidden) = (p.u("batch"), p.u("tokens"), p.u("clusters"), p.u("hidden"));
                let (order, stored, sign) = (p.u("order"), p.u("stored"), p.f("sign"));
                p.need("fresh", product(&[batch, clusters, hidden]), "batch clusters hidden")?;
                p.need("proxies", product(&[batch, clusters]), "batch clusters")?;
                let residuals = product(&[order, batch, clusters, hidden]);
                p.need("residuals", residuals, "order batch clusters hidden")?;
                let cache = product(&[order.min(stored), batch, tokens, hidden]);
                p.need("cache", cache, "min(order, stored) batch tokens hidden")?;
                let (fresh, c, proxies, r) = (p.all("fresh"), p.all("cache"), p.all("proxies"), p.all("residuals"));
                launch::pdds_proxy_residuals(
                    dev, fresh, c, proxies, r, batch, tokens, clusters, hidden, order, stored, sign,
                )
            },
        },
        K::PddsUpdate => Rule {
            geometry: || {
                format!(
                    "`pdds_update_dims(batch tokens)`: grid (⌈batch tokens/{}⌉), block ({})",
                    pdds::PDDS_ROWS_PER_BLOCK,
                    pdds::PDDS_ROWS_PER_BLOCK * WARP_SIZE
                )
            },
            lengths: "out ≥ batch tokens hidden, x ≥ batch tokens hidden, gate ≥ (batch - 1) gate_stride + \
                      gate_offset + hidden, labels ≥ batch tokens, proxies ≥ batch clusters, fresh ≥ batch \
                      clusters hidden, residuals ≥ order \
                      batch clusters hidden (BDF2: batch clusters hidden), cache ≥ min(order + 1, stored) batch \
                      tokens hidden (BDF2: min(2, stored) ...); solver 0 (Taylor) or 1 (BDF2); order ≤ 4; stored ≤ 5; sign 1 or -1",
            plan: |dev, p| {
                let (batch, tokens, clusters, hidden) = (p.u("batch"), p.u("tokens"), p.u("clusters"), p.u("hidden"));
                let (order, stored, sign) = (p.u("order"), p.u("stored"), p.f("sign"));
                let bdf2 = p.u("solver") == pdds::SOLVER_BDF2 as usize;
                p.need("out", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                p.need("labels", product(&[batch, tokens]), "batch tokens")?;
                p.need("proxies", product(&[batch, clusters]), "batch clusters")?;
                p.need("fresh", product(&[batch, clusters, hidden]), "batch clusters hidden")?;
                p.need("x", product(&[batch, tokens, hidden]), "batch tokens hidden")?;
                let (stride, offset) = (p.u("gate_stride"), p.u("gate_offset"));
                let gate = p.per_sample(batch.saturating_mul(tokens), tokens, stride, offset, hidden);
                p.need("gate", gate, "(batch - 1) gate_stride + gate_offset + hidden")?;
                let (residual_slots, cache_slots) = if bdf2 {
                    (1, stored.min(2))
                } else {
                    (order, stored.min(order + 1))
                };
                let residuals = product(&[residual_slots, batch, clusters, hidden]);
                p.need("residuals", residuals, "order batch clusters hidden")?;
                let cache = product(&[cache_slots, batch, tokens, hidden]);
                p.need("cache", cache, "min(order + 1, stored) batch tokens hidden")?;
                let (c, labels, proxies) = (p.all("cache"), p.all("labels"), p.all("proxies"));
                let (r, fresh, out) = (p.all("residuals"), p.all("fresh"), p.all("out"));
                let (x, gate) = (p.all("x"), p.all("gate"));
                launch::pdds_update(
                    dev, c, labels, proxies, r, fresh, out, x, gate, batch, tokens, clusters, hidden, order, stored,
                    sign, bdf2, stride, offset,
                )
            },
        },
    }
}

/// A one-dimensional launch of one thread per element of `total` (the `*_dims` argument).
fn threads_1d(dims: &str, threads: u32) -> String {
    let total = dims
        .split_once('(')
        .map_or(dims, |(_, rest)| rest.trim_end_matches(')'));
    format!("`{dims}`: grid (⌈{total}/{threads}⌉), block ({threads})")
}

fn gemm_tc_geometry() -> String {
    format!(
        "`gemm_tc_dims(m, n, mode)`: grid (⌈n/{}⌉, ⌈m/{}⌉), block ({}), dynamic shared memory \
         `tc_shared_bytes(mode)` (at most {} bytes)",
        resca_gpu_kernels::gemm_tc::TC_TILE_N,
        resca_gpu_kernels::gemm_tc::TC_TILE_M,
        resca_gpu_kernels::gemm_tc::TC_THREADS,
        resca_gpu_kernels::gemm_tc::TC_MAX_SHARED_BYTES
    )
}

/// The precision of a tensor-core GEMM kernel, and whether its weight is packed BF16.
fn tc_precision(kernel: Kernel) -> (Precision, bool) {
    use Kernel as K;
    match kernel {
        K::GemmTf32Bias | K::GemmTf32BiasGelu | K::GemmTf32BiasGatedResidual => (Precision::Tf32, false),
        K::GemmTf32X3Bias | K::GemmTf32X3BiasGelu | K::GemmTf32X3BiasGatedResidual => (Precision::Tf32x3, false),
        _ => (Precision::Bf16, true),
    }
}

/// The weight `w` of a tensor-core GEMM call, its length checked.
fn tc_weight(p: &Params<'_>, precision: Precision, n: usize, k: usize) -> std::result::Result<GemmWeight, DeviceError> {
    if precision == Precision::Bf16 {
        let words = resca_gpu_kernels::gemm_tc::bf16_weight_words(k as u32) as usize;
        p.need("w", product(&[n, words]), "n bf16_weight_words(k)")?;
        Ok(GemmWeight::Bf16(p.all("w")))
    } else {
        p.need("w", product(&[n, k]), "n k")?;
        Ok(GemmWeight::F32(p.all("w")))
    }
}

fn gemm_geometry() -> String {
    format!(
        "`gemm_dims(m, n)`: grid (⌈n/{}⌉, ⌈m/{}⌉), block ({2}, {2})",
        gemm::GEMM_TILE_N,
        gemm::GEMM_TILE_M,
        gemm::GEMM_THREADS_SIDE
    )
}

fn tiled_geometry() -> String {
    format!(
        "`gemm_tiled_dims(m, n, micro)`, micro = 8 (`gemm128_*`) or 4 (`gemm64_*`): grid (⌈n/(16 micro)⌉, \
         ⌈m/(16 micro)⌉), block ({})",
        gemm_tiled::TILED_THREADS
    )
}

fn splitk_reduce_geometry() -> String {
    threads_1d("gemm_splitk_reduce_dims(m n)", gemm_tiled::SPLITK_REDUCE_THREADS)
}

fn per_item_geometry(items: &str) -> String {
    let threads = tetc::TETC_THREADS;
    let product = items.replace(", ", " ");
    format!("`per_item_dims({items})`: grid (⌈{product}/{threads}⌉), block ({threads})")
}

const STEP_LENGTHS: &str = "x ≥ total, out ≥ total, model_out ≥ (total/(channels pixels)) out_channels pixels; \
                            total a multiple of channels pixels, out_channels ≥ channels";

/// The sizes of a sampler step (`ddim_step`, `flow_euler_step`), checked.
fn step_sizes(p: &Params) -> std::result::Result<(usize, usize, usize, usize), DeviceError> {
    let (total, c, oc, pixels) = (p.u("total"), p.u("channels"), p.u("out_channels"), p.u("pixels"));
    let name = p.kernel().name();
    let image = c * pixels;
    if total > 0 && (image == 0 || !total.is_multiple_of(image) || oc < c) {
        return Err(DeviceError::Invalid(format!(
            "kernel `{name}`: total {total} must be a multiple of channels pixels = {image}, and out_channels \
             {oc} at least channels {c}"
        )));
    }
    p.need("x", total as u128, "total")?;
    p.need("out", total as u128, "total")?;
    let model_out = product(&[total.checked_div(image).unwrap_or(0), oc, pixels]);
    p.need("model_out", model_out, "(total/(channels pixels)) out_channels pixels")?;
    Ok((total, c, oc, pixels))
}

/// Where each buffer of `call` lives when the host's addresses are the device's (a GPU launch):
/// buffer `i` is device buffer `i`, from its start.
pub fn placement_by_position(call: &HostCall) -> Vec<Option<RawSlice>> {
    call.values
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            Value::Buffer(b) => Some(RawSlice {
                id: i,
                dtype: b.dtype,
                offset: 0,
                len: b.len,
            }),
            _ => None,
        })
        .collect()
}

fn device_error(e: DeviceError) -> Error {
    let status = match e {
        DeviceError::Kernel(_) => RescaStatus::Kernel,
        DeviceError::Invalid(_) => RescaStatus::InvalidArgument,
        DeviceError::Backend(_) => RescaStatus::Cuda,
    };
    Error::new(status, e.to_string())
}

/// Plans a host call without running it: its geometry, or `None` for an empty launch.
pub fn dims_of(call: &HostCall) -> Result<Option<LaunchDims>> {
    plan(call, &placement_by_position(call), &mut |_| Ok(())).map_err(device_error)
}

/// The launch geometry of `kernel` for these arguments, as `resca_gpu_launch` would launch it:
/// the arguments are checked exactly as for a launch (names, kinds, lengths), nothing runs and
/// no memory is read. For hosts that launch the committed PTX themselves.
///
/// # Safety
/// `kernel` is a NUL-terminated string; `args` points to `count` arguments (their `name`s
/// NUL-terminated); `out` points to writable memory for one `RescaLaunchDims`. Null pointers are
/// refused.
///
/// Ownership: everything stays the caller's; the library keeps no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_launch_dims(
    kernel: *const c_char,
    args: *const RescaArg,
    count: usize,
    out: *mut RescaLaunchDims,
) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_launch_dims: `out` is a null pointer"));
        }
        // SAFETY: the caller's contract.
        let call = unsafe { read_call(kernel, args, count) }?;
        let dims = dims_of(&call)?.map(RescaLaunchDims::from).unwrap_or_default();
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(dims) };
        Ok(())
    })
}

/// Runs one launch on the CPU simulator of `resca-host` over host memory: the same kernel body,
/// geometry and checks as a GPU launch, with every access bounds-checked and every race between
/// threads reported (`RESCA_STATUS_KERNEL`). Buffers are host memory (`address` a pointer cast to
/// an integer); the buffers the kernel writes are written back when it succeeds (a failed launch
/// leaves them unchanged). Buffers may overlap as on a GPU (an in-place step passes the same
/// buffer twice). Slow: for testing a host without a GPU, and as the reference a GPU launch is
/// compared with.
///
/// # Safety
/// As `resca_launch_dims`; every buffer's `address` points to `len` readable elements of its
/// type, and to writable ones for the parameters the kernel writes (`GlobalMut`).
///
/// Ownership: everything stays the caller's; the library keeps no pointer after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_sim_launch(kernel: *const c_char, args: *const RescaArg, count: usize) -> RescaStatus {
    entry(|| {
        // SAFETY: the caller's contract.
        let call = unsafe { read_call(kernel, args, count) }?;
        // SAFETY: the caller's contract on the buffers.
        unsafe { sim_launch(&call) }
    })
}

/// Host buffers that overlap, as one simulator buffer: `start` its first byte, `elements` its
/// length.
struct Span {
    start: u64,
    end: u64,
    dtype: DType,
}

/// Runs `call` on a fresh simulator: overlapping host buffers become one simulator buffer (so
/// that aliasing behaves as on a GPU), the written ones are copied back after the launch.
///
/// # Safety
/// Every buffer of `call` is valid host memory for its length (writable where written).
pub unsafe fn sim_launch(call: &HostCall) -> Result<()> {
    let name = call.kernel.name();
    let params = call.kernel.params();
    // Group the buffers into spans of overlapping bytes.
    let mut spans: Vec<Span> = Vec::new();
    let mut span_of = vec![usize::MAX; call.values.len()];
    let mut order: Vec<(usize, HostBuffer)> = call.buffers().filter(|(_, b)| b.len > 0).collect();
    order.sort_by_key(|(_, b)| b.address);
    for (i, b) in order {
        let (start, end) = (b.address, b.address + (b.len * element_bytes(b.dtype)) as u64);
        match spans.last_mut() {
            Some(last) if start < last.end => {
                if last.dtype != b.dtype || (start - last.start) % element_bytes(b.dtype) as u64 != 0 {
                    return Err(Error::invalid(format!(
                        "kernel `{name}`: `{}` overlaps another buffer of another element type or alignment",
                        params[i].name
                    )));
                }
                last.end = last.end.max(end);
            }
            _ => spans.push(Span {
                start,
                end,
                dtype: b.dtype,
            }),
        }
        span_of[i] = spans.len() - 1;
    }
    let mut sim = SimDevice::new();
    let mut ids = Vec::with_capacity(spans.len());
    for span in &spans {
        let bytes = (span.end - span.start) as usize;
        // SAFETY: the span covers host buffers of the call (the caller's contract).
        let host = unsafe { std::slice::from_raw_parts(span.start as *const u8, bytes) };
        ids.push(upload_bytes(&mut sim, span.dtype, host).map_err(device_error)?);
    }
    let placement: Vec<Option<RawSlice>> = call
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            // An empty buffer: an empty slice of a fresh, empty simulator buffer.
            Value::Buffer(b) if span_of[i] == usize::MAX => Some(RawSlice {
                id: usize::MAX,
                dtype: b.dtype,
                offset: 0,
                len: 0,
            }),
            Value::Buffer(b) => {
                let span = &spans[span_of[i]];
                Some(RawSlice {
                    id: ids[span_of[i]],
                    dtype: b.dtype,
                    offset: ((b.address - span.start) as usize) / element_bytes(b.dtype),
                    len: b.len,
                })
            }
            _ => None,
        })
        .collect();
    // Empty buffers get a simulator buffer of their own, of no elements.
    let mut placement = placement;
    for slot in placement.iter_mut().flatten().filter(|s| s.id == usize::MAX) {
        slot.id = alloc_empty(&mut sim, slot.dtype).map_err(device_error)?;
    }
    plan(call, &placement, &mut |launched| sim.launch(launched)).map_err(device_error)?;
    for (i, b) in call.buffers().filter(|(_, b)| b.written && b.len > 0) {
        let slice = placement[i].expect("a placed buffer");
        // SAFETY: a written buffer of the call: writable host memory (the caller's contract).
        let host = unsafe { std::slice::from_raw_parts_mut(b.address as *mut u8, b.len * element_bytes(b.dtype)) };
        download_bytes(&mut sim, slice, host).map_err(device_error)?;
    }
    Ok(())
}

fn upload_bytes(sim: &mut SimDevice, dtype: DType, bytes: &[u8]) -> std::result::Result<usize, DeviceError> {
    fn typed<T: Element>(
        sim: &mut SimDevice,
        bytes: &[u8],
        read: fn(&[u8]) -> T,
    ) -> std::result::Result<usize, DeviceError> {
        let values: Vec<T> = bytes.chunks_exact(size_of::<T>()).map(read).collect();
        Ok(sim.upload_new(&values)?.id())
    }
    match dtype {
        DType::F32 => typed(sim, bytes, |b| f32::from_ne_bytes(b.try_into().expect("4 bytes"))),
        DType::U32 => typed(sim, bytes, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))),
        DType::F64 => typed(sim, bytes, |b| f64::from_ne_bytes(b.try_into().expect("8 bytes"))),
    }
}

fn alloc_empty(sim: &mut SimDevice, dtype: DType) -> std::result::Result<usize, DeviceError> {
    Ok(match dtype {
        DType::F32 => sim.alloc::<f32>(0)?.id(),
        DType::U32 => sim.alloc::<u32>(0)?.id(),
        DType::F64 => sim.alloc::<f64>(0)?.id(),
    })
}

fn download_bytes(sim: &mut SimDevice, slice: RawSlice, out: &mut [u8]) -> std::result::Result<(), DeviceError> {
    fn typed<T: Element>(
        sim: &mut SimDevice,
        slice: RawSlice,
        out: &mut [u8],
        bytes: fn(T) -> Vec<u8>,
    ) -> std::result::Result<(), DeviceError> {
        let buffer = Buffer::<T>::from_id(slice.id, slice.offset + slice.len);
        let values = sim.download_vec(buffer.range(slice.offset, slice.len))?;
        for (chunk, v) in out.chunks_exact_mut(size_of::<T>()).zip(values) {
            chunk.copy_from_slice(&bytes(v));
        }
        Ok(())
    }
    match slice.dtype {
        DType::F32 => typed(sim, slice, out, |v: f32| v.to_ne_bytes().to_vec()),
        DType::U32 => typed(sim, slice, out, |v: u32| v.to_ne_bytes().to_vec()),
        DType::F64 => typed(sim, slice, out, |v: f64| v.to_ne_bytes().to_vec()),
    }
}

/// The `TaylorCoefficients` of a prediction `distance` steps past the last full step (the
/// sampler's step index of the last full step minus the current one), as the pipeline computes
/// them, into `out[0..8]` (the `coefficients` of a `RESCA_ARG_TAYLOR` argument).
///
/// # Safety
/// `out` points to 8 writable floats (null refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_taylor_coefficients(distance: f32, out: *mut f32) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_taylor_coefficients: `out` is a null pointer"));
        }
        let c = resca_host::pipeline::caching_engine::taylor_coefficients(distance);
        let values = [
            c.scale1, c.power1, c.scale2, c.power2, c.scale3, c.power3, c.scale4, c.power4,
        ];
        // SAFETY: 8 writable floats (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len()) };
        Ok(())
    })
}

/// The `DdimCoefficients` of DDIM step `index` (counting down from `steps - 1` to 0, as the
/// sampler does) of a `steps`-step schedule, as the pipeline computes them, into `out[0..4]`
/// (the `coefficients` of a `RESCA_ARG_DDIM` argument).
///
/// # Safety
/// `out` points to 4 writable floats (null refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_ddim_coefficients(steps: u32, index: u32, out: *mut f32) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_ddim_coefficients: `out` is a null pointer"));
        }
        if index >= steps {
            return Err(Error::invalid(format!(
                "resca_ddim_coefficients: step index {index} of a {steps}-step schedule"
            )));
        }
        let schedule = resca_reference::ddim::DdimSchedule::new(steps as usize)
            .map_err(|e| Error::invalid(format!("resca_ddim_coefficients: {e}")))?;
        let c = resca_host::pipeline::ddim_coefficients(&schedule, index as usize);
        let values = [c.recip, c.recip_m1, c.sqrt_prev, c.sqrt_one_minus_prev];
        // SAFETY: 4 writable floats (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len()) };
        Ok(())
    })
}
