//! What a backend must offer the pipeline: typed buffers in device memory, copies to, from and
//! within it, and kernel launches by PTX entry name with the kernel's launch geometry and its
//! parameters in entry-point order. The simulator backend implements it on host vectors; a CUDA
//! driver binding implements it by `cuMemAlloc`/`cuMemcpy*`/`cuLaunchKernel`, passing each
//! [`Arg`] as the entry point's parameter of the same position (see [`Arg`] for the layouts).

use std::marker::PhantomData;

use resca_gpu_kernels::LaunchDims;
use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;

/// Element types of device buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    F64,
}

/// A type that device buffers hold.
pub trait Element: Copy + Default + PartialEq + std::fmt::Debug + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}

/// A device buffer of `len` elements of `T`: a handle, valid until the device is dropped.
#[derive(Debug)]
pub struct Buffer<T> {
    id: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T> Clone for Buffer<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Buffer<T> {}

impl<T: Element> Buffer<T> {
    /// A handle for buffer `id` of a device (for [`Device`] implementations).
    pub fn from_id(id: usize, len: usize) -> Self {
        Self {
            id,
            len,
            _element: PhantomData,
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer.
    pub fn all(&self) -> Slice<T> {
        self.range(0, self.len)
    }

    /// Elements `offset .. offset + len` (checked by the device when used).
    pub fn range(&self, offset: usize, len: usize) -> Slice<T> {
        Slice {
            id: self.id,
            offset,
            len,
            _element: PhantomData,
        }
    }
}

/// A contiguous part of a device buffer: what a kernel parameter points to.
#[derive(Debug)]
pub struct Slice<T> {
    pub id: usize,
    pub offset: usize,
    pub len: usize,
    _element: PhantomData<T>,
}

impl<T> Clone for Slice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slice<T> {}

impl<T: Element> Slice<T> {
    /// The type-erased form kernel arguments carry.
    pub fn raw(&self) -> RawSlice {
        RawSlice {
            id: self.id,
            dtype: T::DTYPE,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// A slice of some buffer, with its element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSlice {
    pub id: usize,
    pub dtype: DType,
    pub offset: usize,
    pub len: usize,
}

/// One kernel parameter, in entry-point order. Layouts as the PTX entry points take them:
/// `Read` / `Write` are a `Global` / `GlobalMut` (`#[repr(C)]` pointer to the slice's first
/// element, then its length as u64: 16 bytes), `U32` / `F32` plain 4-byte values, `Ddim` /
/// `Taylor` the `#[repr(C)]` coefficient structs (4 and 8 f32s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Read(RawSlice),
    Write(RawSlice),
    U32(u32),
    F32(f32),
    Ddim(DdimCoefficients),
    Taylor(TaylorCoefficients),
}

impl Arg {
    pub fn read<T: Element>(slice: Slice<T>) -> Self {
        Arg::Read(slice.raw())
    }

    pub fn write<T: Element>(slice: Slice<T>) -> Self {
        Arg::Write(slice.raw())
    }
}

macro_rules! kernels {
    ($($variant:ident => $name:literal,)*) => {
        /// Every kernel entry point of `resca-gpu-kernels` (its `KERNELS` list, same order).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($variant,)*
        }

        impl Kernel {
            pub const ALL: &[Kernel] = &[$(Kernel::$variant,)*];

            /// The PTX entry name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $name,)*
                }
            }
        }
    };
}

kernels! {
    TimestepFeatures => "timestep_features",
    LinearRows => "linear_rows",
    LinearRowsSilu => "linear_rows_silu",
    LabelEmbedSilu => "label_embed_silu",
    PatchEmbed => "patch_embed",
    LayerNormModulate => "layer_norm_modulate",
    GemmBias => "gemm_bias",
    GemmBiasGelu => "gemm_bias_gelu",
    GemmBiasGatedResidual => "gemm_bias_gated_residual",
    Attention => "attention",
    Unpatchify => "unpatchify",
    CfgMix => "cfg_mix",
    DdimStep => "ddim_step",
    GatedAdd => "gated_add",
    FlowEulerStep => "flow_euler_step",
    TaylorUpdate => "taylor_update",
    TaylorPredict => "taylor_predict",
    TaylorPredictGatedAdd => "taylor_predict_gated_add",
    RowNormalize => "row_normalize",
    Similarity => "similarity",
    SimilarityEma => "similarity_ema",
    KmedoidsAssign => "kmedoids_assign",
    KmedoidsUpdate => "kmedoids_update",
    CenterRandomProxies => "center_random_proxies",
    ClusterCounts => "cluster_counts",
    ClusterMembers => "cluster_members",
    KmeansAssignL1 => "kmeans_assign_l1",
    KmeansUpdate => "kmeans_update",
    CommitRows => "commit_rows",
    CluscaPropagate => "clusca_propagate",
    GatherRows => "gather_rows",
    ScatterRows => "scatter_rows",
    PddsProxyResiduals => "pdds_proxy_residuals",
    PddsUpdate => "pdds_update",
}

/// A launch: which entry point, its geometry (from the kernel module's `*_dims`), its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    pub kernel: Kernel,
    pub dims: LaunchDims,
    pub args: Vec<Arg>,
}

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A kernel failed a check of the backend that ran it (the simulator's bounds, race and
    /// barrier checks); the backend's own error is inside (downcast it to inspect it).
    #[error(transparent)]
    Kernel(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A buffer, slice or parameter that does not fit (a pipeline bug or unsupported sizes).
    #[error("{0}")]
    Invalid(String),
    /// The backend itself failed (driver errors).
    #[error("{0}")]
    Backend(String),
}

/// A GPU (or its simulation): memory and launches, in stream order.
pub trait Device {
    /// A short name for statistics (`sim`, `cuda`).
    fn name(&self) -> &'static str;
    /// A zero-filled buffer of `len` elements.
    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError>;
    /// Host to device; `data.len()` must equal `dst.len`.
    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError>;
    /// Device to host; `out.len()` must equal `src.len`.
    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError>;
    /// Device to device, `src.len == dst.len`, non-overlapping.
    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError>;
    /// Releases buffer `id` (after the launches using it); a later use is an error.
    fn free(&mut self, id: usize) -> Result<(), DeviceError>;
    /// Launches a kernel (asynchronously on a real GPU).
    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError>;
    /// Waits for every launch and copy issued so far (for timings).
    fn synchronize(&mut self) -> Result<(), DeviceError>;

    /// A buffer holding `data`.
    fn upload_new<T: Element>(&mut self, data: &[T]) -> Result<Buffer<T>, DeviceError> {
        let buffer = self.alloc(data.len())?;
        self.upload(buffer.all(), data)?;
        Ok(buffer)
    }

    /// The contents of `src` as a vector.
    fn download_vec<T: Element>(&mut self, src: Slice<T>) -> Result<Vec<T>, DeviceError> {
        let mut out = vec![T::default(); src.len];
        self.download(src, &mut out)?;
        Ok(out)
    }
}
