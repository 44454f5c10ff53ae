//! Reading and writing safetensors files with errors that name the file and the tensor.
//!
//! Reading memory-maps the file, so loading a 2.7 GB DiT-XL/2 checkpoint copies each tensor once
//! into its owned array and never holds a second full copy. Writing goes to a temporary file in
//! the destination's folder and is renamed into place, so a failed run never leaves a partial file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};

/// An open safetensors file: its parsed header and its bytes (a read-only map of a file, or bytes
/// embedded in the binary).
pub struct SafetensorsFile {
    path: PathBuf,
    map: Bytes,
    metadata: HashMap<String, String>,
}

/// Where a [`SafetensorsFile`]'s bytes live.
enum Bytes {
    Mapped(memmap2::Mmap),
    Embedded(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Embedded(bytes) => bytes,
        }
    }
}

impl SafetensorsFile {
    /// Opens and validates `path` (header syntax, dtypes, offsets, and that the file holds every
    /// byte the header declares).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not being
        // truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// A safetensors file embedded in the binary (`include_bytes!`); `name` stands in for the
    /// path in messages.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        Self::parse(PathBuf::from(name), Bytes::Embedded(bytes))
    }

    fn parse(path: PathBuf, map: Bytes) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(&map).map_err(|e| Error::NotSafetensors {
            path: path.clone(),
            reason: describe(&e, map.len()),
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Self { path, map, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.map).expect("validated in open")
    }

    /// Names of every tensor in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors().names().into_iter().map(str::to_string).collect();
        names.sort();
        names
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors().tensor(name).ok().map(|t| t.shape().to_vec())
    }

    /// A value of the file's `__metadata__` table.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        // Borrow the map for the lifetime of self, not of a temporary SafeTensors.
        let tensors = SafeTensors::deserialize(&self.map).expect("validated in open");
        tensors.tensor(name).map_err(|_| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// Reads a floating-point tensor as f32 (f32 as is; f16, bf16 and f64 converted).
    pub fn read_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let view = self.view(name)?;
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => {
                return Err(self.wrong_dtype(name, other, "a float type (F32, F16, BF16 or F64)"));
            }
        };
        Ok(ArrayD::from_shape_vec(IxDyn(view.shape()), values).expect("safetensors validated the length"))
    }

    /// Reads a floating-point tensor as f64 (for the float64 copies of the reference vectors).
    pub fn read_f64(&self, name: &str) -> Result<ArrayD<f64>> {
        let view = self.view(name)?;
        if view.dtype() != Dtype::F64 {
            return Ok(self.read_f32(name)?.mapv(f64::from));
        }
        let values = view
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok(ArrayD::from_shape_vec(IxDyn(view.shape()), values).expect("safetensors validated the length"))
    }

    /// Reads a floating-point tensor and checks its shape.
    pub fn read_f32_shaped(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>> {
        self.check_shape(name, expected)?;
        self.read_f32(name)
    }

    /// Reads an integer tensor (I64, I32, I16, I8, U8 ... ) as i64.
    pub fn read_i64(&self, name: &str) -> Result<ArrayD<i64>> {
        let view = self.view(name)?;
        let bytes = view.data();
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I16 => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(self.wrong_dtype(name, other, "an integer type (I64, I32, I16, I8 or U8)"));
            }
        };
        Ok(ArrayD::from_shape_vec(IxDyn(view.shape()), values).expect("safetensors validated the length"))
    }

    /// Fails with [`Error::WrongShape`] unless tensor `name` exists with shape `expected`.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let found = self.view(name)?.shape().to_vec();
        if found != expected {
            return Err(Error::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                found,
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    fn wrong_dtype(&self, name: &str, found: Dtype, expected: &str) -> Error {
        Error::WrongDtype {
            path: self.path.clone(),
            name: name.to_string(),
            found: format!("{found:?}"),
            expected: expected.to_string(),
        }
    }
}

/// Explains a safetensors parse failure in the user's terms.
fn describe(error: &SafeTensorError, file_len: usize) -> String {
    match error {
        SafeTensorError::HeaderTooSmall => {
            format!("the file is {file_len} bytes, too short for a safetensors header")
        }
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
            "the header length field does not fit the file (truncated, or not a safetensors file)".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("the header declares more (or fewer) tensor bytes than the {file_len}-byte file holds (truncated?)")
        }
        other => other.to_string(),
    }
}

/// A tensor to write: f32 or i64 data with its shape.
pub enum OutTensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl OutTensor {
    fn bytes(&self) -> (Dtype, Vec<usize>, Vec<u8>) {
        match self {
            OutTensor::F32(a) => (
                Dtype::F32,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            OutTensor::I64(a) => (
                Dtype::I64,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        }
    }
}

/// Writes `tensors` (and string `metadata`) to `path` atomically: a temporary file in the same
/// folder, renamed into place once complete.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, OutTensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let (dtype, shape, bytes) = t.bytes();
            (name, dtype, shape, bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("shape matches data");
            (name.clone(), view)
        })
        .collect::<Vec<_>>();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let temp = temporary_sibling(path);
    let written = safetensors::serialize_to_file(views, metadata, &temp).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    });
    finish_atomic_write(path, &temp, written)
}

/// A hidden temporary name next to `path`, unique per process.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Renames `temp` to `path` if `written` succeeded, else removes `temp`; either way no partial
/// file is left at `path`.
pub fn finish_atomic_write(path: &Path, temp: &Path, written: Result<()>) -> Result<()> {
    match written {
        Ok(()) => std::fs::rename(temp, path).map_err(|source| {
            let _ = std::fs::remove_file(temp);
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }),
        Err(e) => {
            let _ = std::fs::remove_file(temp);
            Err(e)
        }
    }
}
