//! PyTorch checkpoints (`torch.save` files, the zip format of PyTorch 1.6 and later) read without
//! Python: a state dict of f32, f16 or bf16 tensors, such as the official DiT-XL/2 files (the
//! EMA state dict itself).
//!
//! A checkpoint is a zip archive of stored (uncompressed) entries: `<folder>/data.pkl`, a pickle
//! of the state dict in which each tensor refers to a storage by key, and `<folder>/data/<key>`,
//! the storage's raw little-endian bytes. The pickle is read by a small interpreter that never
//! executes anything: the only globals it accepts are the few that rebuild tensors and ordered
//! dicts ([`ALLOWED_GLOBALS`]); any other global (`os.system`, `builtins.eval`, a class of the
//! program that saved it) is an error naming it. Every tensor must be a contiguous view of its
//! storage (an offset into it is fine); a strided view is refused by name.
//!
//! The result is the same table of names, dtypes, shapes and byte ranges a safetensors header
//! gives ([`crate::safetensors_file::SafetensorsFile`] opens both formats): tensors are then read
//! with positioned reads straight from the storages' bytes in the archive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::rc::Rc;

use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

/// The first bytes of a zip archive (a local file header).
pub const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// The first bytes of a checkpoint in PyTorch's legacy format (before 1.6): a protocol-2 pickle
/// of a 10-byte integer, its magic number. Refused with a message saying how to convert it.
pub const LEGACY_MAGIC: &[u8; 4] = b"\x80\x02\x8a\x0a";

/// The largest `data.pkl` accepted (the same bound as a safetensors header): a state dict's
/// pickle holds names and shapes only, a few hundred bytes per tensor.
pub const MAX_PICKLE_BYTES: u64 = crate::safetensors_file::MAX_HEADER_BYTES;

/// Most dimensions a tensor may have (PyTorch itself allows 64).
const MAX_DIMS: usize = 64;

/// The globals a checkpoint's pickle may name: the functions and classes `torch.save` uses for a
/// state dict of tensors. Everything else is refused before anything is built.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
];

/// The tensor table of a checkpoint: each tensor's dtype, shape and absolute byte range in the
/// file. `file` is the open checkpoint of `len` bytes; errors are plain reasons (the caller
/// names the file).
pub fn read_tensor_table(file: &File, len: u64) -> Result<HashMap<String, TensorInfo>, String> {
    let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pickle_name = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i)?.ok().map(|name| name.into_owned()))
        .find(|name| name == "data.pkl" || name.ends_with("/data.pkl"))
        .ok_or("the zip archive has no `data.pkl`: it is not a torch.save checkpoint")?;
    let folder = pickle_name
        .strip_suffix("data.pkl")
        .expect("found by this suffix")
        .to_string();
    let byteorder = format!("{folder}byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut archive, &byteorder, 16)?;
        if order != b"little" {
            return Err(format!(
                "`{byteorder}` says the storages are {:?}-endian; only little-endian checkpoints are read",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pickle = read_entry(&mut archive, &pickle_name, MAX_PICKLE_BYTES)?;
    let root = Unpickler::new(&pickle).run()?;
    let entries = state_dict_entries(root)?;
    let mut table = HashMap::with_capacity(entries.len());
    for (name, tensor) in entries {
        let storage_name = format!("{folder}data/{}", tensor.storage.key);
        let (start, bytes) = stored_entry_range(&mut archive, &storage_name, len)
            .map_err(|reason| format!("tensor `{name}`: {reason}"))?;
        let info = tensor
            .byte_range(start, bytes)
            .map_err(|reason| format!("tensor `{name}`: {reason}"))?;
        if table.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice in the state dict"));
        }
    }
    Ok(table)
}

/// The bytes of a small entry (at most `limit`), decompressed if it is compressed in a way this
/// build reads (stored entries always are).
fn read_entry(archive: &mut zip::ZipArchive<&File>, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let entry = archive
        .by_name(name)
        .map_err(|e| format!("cannot read `{name}`: {e}"))?;
    if entry.size() > limit {
        return Err(format!(
            "`{name}` is {} bytes, above the limit of {limit}",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{name}`: {e}"))?;
    Ok(bytes)
}

/// Where the bytes of a storage entry lie in the file: (start, length). The entry must be
/// stored uncompressed and unencrypted (as `torch.save` writes it) and lie inside the file.
fn stored_entry_range(archive: &mut zip::ZipArchive<&File>, name: &str, file_len: u64) -> Result<(u64, u64), String> {
    let index = archive
        .index_for_name(name)
        .ok_or_else(|| format!("its storage `{name}` is missing from the archive"))?;
    let entry = archive
        .by_index_raw(index)
        .map_err(|e| format!("cannot read storage `{name}`: {e}"))?;
    if entry.encrypted() || entry.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "storage `{name}` is compressed ({:?}); torch.save stores storages uncompressed",
            entry.compression()
        ));
    }
    let start = entry
        .data_start()
        .ok_or_else(|| format!("storage `{name}` has no data offset"))?;
    let bytes = entry.size();
    if entry.compressed_size() != bytes || start.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(format!(
            "storage `{name}` declares {bytes} bytes at offset {start}, outside the {file_len}-byte file (truncated?)"
        ));
    }
    Ok((start, bytes))
}

/// A storage a tensor refers to: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Clone, Debug)]
struct StorageRef {
    dtype: Dtype,
    key: String,
    elements: u64,
}

impl StorageRef {
    fn element_bytes(&self) -> u64 {
        match self.dtype {
            Dtype::F32 => 4,
            _ => 2,
        }
    }
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
struct TensorRef {
    storage: StorageRef,
    offset: u64,
    shape: Vec<usize>,
    stride: Vec<u64>,
}

impl TensorRef {
    /// The tensor's bytes in the file, given its storage's entry at `start` with `bytes` bytes:
    /// a contiguous view inside the storage, or an error that says why not.
    fn byte_range(&self, start: u64, bytes: u64) -> Result<TensorInfo, String> {
        let element = self.storage.element_bytes();
        if bytes != self.storage.elements.saturating_mul(element) {
            return Err(format!(
                "its storage `{}` holds {bytes} bytes, the pickle declares {} elements of {element} bytes",
                self.storage.key, self.storage.elements
            ));
        }
        let mut contiguous = 1u64;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size != 1 && stride != contiguous {
                return Err(format!(
                    "it is a strided view of its storage (shape {:?}, strides {:?}); save contiguous tensors (`.contiguous()`)",
                    self.shape, self.stride
                ));
            }
            contiguous = contiguous.saturating_mul(size as u64);
        }
        let elements = self
            .shape
            .iter()
            .try_fold(1u64, |n, &size| n.checked_mul(size as u64))
            .ok_or("its shape's element count overflows")?;
        let end = self
            .offset
            .checked_add(elements)
            .filter(|&end| end <= self.storage.elements);
        if end.is_none() {
            return Err(format!(
                "it reads elements {}..{} of its storage `{}`, which has {}",
                self.offset,
                self.offset.saturating_add(elements),
                self.storage.key,
                self.storage.elements
            ));
        }
        let from = start + self.offset * element;
        let to = from + elements * element;
        let range = (
            usize::try_from(from).map_err(|_| "offset beyond this machine's address range")?,
            usize::try_from(to).map_err(|_| "offset beyond this machine's address range")?,
        );
        Ok(TensorInfo {
            dtype: self.storage.dtype,
            shape: self.shape.clone(),
            data_offsets: range,
        })
    }
}

/// A value of the pickle machine. Lists and dicts are shared (a memo entry and the stack see
/// the same object, as in Python). Bools, floats and bytes only ever appear in what a state dict
/// does not need (`requires_grad`, metadata): their values are not kept.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict or an `OrderedDict`, in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// One of [`ALLOWED_GLOBALS`].
    Global(&'static str),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// The state dict's (name, tensor) pairs: the pickle's root must be a dict of strings to
/// tensors.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(items) = root else {
        return Err(format!(
            "the pickle holds {}, not a state dict (a dict of names to tensors)",
            root.kind()
        ));
    };
    let items = items.borrow();
    items
        .iter()
        .map(|(key, value)| match (key, value) {
            (Value::Str(name), Value::Tensor(tensor)) => Ok((name.clone(), tensor.clone())),
            (Value::Str(name), other) => Err(format!(
                "entry `{name}` of the state dict is {}, not a tensor (a training checkpoint? save its model's or EMA's state_dict())",
                other.kind()
            )),
            (other, _) => Err(format!("the state dict has a key that is {}, not a name", other.kind())),
        })
        .collect()
}

/// Most values on the pickle machine's stack, and marks: bounds a hostile pickle's memory by
/// more than its size alone (each opcode pushes at most one value).
const MAX_STACK: usize = 1 << 20;

/// The pickle interpreter (protocols 2 to 5, the opcodes `torch.save` writes and their close
/// relatives).
struct Unpickler<'a> {
    bytes: &'a [u8],
    position: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            position: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("the pickle ends early (at byte {})", self.bytes.len()))?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64_len(&mut self) -> Result<usize, String> {
        let len = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(len).map_err(|_| format!("a length of {len} bytes"))
    }

    /// A text line (the `GLOBAL` opcode's operands).
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.position..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a text line")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a text line that is not UTF-8".to_string())?;
        self.position += end + 1;
        Ok(line.to_string())
    }

    fn string(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| "a string that is not UTF-8".to_string())?;
        Ok(Value::Str(text.to_string()))
    }

    fn push(&mut self, value: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("the pickle's stack grows beyond {MAX_STACK} values"));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&mark| mark >= self.stack.len()) {
            return Err("the pickle pops past a mark".into());
        }
        self.stack.pop().ok_or_else(|| "the pickle pops an empty stack".into())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack".into())
    }

    /// The values pushed since the last mark (removed from the stack, mark dropped).
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("the pickle uses a mark it never set")?;
        Ok(self.stack.split_off(mark))
    }

    fn remember(&mut self, index: u32) -> Result<(), String> {
        let value = self.stack.last().ok_or("the pickle memoizes an empty stack")?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn recall(&mut self, index: u32) -> Result<(), String> {
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| format!("the pickle recalls memo entry {index}, which was never stored"))?
            .clone();
        self.push(value)
    }

    /// Runs the pickle to its STOP and returns the value it built.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let at = self.position;
            let opcode = self.byte()?;
            match opcode {
                0x80 => {
                    // PROTO
                    let protocol = self.byte()?;
                    if !(2..=5).contains(&protocol) {
                        return Err(format!("pickle protocol {protocol}; protocols 2 to 5 are read"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.take(8)?;
                }
                b'.' => return self.pop(), // STOP
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(format!("the pickle sets more than {MAX_STACK} marks"));
                    }
                    self.marks.push(self.stack.len()); // MARK
                }
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?, // NEWTRUE, NEWFALSE
                b'J' => {
                    let value = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Value::Int(value.into()))?;
                }
                b'K' => {
                    let value = self.byte()?;
                    self.push(Value::Int(value.into()))?;
                }
                b'M' => {
                    let value = self.u16()?;
                    self.push(Value::Int(value.into()))?;
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let len = self.byte()? as usize;
                    if len > 8 {
                        return Err(format!("an integer of {len} bytes (at most 8 are read)"));
                    }
                    let bytes = self.take(len)?;
                    let mut value: i64 = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        -1
                    } else {
                        0
                    };
                    for &b in bytes.iter().rev() {
                        value = (value << 8) | i64::from(b);
                    }
                    self.push(Value::Int(value))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'X' => {
                    let len = self.u32()? as usize;
                    let value = self.string(len)?;
                    self.push(value)?;
                }
                0x8c => {
                    let len = self.byte()? as usize;
                    let value = self.string(len)?;
                    self.push(value)?;
                }
                0x8d => {
                    let len = self.u64_len()?;
                    let value = self.string(len)?;
                    self.push(value)?;
                }
                b'C' => {
                    let len = self.byte()? as usize;
                    self.take(len)?;
                    self.push(Value::Bytes)?;
                }
                b'B' => {
                    let len = self.u32()? as usize;
                    self.take(len)?;
                    self.push(Value::Bytes)?;
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    // TUPLE1, TUPLE2, TUPLE3
                    let count = (opcode - 0x84) as usize;
                    let mut items = Vec::with_capacity(count);
                    for _ in 0..count {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?;
                }
                b']' => self.push(Value::List(Rc::default()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let index = self.byte()?;
                    self.remember(index.into())?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.remember(index)?;
                }
                0x94 => {
                    // MEMOIZE
                    let index = u32::try_from(self.memo.len()).map_err(|_| "too many memo entries")?;
                    self.remember(index)?;
                }
                b'h' => {
                    let index = self.byte()?;
                    self.recall(index.into())?;
                }
                b'j' => {
                    let index = self.u32()?;
                    self.recall(index)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(global(&module, &name)?)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL with operands that are not strings".into());
                    };
                    self.push(global(&module, &name)?)?;
                }
                b'Q' => {
                    // BINPERSID: a storage reference.
                    let id = self.pop()?;
                    let storage = persistent_storage(id)?;
                    self.push(Value::Storage(storage))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = call(callable, args)?;
                    self.push(result)?;
                }
                b'b' => {
                    // BUILD: an OrderedDict's instance state (a state dict's `_metadata`,
                    // version numbers of its modules) carries no tensor: dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return Err("the pickle sets the state of something that is not a dict".into());
                    }
                }
                0x30 => {
                    // POP
                    self.pop()?;
                }
                0x31 => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let value = self.top()?.clone();
                    self.push(value)?;
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {at} is not one a state dict's pickle uses"
                    ));
                }
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().extend(items);
                Ok(())
            }
            other => Err(format!("the pickle appends to {}, not a list", other.kind())),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("the pickle sets a dict item without a value".into());
        }
        match self.top()? {
            Value::Dict(dict) => {
                let mut dict = dict.borrow_mut();
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    dict.push((key, value));
                }
                Ok(())
            }
            other => Err(format!("the pickle sets items of {}, not a dict", other.kind())),
        }
    }
}

/// A global the pickle names: one of [`ALLOWED_GLOBALS`], or an error naming it.
fn global(module: &str, name: &str) -> Result<Value, String> {
    let full = format!("{module}.{name}");
    ALLOWED_GLOBALS
        .iter()
        .find(|&&allowed| allowed == full)
        .map(|&allowed| Value::Global(allowed))
        .ok_or_else(|| {
            format!(
                "the pickle asks for the global `{full}`, which does not rebuild a tensor or a dict; refused (only {} are accepted: loading this file with PyTorch could run code)",
                ALLOWED_GLOBALS.join(", ")
            )
        })
}

/// A persistent id `('storage', torch.FloatStorage, key, location, numel)`.
fn persistent_storage(id: Value) -> Result<StorageRef, String> {
    let Value::Tuple(items) = id else {
        return Err(format!("a persistent id that is {}, not a storage tuple", id.kind()));
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(class),
            key,
            _location,
            Value::Int(elements),
        ] if tag == "storage" => {
            let dtype = match *class {
                "torch.FloatStorage" => Dtype::F32,
                "torch.HalfStorage" => Dtype::F16,
                "torch.BFloat16Storage" => Dtype::BF16,
                other => return Err(format!("`{other}` is not a storage type")),
            };
            let key = match key {
                Value::Str(key) => key.clone(),
                Value::Int(key) => key.to_string(),
                other => return Err(format!("a storage key that is {}", other.kind())),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("storage key {key:?} is not a plain name"));
            }
            let elements = u64::try_from(*elements).map_err(|_| format!("storage `{key}` has {elements} elements"))?;
            Ok(StorageRef { dtype, key, elements })
        }
        _ => Err("a persistent id that is not ('storage', type, key, location, size)".into()),
    }
}

/// Calls an allowed global with `args` (a tuple).
fn call(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(function) = callable else {
        return Err(format!("the pickle calls {}, not an allowed global", callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("`{function}` called with {} as its arguments", args.kind()));
    };
    match function {
        "collections.OrderedDict" => match args.as_slice() {
            [] => Ok(Value::Dict(Rc::default())),
            _ => Err("`collections.OrderedDict` called with arguments".into()),
        },
        "torch._utils._rebuild_tensor_v2" => rebuild_tensor(&args),
        "torch._utils._rebuild_parameter" => match args.as_slice() {
            [Value::Tensor(tensor), ..] => Ok(Value::Tensor(tensor.clone())),
            _ => Err("`torch._utils._rebuild_parameter` called without a tensor".into()),
        },
        other => Err(format!("`{other}` is a storage type, not a function to call")),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [
        Value::Storage(storage),
        Value::Int(offset),
        Value::Tuple(size),
        Value::Tuple(stride),
        ..,
    ] = args
    else {
        return Err(
            "`torch._utils._rebuild_tensor_v2` called with arguments that are not (storage, offset, size, stride, ...)"
                .into(),
        );
    };
    let ints = |values: &[Value], what: &str| -> Result<Vec<u64>, String> {
        values
            .iter()
            .map(|v| match v {
                Value::Int(n) if *n >= 0 => Ok(*n as u64),
                other => Err(format!("a tensor {what} entry that is {other:?}")),
            })
            .collect()
    };
    if size.len() > MAX_DIMS || size.len() != stride.len() {
        return Err(format!(
            "a tensor with {} sizes and {} strides (at most {MAX_DIMS} dimensions)",
            size.len(),
            stride.len()
        ));
    }
    let shape = ints(size, "size")?
        .into_iter()
        .map(|n| usize::try_from(n).map_err(|_| format!("a tensor dimension of {n}")))
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Value::Tensor(TensorRef {
        storage: storage.clone(),
        offset: u64::try_from(*offset).map_err(|_| format!("a negative storage offset {offset}"))?,
        shape,
        stride: ints(stride, "stride")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(os.system, protocol=2)` with the call it would make: refused at the global.
    #[test]
    fn a_pickle_asking_for_os_system_is_refused_by_name() {
        let pickle = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.";
        let error = Unpickler::new(pickle).run().unwrap_err();
        assert!(error.contains("`os.system`") && error.contains("refused"), "{error}");
        let stacked = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93)R.";
        let error = Unpickler::new(stacked).run().unwrap_err();
        assert!(error.contains("`builtins.eval`"), "{error}");
    }

    #[test]
    fn strided_views_and_reads_past_the_storage_are_refused() {
        let storage = StorageRef {
            dtype: Dtype::F32,
            key: "0".into(),
            elements: 12,
        };
        let view = |offset, shape: Vec<usize>, stride: Vec<u64>| TensorRef {
            storage: storage.clone(),
            offset,
            shape,
            stride,
        };
        let info = view(2, vec![2, 5], vec![5, 1]).byte_range(100, 48).unwrap();
        assert_eq!(info.data_offsets, (108, 148));
        let transposed = view(0, vec![3, 4], vec![1, 3]).byte_range(100, 48).unwrap_err();
        assert!(transposed.contains("strided view"), "{transposed}");
        let past = view(4, vec![3, 3], vec![3, 1]).byte_range(100, 48).unwrap_err();
        assert!(past.contains("elements 4..13"), "{past}");
        let short = view(0, vec![3], vec![1]).byte_range(100, 40).unwrap_err();
        assert!(short.contains("holds 40 bytes"), "{short}");
        // A size-1 dimension may have any stride (PyTorch gives unsqueezed views such strides).
        assert!(view(0, vec![1, 12], vec![7, 1]).byte_range(100, 48).is_ok());
    }

    #[test]
    fn truncated_and_malformed_pickles_are_errors() {
        for bad in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02}q\x00(X\x05\x00\x00\x00ab",
            b"\x80\x02h\x07.",
            b"\x80\x09.",
        ] {
            assert!(Unpickler::new(bad).run().is_err(), "{bad:?}");
        }
        let not_a_dict = Unpickler::new(b"\x80\x02K\x05.").run().unwrap();
        assert!(state_dict_entries(not_a_dict).unwrap_err().contains("an int"));
    }
}
