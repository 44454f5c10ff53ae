//! Reading and writing safetensors files with errors that name the file and the tensor.
//!
//! Opening reads and checks the header once (syntax, duplicate names, dtypes, offsets, and that
//! the file holds exactly the bytes the header declares); every later lookup uses the parsed
//! table. Tensors are read with positioned reads straight into their owned arrays, so loading a
//! 2.7 GB DiT-XL/2 checkpoint copies each tensor once and never holds a second full copy. The
//! file is not memory-mapped: a mapped file truncated by another process while it is read kills
//! the reader with SIGBUS, whereas a read of a truncated file returns an error, which names the
//! tensor and the file.
//!
//! Only regular files are opened: a FIFO, a device or a folder is refused by name before it is
//! opened (a FIFO would block the open until a writer appears) and checked again on the open
//! handle. Writing goes to a fresh temporary file in the destination's folder (random name,
//! created exclusively, so a symbolic link planted there is never followed) and is renamed into
//! place once complete, so a failed run leaves no partial file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use crate::error::{Error, Result};

/// The largest header accepted, as the safetensors format itself limits it.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes converted per positioned read when a tensor's dtype is not f32 (f16, bf16, f64, ints).
const CONVERSION_CHUNK_BYTES: usize = 1 << 20;

/// An open safetensors file: its parsed header and where its bytes are (an open regular file,
/// or bytes embedded in the binary).
pub struct SafetensorsFile {
    path: PathBuf,
    source: Source,
    /// Offset of the data section (8 + header length).
    data_start: u64,
    tensors: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

/// Where a [`SafetensorsFile`]'s bytes live.
enum Source {
    /// An open regular file, with its length and modification time when it was opened.
    File {
        file: File,
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
    Embedded(&'static [u8]),
}

/// What a path that is not a regular file is, in words ("a folder", "a FIFO", ...).
pub fn file_kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (symbolic links to one are followed).
/// Anything else is refused by name before it is opened, so a FIFO never blocks the open; the
/// open itself does not block either (`O_NONBLOCK`), and the open handle is checked again, so a
/// path swapped in between is refused too.
pub fn open_regular_file(path: &Path) -> Result<File> {
    let read_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_a_file = |kind: &'static str| Error::NotAFile {
        path: path.to_path_buf(),
        kind,
    };
    let before = std::fs::metadata(path).map_err(read_error)?;
    if !before.is_file() {
        return Err(not_a_file(file_kind(before.file_type())));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let opened = file.metadata().map_err(read_error)?;
    if !opened.is_file() {
        return Err(not_a_file(file_kind(opened.file_type())));
    }
    Ok(file)
}

/// Reads a small text file (a JSON config) of at most `limit` bytes, refusing anything that is
/// not a regular file and anything larger, before reading it.
pub fn read_small_text_file(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let file = open_regular_file(path)?;
    let read_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(read_error)?.len();
    if len > limit {
        return Err(Error::Input(format!(
            "{} is {len} bytes; a file of at most {limit} bytes is expected here",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

impl SafetensorsFile {
    /// Opens and validates `path` (a regular file; header syntax, duplicate names, dtypes,
    /// offsets, and that the file holds exactly the bytes the header declares). A PyTorch
    /// checkpoint (`torch.save`'s zip format, told by its first bytes) is opened too, its tensor
    /// table read from its pickle ([`crate::torch_file`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = open_regular_file(&path)?;
        let read_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let stat = file.metadata().map_err(read_error)?;
        let len = stat.len();
        let not_safetensors = |reason: String| Error::NotSafetensors {
            path: path.clone(),
            reason,
        };
        if len < 8 {
            return Err(not_safetensors(format!(
                "the file is {len} bytes, too short for a safetensors header"
            )));
        }
        let mut length_field = [0u8; 8];
        file.read_exact_at(&mut length_field, 0).map_err(read_error)?;
        if length_field.starts_with(crate::torch_file::LEGACY_MAGIC) {
            return Err(Error::NotTorchCheckpoint {
                path,
                reason: "it is in PyTorch's legacy format (before PyTorch 1.6), which is not read; load it and save it again with torch.save in a current PyTorch (the zip format)".into(),
            });
        }
        if length_field.starts_with(crate::torch_file::ZIP_MAGIC) {
            let tensors =
                crate::torch_file::read_tensor_table(&file, len).map_err(|reason| Error::NotTorchCheckpoint {
                    path: path.clone(),
                    reason,
                })?;
            let source = Source::File {
                file,
                len,
                modified: stat.modified().ok(),
            };
            return Ok(Self {
                path,
                source,
                data_start: 0,
                tensors,
                metadata: HashMap::new(),
            });
        }
        let header_len = header_length(u64::from_le_bytes(length_field), len).map_err(not_safetensors)?;
        let mut header = vec![0u8; header_len];
        file.read_exact_at(&mut header, 8).map_err(read_error)?;
        let source = Source::File {
            file,
            len,
            modified: stat.modified().ok(),
        };
        Self::parse(path, source, &header, len)
    }

    /// A safetensors file embedded in the binary (`include_bytes!`); `name` stands in for the
    /// path in messages.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        let path = PathBuf::from(name);
        let len = bytes.len() as u64;
        let not_safetensors = |reason: String| Error::NotSafetensors {
            path: path.clone(),
            reason,
        };
        let Some(length_field) = bytes.first_chunk::<8>() else {
            return Err(not_safetensors(format!(
                "the file is {len} bytes, too short for a safetensors header"
            )));
        };
        let header_len = header_length(u64::from_le_bytes(*length_field), len).map_err(not_safetensors)?;
        let header = &bytes[8..8 + header_len];
        Self::parse(path.clone(), Source::Embedded(bytes), header, len)
    }

    fn parse(path: PathBuf, source: Source, header: &[u8], file_len: u64) -> Result<Self> {
        let not_safetensors = |reason: String| Error::NotSafetensors {
            path: path.clone(),
            reason,
        };
        let (metadata, tensors) = parse_header(header).map_err(not_safetensors)?;
        let data_start = 8 + header.len() as u64;
        let data_len = check_layout(&tensors).map_err(not_safetensors)?;
        if data_start + data_len as u64 != file_len {
            return Err(not_safetensors(format!(
                "the header declares {data_len} bytes of tensor data, the {file_len}-byte file holds {} (truncated?)",
                file_len - data_start
            )));
        }
        Ok(Self {
            path,
            source,
            data_start,
            tensors,
            metadata: metadata.unwrap_or_default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of every tensor in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }

    /// Shape of tensor `name`, which must be present, with at least one dimension and no
    /// dimension of size 0 (an error names the tensor otherwise).
    pub fn nonempty_shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    /// A value of the file's `__metadata__` table.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The header entry of tensor `name`: present, at least 1-D, and holding values.
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if info.shape.is_empty() || info.shape.contains(&0) {
            return Err(Error::EmptyTensor {
                path: self.path.clone(),
                name: name.to_string(),
                shape: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// Fills `dst` with the bytes of tensor `name` starting `skip` bytes into its data.
    fn read_at(&self, name: &str, info: &TensorInfo, skip: usize, dst: &mut [u8]) -> Result<()> {
        let start = info.data_offsets.0 + skip;
        match &self.source {
            Source::Embedded(bytes) => {
                let from = self.data_start as usize + start;
                dst.copy_from_slice(&bytes[from..from + dst.len()]);
                Ok(())
            }
            Source::File { file, .. } => file
                .read_exact_at(dst, self.data_start + start as u64)
                .map_err(|source| Error::TensorRead {
                    path: self.path.clone(),
                    name: name.to_string(),
                    reason: match source.kind() {
                        std::io::ErrorKind::UnexpectedEof => {
                            "the file ended early: it was truncated or rewritten while it was being read".to_string()
                        }
                        _ => source.to_string(),
                    },
                }),
        }
    }

    /// Decodes tensor `name` element by element: `element_bytes` bytes per value, converted by
    /// `decode`, read in chunks (no copy of the whole tensor's bytes besides the result).
    fn decode<T>(
        &self,
        name: &str,
        info: &TensorInfo,
        element_bytes: usize,
        decode: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>> {
        let total = info.data_offsets.1 - info.data_offsets.0;
        let mut values = Vec::with_capacity(total / element_bytes);
        let chunk = CONVERSION_CHUNK_BYTES - CONVERSION_CHUNK_BYTES % element_bytes;
        let mut buffer = vec![0u8; chunk.min(total)];
        let mut done = 0;
        while done < total {
            let part = &mut buffer[..chunk.min(total - done)];
            self.read_at(name, info, done, part)?;
            values.extend(part.chunks_exact(element_bytes).map(&decode));
            done += part.len();
        }
        Ok(values)
    }

    /// The values of an f32 tensor, read straight into the result on little-endian machines.
    fn read_f32_values(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let count = (info.data_offsets.1 - info.data_offsets.0) / 4;
        if cfg!(target_endian = "little") {
            let mut values = vec![0f32; count];
            // SAFETY: the byte view covers exactly the vector's initialised values; every bit
            // pattern is a valid f32, and u8 has no alignment requirement.
            let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), count * 4) };
            self.read_at(name, info, 0, bytes)?;
            Ok(values)
        } else {
            self.decode(name, info, 4, |b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        }
    }

    /// Reads a floating-point tensor as f32 (f32 as is; f16, bf16 and f64 converted).
    pub fn read_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let info = self.info(name)?;
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => self.read_f32_values(name, info)?,
            Dtype::F16 => self.decode(name, info, 2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())?,
            Dtype::BF16 => self.decode(name, info, 2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())?,
            Dtype::F64 => self.decode(name, info, 8, |b| {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            })?,
            other => {
                return Err(self.wrong_dtype(name, other, "a float type (F32, F16, BF16 or F64)"));
            }
        };
        Ok(ArrayD::from_shape_vec(IxDyn(&info.shape), values).expect("the header check sized the data"))
    }

    /// Reads a floating-point tensor as f64 (for the float64 copies of the reference vectors).
    pub fn read_f64(&self, name: &str) -> Result<ArrayD<f64>> {
        let info = self.info(name)?;
        if info.dtype != Dtype::F64 {
            return Ok(self.read_f32(name)?.mapv(f64::from));
        }
        let values = self.decode(name, info, 8, |b| f64::from_le_bytes(b.try_into().expect("8 bytes")))?;
        Ok(ArrayD::from_shape_vec(IxDyn(&info.shape), values).expect("the header check sized the data"))
    }

    /// Reads a floating-point tensor and checks its shape.
    pub fn read_f32_shaped(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>> {
        self.check_shape(name, expected)?;
        self.read_f32(name)
    }

    /// Reads an integer tensor (I64, I32, I16, I8, U8 ... ) as i64.
    pub fn read_i64(&self, name: &str) -> Result<ArrayD<i64>> {
        let info = self.info(name)?;
        let values: Vec<i64> = match info.dtype {
            Dtype::I64 => self.decode(name, info, 8, |b| i64::from_le_bytes(b.try_into().expect("8 bytes")))?,
            Dtype::I32 => self.decode(name, info, 4, |b| {
                i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64
            })?,
            Dtype::I16 => self.decode(name, info, 2, |b| i16::from_le_bytes([b[0], b[1]]) as i64)?,
            Dtype::I8 => self.decode(name, info, 1, |b| b[0] as i8 as i64)?,
            Dtype::U8 => self.decode(name, info, 1, |b| b[0] as i64)?,
            other => {
                return Err(self.wrong_dtype(name, other, "an integer type (I64, I32, I16, I8 or U8)"));
            }
        };
        Ok(ArrayD::from_shape_vec(IxDyn(&info.shape), values).expect("the header check sized the data"))
    }

    /// Fails with [`Error::WrongShape`] unless tensor `name` exists with shape `expected`.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let found = &self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?
            .shape;
        if found != expected {
            return Err(Error::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                found: found.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    /// Fails if the file's length or modification time changed since it was opened: tensors
    /// read from a file rewritten in between may mix two versions.
    pub fn check_unchanged(&self) -> Result<()> {
        let Source::File { file, len, modified } = &self.source else {
            return Ok(());
        };
        let now = file.metadata().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        if now.len() != *len || now.modified().ok() != *modified {
            return Err(Error::NotSafetensors {
                path: self.path.clone(),
                reason: "the file changed while it was being read (rewritten or truncated by another program)"
                    .to_string(),
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

/// The header length of a file of `file_len` bytes whose length field says `declared`.
fn header_length(declared: u64, file_len: u64) -> std::result::Result<usize, String> {
    if declared > MAX_HEADER_BYTES {
        return Err(format!(
            "the header length field says {declared} bytes, more than the format's limit of {MAX_HEADER_BYTES} (not a safetensors file?)"
        ));
    }
    if declared > file_len - 8 {
        return Err(format!(
            "the header length field says {declared} bytes, but only {} follow it (truncated, or not a safetensors file)",
            file_len - 8
        ));
    }
    Ok(declared as usize)
}

type Header = (Option<HashMap<String, String>>, HashMap<String, TensorInfo>);

/// Parses the JSON header: an object of tensor entries and an optional `__metadata__` table of
/// strings. A name given twice is refused (a JSON map would silently keep the last).
pub fn parse_header(header: &[u8]) -> std::result::Result<Header, String> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};

    struct HeaderVisitor;
    impl<'de> Visitor<'de> for HeaderVisitor {
        type Value = Header;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object of tensor entries")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Header, A::Error> {
            let mut metadata = None;
            let mut tensors = HashMap::new();
            let twice = |name: &str| A::Error::custom(format!("the header names `{name}` twice"));
            while let Some(name) = map.next_key::<String>()? {
                if name == "__metadata__" {
                    if metadata.is_some() {
                        return Err(twice(&name));
                    }
                    metadata = Some(map.next_value_seed(UniqueStrings)?);
                    continue;
                }
                let info: TensorInfo = map
                    .next_value()
                    .map_err(|e| A::Error::custom(format!("tensor `{name}`: {e}")))?;
                match tensors.entry(name) {
                    std::collections::hash_map::Entry::Occupied(entry) => return Err(twice(entry.key())),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(info);
                    }
                }
            }
            Ok((metadata, tensors))
        }
    }

    /// A `__metadata__` table of strings, refusing a key given twice.
    struct UniqueStrings;
    impl<'de> DeserializeSeed<'de> for UniqueStrings {
        type Value = HashMap<String, String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for UniqueStrings {
        type Value = HashMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a `__metadata__` object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut table = HashMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if table.contains_key(&key) {
                    return Err(A::Error::custom(format!("`__metadata__` names `{key}` twice")));
                }
                table.insert(key, value);
            }
            Ok(table)
        }
    }

    let text = std::str::from_utf8(header).map_err(|e| format!("the header is not UTF-8 text: {e}"))?;
    if !text.starts_with('{') {
        return Err("the header is not a JSON object (not a safetensors file?)".to_string());
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = serde::Deserializer::deserialize_map(&mut deserializer, HeaderVisitor)
        .and_then(|header| deserializer.end().map(|()| header))
        .map_err(|e| format!("bad header: {e}"))?;
    Ok(parsed)
}

/// Checks that the tensors' data ranges tile the data section in offset order, each exactly as
/// long as its dtype and shape say (checked arithmetic: shapes come from the file); returns the
/// data section's length.
fn check_layout(tensors: &HashMap<String, TensorInfo>) -> std::result::Result<usize, String> {
    let mut by_offset: Vec<(&String, &TensorInfo)> = tensors.iter().collect();
    by_offset.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0usize;
    for (name, info) in by_offset {
        let (begin, stop) = info.data_offsets;
        if begin != end || stop < begin {
            return Err(format!(
                "tensor `{name}` has data offsets [{begin}, {stop}], but its data must start at byte {end} (gaps, overlaps and reversed ranges are invalid)"
            ));
        }
        let bytes = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| {
                format!(
                    "tensor `{name}`: shape {:?} of {:?} is too large",
                    info.shape, info.dtype
                )
            })?;
        if stop - begin != bytes {
            return Err(format!(
                "tensor `{name}` has {} data bytes, its shape {:?} of {:?} needs {bytes}",
                stop - begin,
                info.shape,
                info.dtype
            ));
        }
        end = stop;
    }
    Ok(end)
}

/// A tensor to write: f32 or i64 data with its shape.
pub enum OutTensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl OutTensor {
    fn dtype(&self) -> Dtype {
        match self {
            OutTensor::F32(_) => Dtype::F32,
            OutTensor::I64(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            OutTensor::F32(a) => a.shape(),
            OutTensor::I64(a) => a.shape(),
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            OutTensor::F32(a) => a.len() * 4,
            OutTensor::I64(a) => a.len() * 8,
        }
    }

    /// Writes the values little-endian, in logical (row-major) order, a block at a time.
    fn write_values(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut block = Vec::with_capacity(CONVERSION_CHUNK_BYTES);
        let mut push = |bytes: &[u8]| -> std::io::Result<()> {
            block.extend_from_slice(bytes);
            if block.len() >= CONVERSION_CHUNK_BYTES {
                out.write_all(&block)?;
                block.clear();
            }
            Ok(())
        };
        match self {
            OutTensor::F32(a) => a.iter().try_for_each(|v| push(&v.to_le_bytes()))?,
            OutTensor::I64(a) => a.iter().try_for_each(|v| push(&v.to_le_bytes()))?,
        }
        out.write_all(&block)
    }
}

/// Writes `tensors` (and string `metadata`) in the safetensors format to `out`: the header
/// (`__metadata__` first, then the tensors ordered by dtype alignment and name, as the
/// safetensors library writes them; padded with spaces to a multiple of 8 bytes), then each
/// tensor's little-endian values.
pub fn write_safetensors_to(
    out: &mut dyn Write,
    tensors: &[(String, OutTensor)],
    metadata: &HashMap<String, String>,
) -> std::io::Result<()> {
    let mut order: Vec<&(String, OutTensor)> = tensors.iter().collect();
    order.sort_by(|(a_name, a), (b_name, b)| b.dtype().cmp(&a.dtype()).then(a_name.cmp(b_name)));
    if let Some(pair) = order.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("two output tensors are named `{}`", pair[0].0),
        ));
    }
    let mut entries = Vec::new();
    if !metadata.is_empty() {
        entries.push(format!("\"__metadata__\":{}", to_json(metadata)));
    }
    let mut offset = 0;
    for (name, tensor) in &order {
        let info = TensorInfo {
            dtype: tensor.dtype(),
            shape: tensor.shape().to_vec(),
            data_offsets: (offset, offset + tensor.byte_len()),
        };
        offset += tensor.byte_len();
        entries.push(format!("{}:{}", to_json(name), to_json(&info)));
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (_, tensor) in &order {
        tensor.write_values(out)?;
    }
    out.flush()
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("strings and numbers serialise")
}

/// Writes `tensors` (and string `metadata`) to `path`: a fresh temporary file in the same
/// folder (random name, created exclusively, never through a symbolic link), renamed into place
/// once complete and removed on any error. A library call; the `resca` CLI adds its own checks
/// of destinations (`resca_host::outputs`).
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, OutTensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".resca-")
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(write_error)?;
    {
        let mut writer = std::io::BufWriter::new(temporary.as_file_mut());
        write_safetensors_to(&mut writer, &tensors, &metadata).map_err(write_error)?;
    }
    // Dropping `temporary` on an error above removes it.
    temporary.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(tensors: &[(String, OutTensor)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_safetensors_to(&mut bytes, tensors, &HashMap::new()).unwrap();
        bytes
    }

    #[test]
    fn written_files_match_the_safetensors_library_byte_for_byte() {
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32 - 2.5);
        let b = ArrayD::from_shape_fn(IxDyn(&[4]), |i| i[0] as i64 - 1);
        let ours = encoded(&[
            ("b".to_string(), OutTensor::I64(b.clone())),
            ("a".to_string(), OutTensor::F32(a.clone())),
        ]);
        let a_bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b_bytes: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
        let library = safetensors::serialize(
            [
                (
                    "a",
                    safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3], &a_bytes).unwrap(),
                ),
                (
                    "b",
                    safetensors::tensor::TensorView::new(Dtype::I64, vec![4], &b_bytes).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        assert_eq!(ours, library);
    }

    #[test]
    fn duplicate_names_are_refused_in_the_tensors_and_the_metadata() {
        let twice = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let error = parse_header(twice).unwrap_err();
        assert!(error.contains("names `a` twice"), "{error}");
        let meta = br#"{"__metadata__":{"k":"1","k":"2"}}"#;
        let error = parse_header(meta).unwrap_err();
        assert!(error.contains("`__metadata__` names `k` twice"), "{error}");
    }

    #[test]
    fn empty_and_zero_dimensional_tensors_are_refused_by_name() {
        let header = br#"{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[3,0],"data_offsets":[4,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 4]);
        let file = SafetensorsFile::from_static("f", Box::leak(bytes.into_boxed_slice())).unwrap();
        for name in ["s", "e"] {
            let error = file.read_f32(name).unwrap_err().to_string();
            assert!(
                error.contains(&format!("tensor `{name}`")) && error.contains("empty"),
                "{error}"
            );
            assert!(file.nonempty_shape(name).is_err());
        }
    }
}
