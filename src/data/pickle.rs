//! A pickle reader that treats every opcode as data and never runs anything.
//!
//! Python's unpickler imports modules and calls functions named in the stream; here `GLOBAL`,
//! `REDUCE`, `BUILD`, `NEWOBJ` and friends only build [`Value::Global`] / [`Value::Object`]
//! nodes. A second pass then recognises the few objects the datasets need (numpy arrays, numpy
//! scalars and dtypes, bytes written as `_codecs.encode`, sets, `OrderedDict`) and turns them into
//! plain values. Anything else stays an inert `Object` node.
//!
//! The reader is meant for files from anywhere: every length is checked against the bytes left
//! before anything is allocated, stack underflows and unknown opcodes are errors, nesting depth
//! is bounded and shared references cannot blow up memory.

use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Element type of a numpy array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// numpy's short code (`u1`, `<f4` without the byte order, ...).
    pub fn code(self) -> &'static str {
        match self {
            DType::Bool => "b1",
            DType::U8 => "u1",
            DType::I8 => "i1",
            DType::U16 => "u2",
            DType::I16 => "i2",
            DType::U32 => "u4",
            DType::I32 => "i4",
            DType::U64 => "u8",
            DType::I64 => "i8",
            DType::F16 => "f2",
            DType::F32 => "f4",
            DType::F64 => "f8",
        }
    }

    /// Parses numpy's dtype string as pickled (`u1`, `<f4`, `|b1`, `float64`, ...).
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim_start_matches(['<', '>', '|', '=']);
        Some(match code {
            "b1" | "?" | "bool" => DType::Bool,
            "u1" | "B" | "uint8" => DType::U8,
            "i1" | "b" | "int8" => DType::I8,
            "u2" | "H" | "uint16" => DType::U16,
            "i2" | "h" | "int16" => DType::I16,
            "u4" | "I" | "uint32" => DType::U32,
            "i4" | "i" | "int32" => DType::I32,
            "u8" | "Q" | "uint64" => DType::U64,
            "i8" | "q" | "int64" => DType::I64,
            "f2" | "e" | "float16" => DType::F16,
            "f4" | "f" | "float32" => DType::F32,
            "f8" | "d" | "float64" => DType::F64,
            _ => return None,
        })
    }

    fn is_integer(self) -> bool {
        !matches!(self, DType::F16 | DType::F32 | DType::F64)
    }
}

/// A numpy array: C order, elements little-endian (big-endian and Fortran-order sources are
/// converted while reading).
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NdArray {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw bytes of a `u1` (or `b1`) array.
    pub fn as_u8(&self) -> Option<&[u8]> {
        matches!(self.dtype, DType::U8 | DType::Bool).then_some(self.data.as_slice())
    }

    /// Element `i` as i64 (integer and bool arrays only).
    fn int_at(&self, i: usize) -> Option<i64> {
        let s = self.dtype.size();
        let b = self.data.get(i * s..(i + 1) * s)?;
        Some(match self.dtype {
            DType::Bool => i64::from(b[0] != 0),
            DType::U8 => i64::from(b[0]),
            DType::I8 => i64::from(b[0] as i8),
            DType::U16 => i64::from(u16::from_le_bytes([b[0], b[1]])),
            DType::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            DType::U32 => i64::from(u32::from_le_bytes(b.try_into().ok()?)),
            DType::I32 => i64::from(i32::from_le_bytes(b.try_into().ok()?)),
            DType::U64 => i64::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()?,
            DType::I64 => i64::from_le_bytes(b.try_into().ok()?),
            DType::F16 | DType::F32 | DType::F64 => return None,
        })
    }

    fn f64_at(&self, i: usize) -> Option<f64> {
        let s = self.dtype.size();
        let b = self.data.get(i * s..(i + 1) * s)?;
        Some(match self.dtype {
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            DType::F64 => f64::from_le_bytes(b.try_into().ok()?),
            DType::U64 => u64::from_le_bytes(b.try_into().ok()?) as f64,
            _ => self.int_at(i)? as f64,
        })
    }

    /// All elements as i64 (integer and bool arrays; `None` for floats or u64 values > i64::MAX).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if !self.dtype.is_integer() {
            return None;
        }
        (0..self.numel()).map(|i| self.int_at(i)).collect()
    }

    /// All elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.numel()).filter_map(|i| self.f64_at(i)).collect()
    }

    /// All elements converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.to_f64_vec().into_iter().map(|v| v as f32).collect()
    }
}

/// How an [`Object`] node was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ` / `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
    NewObj,
    /// `INST` / `OBJ` (protocols 0 and 1).
    Inst,
}

/// A call the stream asked for, kept as data: never performed.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub kind: ObjectKind,
    /// Usually a [`Value::Global`].
    pub callable: Value,
    pub args: Value,
    pub kwargs: Option<Value>,
    /// Argument of `BUILD` (`__setstate__`), if any.
    pub state: Option<Value>,
    /// Items `APPEND`ed to the object.
    pub list_items: Vec<Value>,
    /// Items `SETITEM`ed on the object.
    pub dict_items: Vec<(Value, Value)>,
}

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside i64, as little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    /// Python 3 bytes / bytearray, and Python 2 `str` (raw bytes).
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Key-value pairs in stream order (keys are not hashed: any value may be a key).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    Global {
        module: String,
        name: String,
    },
    Object(Box<Object>),
    /// A numpy dtype object.
    DType {
        dtype: DType,
        big_endian: bool,
    },
    /// A numpy array; numpy scalars are 0-dimensional arrays.
    Array(NdArray),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Global { .. } => "global",
            Value::Object(_) => "object",
            Value::DType { .. } => "numpy dtype",
            Value::Array(_) => "numpy array",
        }
    }

    /// A key's text: `Str`, or `Bytes` (Python 2 `str`) decoded as latin-1.
    pub fn key_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(Cow::Borrowed(s)),
            Value::Bytes(b) => Some(Cow::Owned(b.iter().map(|&c| c as char).collect())),
            _ => None,
        }
    }

    fn key_is(&self, key: &str) -> bool {
        match self {
            Value::Str(s) => s == key,
            // Python 2 pickles read with encoding='bytes' keep keys as bytes.
            Value::Bytes(b) => b.as_slice() == key.as_bytes(),
            _ => false,
        }
    }

    /// Dictionary lookup by a `str` or `bytes` key equal to `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.key_is(key))
            .map(|(_, v)| v)
    }

    /// Removes and returns the entry `key` of a dictionary (avoids copying large arrays).
    pub fn take(&mut self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => {
                let i = items.iter().position(|(k, _)| k.key_is(key))?;
                Some(items.remove(i).1)
            }
            _ => None,
        }
    }

    /// The text keys of a dictionary (for error messages).
    pub fn keys(&self) -> Vec<String> {
        self.as_dict()
            .map(|d| {
                d.iter()
                    .filter_map(|(k, _)| k.key_text().map(|s| s.into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&NdArray> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn into_array(self) -> Option<NdArray> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An integer: `int`, `bool`, or a 0-d integer numpy scalar.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Array(a) if a.shape.is_empty() => a.int_at(0),
            _ => None,
        }
    }

    /// A number: `float`, `int`, `bool`, or a 0-d numpy scalar.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Array(a) if a.shape.is_empty() => a.f64_at(0),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            Value::Array(a) if a.shape.is_empty() && a.dtype == DType::Bool => {
                a.data.first().map(|&b| b != 0)
            }
            _ => None,
        }
    }

    /// Integers of a list / tuple of ints or of an integer numpy array (any shape, C order).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match self {
            Value::List(v) | Value::Tuple(v) => v.iter().map(Value::as_i64).collect(),
            Value::Array(a) => a.to_i64_vec(),
            _ => None,
        }
    }
}

/// Reads and decodes the pickle file at `path`.
pub fn load(path: &Path) -> Result<Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&data, &path.display().to_string())
}

/// Decodes a pickle held in memory; `origin` names it in errors.
pub fn parse(data: &[u8], origin: &str) -> Result<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        origin,
        op_pos: 0,
        op: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let nodes = std::mem::take(&mut m.nodes);
    // Shared references may be copied, but never more than about 16 times the input: numpy
    // pickles reference the dtype, the `_reconstruct` globals and the dict keys through the memo
    // once per array, so a list of many small dicts of arrays (the study's 54 MB
    // `nb1shot1c.pkl`: 95,985 dicts of 13 arrays) copies about 7 bytes per input byte.
    let budget = data.len().saturating_mul(16).max(16 << 20);
    Builder::new(nodes, root, origin, budget).build(root, 0)
}

/// The deepest nesting accepted; deeper streams (or self-referencing ones) are refused.
const MAX_DEPTH: usize = 400;

type Id = usize;

/// A value in the arena of the opcode interpreter. Containers hold ids, so objects stay shared
/// and mutable (`APPEND` after `PUT` is seen through every `GET`), as in Python.
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    Global {
        module: String,
        name: String,
    },
    Object {
        kind: ObjectKind,
        callable: Id,
        args: Id,
        kwargs: Option<Id>,
        state: Option<Id>,
        list_items: Vec<Id>,
        dict_items: Vec<(Id, Id)>,
    },
    /// Moved out by the builder (seeing it again means a cycle).
    Taken,
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Global { .. } => "global",
            Node::Object { .. } => "object",
            Node::Taken => "value",
        }
    }

    fn children(&self, out: &mut Vec<Id>) {
        match self {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => {
                out.extend_from_slice(v)
            }
            Node::Dict(d) => out.extend(d.iter().flat_map(|&(k, v)| [k, v])),
            Node::Object {
                callable,
                args,
                kwargs,
                state,
                list_items,
                dict_items,
                ..
            } => {
                out.push(*callable);
                out.push(*args);
                out.extend(kwargs.iter().chain(state.iter()));
                out.extend_from_slice(list_items);
                out.extend(dict_items.iter().flat_map(|&(k, v)| [k, v]));
            }
            _ => {}
        }
    }
}

fn op_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

/// The opcode interpreter.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    origin: &'a str,
    /// Offset and value of the opcode being executed (for errors).
    op_pos: usize,
    op: u8,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stack heights at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl Machine<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: byte {}: {} (0x{:02x}): {msg}",
            self.origin,
            self.op_pos,
            op_name(self.op),
            self.op
        )
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(self.err(format_args!("needs {n} bytes, only {left} left")));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length field, refused when larger than what is left of the file.
    fn len_u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.le()?);
        usize::try_from(n).map_err(|_| self.err(format_args!("length {n} too large")))
    }

    /// A text argument up to (not including) the next newline.
    fn line(&mut self) -> Result<&[u8]> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&c| c == b'\n') else {
            return Err(self.err("text argument without a terminating newline"));
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn line_str(&mut self) -> Result<String> {
        let l = self.line()?.to_vec();
        String::from_utf8(l).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop to"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(format_args!(
                "odd number of items ({}) for key-value pairs",
                items.len()
            )));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format_args!("memo key {key} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn text_int(&self, text: &[u8]) -> Result<Node> {
        let s = std::str::from_utf8(text).map_err(|_| self.err("integer literal is not text"))?;
        let s = s.trim();
        match s.parse::<i128>() {
            Ok(v) => Ok(int_node(v)),
            Err(_) => Err(self.err(format_args!(
                "bad or too large integer literal {:?}",
                truncate(s)
            ))),
        }
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            if self.pos >= self.data.len() {
                self.op_pos = self.pos;
                return Err(anyhow!(
                    "{}: byte {}: truncated pickle (no STOP opcode)",
                    self.origin,
                    self.pos
                ));
            }
            self.op_pos = self.pos;
            self.op = self.data[self.pos];
            self.pos += 1;
            match self.op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format_args!("unsupported protocol {v}")));
                    }
                }
                0x95 => {
                    let n = self.len_u64()?;
                    if n > self.data.len() - self.pos {
                        return Err(self.err(format_args!("frame of {n} bytes runs past the end")));
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.err("stack underflow"));
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'p' => {
                    let l = self.line()?.to_vec();
                    let k = parse_u64(&l).ok_or_else(|| self.err("bad memo key"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u64::from(k))?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(u64::from(k))?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?.to_vec();
                    let k = parse_u64(&l).ok_or_else(|| self.err("bad memo key"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u64::from(k))?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_get(u64::from(k))?;
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'I' => {
                    let l = self.line()?.to_vec();
                    let node = match l.as_slice() {
                        b"00" => Node::Bool(false),
                        b"01" => Node::Bool(true),
                        t => self.text_int(t)?,
                    };
                    self.push(node);
                }
                b'L' => {
                    let l = self.line()?.to_vec();
                    let t = l.strip_suffix(b"L").unwrap_or(&l);
                    let node = self.text_int(t)?;
                    self.push(node);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Node::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Node::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.push(long_node(b));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| self.err("negative length"))?;
                    let b = self.take(n)?.to_vec();
                    self.push(long_node(b));
                }
                b'F' => {
                    let l = self.line()?.to_vec();
                    let v = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| self.err("bad float literal"))?;
                    self.push(Node::Float(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Node::Float(v));
                }
                b'S' => {
                    let l = self.line()?.to_vec();
                    let b = self.string_literal(&l)?;
                    self.push(Node::Bytes(b));
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| self.err("negative length"))?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                b'U' | b'C' => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                b'V' => {
                    let l = self.line()?.to_vec();
                    let s = raw_unicode_escape(&l).map_err(|e| self.err(e))?;
                    self.push(Node::Str(s));
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let s = self.utf8(n)?;
                    self.push(Node::Str(s));
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let s = self.utf8(n)?;
                    self.push(Node::Str(s));
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let s = self.utf8(n)?;
                    self.push(Node::Str(s));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(self.op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.top()?;
                    self.set_items(d, pairs)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    match &mut self.nodes[s] {
                        Node::Set(v) => v.extend(items),
                        other => {
                            let k = other.kind();
                            return Err(self.err(format_args!("ADDITEMS on a {k}")));
                        }
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::FrozenSet(items));
                }
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    self.push(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(module), Node::Str(name)) =
                        (&self.nodes[module], &self.nodes[name])
                    else {
                        return Err(self.err("module and name must be str"));
                    };
                    let node = Node::Global {
                        module: module.clone(),
                        name: name.clone(),
                    };
                    self.push(node);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(object(ObjectKind::Reduce, callable, args, None));
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(object(ObjectKind::NewObj, cls, args, None));
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(object(ObjectKind::NewObj, cls, args, Some(kwargs)));
                }
                b'i' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let args = self.pop_mark()?;
                    self.nodes.push(Node::Global { module, name });
                    let cls = self.nodes.len() - 1;
                    self.nodes.push(Node::Tuple(args));
                    let args = self.nodes.len() - 1;
                    self.push(object(ObjectKind::Inst, cls, args, None));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    self.nodes.push(Node::Tuple(items));
                    let args = self.nodes.len() - 1;
                    self.push(object(ObjectKind::Inst, cls, args, None));
                }
                b'b' => {
                    let st = self.pop()?;
                    let obj = self.top()?;
                    match &mut self.nodes[obj] {
                        Node::Object { state, .. } => *state = Some(st),
                        other => {
                            let k = other.kind();
                            return Err(self.err(format_args!("BUILD on a {k}")));
                        }
                    }
                }
                b'P' | b'Q' => return Err(self.err("persistent ids are not supported")),
                0x82..=0x84 => return Err(self.err("extension registry codes are not supported")),
                0x97 | 0x98 => return Err(self.err("out-of-band buffers are not supported")),
                _ => return Err(self.err("unknown opcode")),
            }
        }
    }

    fn utf8(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn append(&mut self, target: Id, items: Vec<Id>) -> Result<()> {
        match &mut self.nodes[target] {
            Node::List(v) => v.extend(items),
            Node::Object { list_items, .. } => list_items.extend(items),
            other => {
                let k = other.kind();
                return Err(self.err(format_args!("cannot append to a {k}")));
            }
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, pairs: Vec<(Id, Id)>) -> Result<()> {
        match &mut self.nodes[target] {
            Node::Dict(d) => d.extend(pairs),
            Node::Object { dict_items, .. } => dict_items.extend(pairs),
            other => {
                let k = other.kind();
                return Err(self.err(format_args!("cannot set items on a {k}")));
            }
        }
        Ok(())
    }

    /// Protocol 0 `STRING`: a quoted Python 2 literal with backslash escapes.
    fn string_literal(&self, l: &[u8]) -> Result<Vec<u8>> {
        let q = *l.first().ok_or_else(|| self.err("empty string literal"))?;
        if l.len() < 2 || (q != b'\'' && q != b'"') || l[l.len() - 1] != q {
            return Err(self.err("string literal is not quoted"));
        }
        escape_decode(&l[1..l.len() - 1]).map_err(|e| self.err(e))
    }
}

fn object(kind: ObjectKind, callable: Id, args: Id, kwargs: Option<Id>) -> Node {
    Node::Object {
        kind,
        callable,
        args,
        kwargs,
        state: None,
        list_items: Vec::new(),
        dict_items: Vec::new(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_u64(l: &[u8]) -> Option<u64> {
    std::str::from_utf8(l).ok()?.trim().parse().ok()
}

fn int_node(v: i128) -> Node {
    match i64::try_from(v) {
        Ok(i) => Node::Int(i),
        Err(_) => Node::BigInt(minimal_le(v.to_le_bytes().to_vec())),
    }
}

/// Drops redundant sign bytes from a little-endian two's complement integer.
fn minimal_le(mut b: Vec<u8>) -> Vec<u8> {
    while b.len() > 1 {
        let last = b[b.len() - 1];
        let prev_sign = b[b.len() - 2] & 0x80;
        if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
            b.pop();
        } else {
            break;
        }
    }
    b
}

/// `LONG1` / `LONG4` payload: little-endian two's complement.
fn long_node(b: Vec<u8>) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    let b = minimal_le(b);
    if b.len() <= 8 {
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..b.len()].copy_from_slice(&b);
        Node::Int(i64::from_le_bytes(a))
    } else {
        Node::BigInt(b)
    }
}

fn hex_value(h: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

/// Python 2 `string-escape` decoding of a `STRING` literal's body.
fn escape_decode(s: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err("string literal ends with a backslash".into());
        };
        i += 1;
        match e {
            b'\n' => {}
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let v = s
                    .get(i..i + 2)
                    .and_then(hex_value)
                    .ok_or("invalid \\x escape in string literal")?;
                out.push(v as u8);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 {
                    match s.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Protocol 0 `UNICODE`: `raw-unicode-escape` (latin-1 bytes plus `\uXXXX` / `\UXXXXXXXX`).
fn raw_unicode_escape(s: &[u8]) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' {
            let width = match s.get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if width > 0 {
                let v = s
                    .get(i + 2..i + 2 + width)
                    .and_then(hex_value)
                    .ok_or("invalid \\u escape in unicode literal")?;
                out.push(char::from_u32(v).ok_or("\\u escape is not a valid character")?);
                i += 2 + width;
                continue;
            }
        }
        out.push(c as char);
        i += 1;
    }
    Ok(out)
}

/// Turns the arena into a [`Value`] tree, recognising numpy and builtin objects on the way.
struct Builder<'a> {
    nodes: Vec<Node>,
    refs: Vec<u32>,
    cache: HashMap<Id, Value>,
    origin: &'a str,
    /// Bytes that copies of shared values may still take.
    budget: usize,
}

impl<'a> Builder<'a> {
    fn new(nodes: Vec<Node>, root: Id, origin: &'a str, budget: usize) -> Self {
        // Count references from every reachable node once, so singly-referenced nodes can be
        // moved out of the arena instead of copied.
        let mut refs = vec![0u32; nodes.len()];
        let mut seen = vec![false; nodes.len()];
        let mut todo = vec![root];
        let mut kids = Vec::new();
        refs[root] = 1;
        seen[root] = true;
        while let Some(id) = todo.pop() {
            kids.clear();
            nodes[id].children(&mut kids);
            for &k in &kids {
                refs[k] = refs[k].saturating_add(1);
                if !seen[k] {
                    seen[k] = true;
                    todo.push(k);
                }
            }
        }
        Self {
            nodes,
            refs,
            cache: HashMap::new(),
            origin,
            budget,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {msg}", self.origin)
    }

    fn build(&mut self, id: Id, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!(self.err(format_args!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let shared = self.refs[id] > 1;
        if shared {
            if let Some(v) = self.cache.get(&id) {
                let w = weight(v);
                if w > self.budget {
                    bail!(self.err("shared references would copy too much data"));
                }
                self.budget -= w;
                return Ok(v.clone());
            }
        }
        let node = std::mem::replace(&mut self.nodes[id], Node::Taken);
        let d = depth + 1;
        let v = match node {
            Node::Taken => bail!(self.err("a value contains itself (recursive structure)")),
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::Int(i),
            Node::BigInt(b) => Value::BigInt(b),
            Node::Float(f) => Value::Float(f),
            Node::Str(s) => Value::Str(s),
            Node::Bytes(b) => Value::Bytes(b),
            Node::List(v) => Value::List(self.build_all(&v, d)?),
            Node::Tuple(v) => Value::Tuple(self.build_all(&v, d)?),
            Node::Set(v) => Value::Set(self.build_all(&v, d)?),
            Node::FrozenSet(v) => Value::FrozenSet(self.build_all(&v, d)?),
            Node::Dict(p) => Value::Dict(self.build_pairs(&p, d)?),
            Node::Global { module, name } => Value::Global { module, name },
            Node::Object {
                kind,
                callable,
                args,
                kwargs,
                state,
                list_items,
                dict_items,
            } => {
                let obj = Object {
                    kind,
                    callable: self.build(callable, d)?,
                    args: self.build(args, d)?,
                    kwargs: kwargs.map(|k| self.build(k, d)).transpose()?,
                    state: state.map(|s| self.build(s, d)).transpose()?,
                    list_items: self.build_all(&list_items, d)?,
                    dict_items: self.build_pairs(&dict_items, d)?,
                };
                rebuild(obj).map_err(|e| self.err(e))?
            }
        };
        if shared {
            self.cache.insert(id, v.clone());
        }
        Ok(v)
    }

    fn build_all(&mut self, ids: &[Id], depth: usize) -> Result<Vec<Value>> {
        ids.iter().map(|&i| self.build(i, depth)).collect()
    }

    fn build_pairs(&mut self, ids: &[(Id, Id)], depth: usize) -> Result<Vec<(Value, Value)>> {
        ids.iter()
            .map(|&(k, v)| Ok((self.build(k, depth)?, self.build(v, depth)?)))
            .collect()
    }
}

/// Approximate memory of a value, in bytes.
fn weight(v: &Value) -> usize {
    let inner = match v {
        Value::BigInt(b) | Value::Bytes(b) => b.len(),
        Value::Str(s) => s.len(),
        Value::List(v) | Value::Tuple(v) | Value::Set(v) | Value::FrozenSet(v) => {
            v.iter().map(weight).sum()
        }
        Value::Dict(p) => p.iter().map(|(k, v)| weight(k) + weight(v)).sum(),
        Value::Object(o) => {
            weight(&o.callable)
                + weight(&o.args)
                + o.kwargs.as_ref().map_or(0, weight)
                + o.state.as_ref().map_or(0, weight)
                + o.list_items.iter().map(weight).sum::<usize>()
                + o.dict_items
                    .iter()
                    .map(|(k, v)| weight(k) + weight(v))
                    .sum::<usize>()
        }
        Value::Array(a) => a.data.len() + a.shape.len() * 8,
        Value::Global { module, name } => module.len() + name.len(),
        _ => 0,
    };
    inner + std::mem::size_of::<Value>()
}

fn is_global(v: &Value, modules: &[&str], want: &str) -> bool {
    matches!(v, Value::Global { module, name } if name == want && modules.contains(&module.as_str()))
}

const BUILTINS: &[&str] = &["builtins", "__builtin__"];
const MULTIARRAY: &[&str] = &["numpy.core.multiarray", "numpy._core.multiarray"];
const NUMERIC: &[&str] = &["numpy.core.numeric", "numpy._core.numeric"];

/// Text of a str, or of Python 2 bytes (latin-1).
fn text_of(v: &Value) -> Option<String> {
    v.key_text().map(Cow::into_owned)
}

/// Bytes of a bytes value, or of a str whose characters all fit in latin-1 (how Python 2
/// binary strings look when read as text).
fn raw_of(v: Value) -> std::result::Result<Vec<u8>, Value> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::Str(s) if s.chars().all(|c| (c as u32) < 256) => {
            Ok(s.chars().map(|c| c as u8).collect())
        }
        other => Err(other),
    }
}

/// Recognises the objects the datasets use; anything else stays an `Object`.
fn rebuild(mut obj: Object) -> std::result::Result<Value, String> {
    let c = &obj.callable;
    if obj.kind == ObjectKind::Reduce && is_global(c, &["_codecs"], "encode") {
        if let Some([Value::Str(s), enc]) = obj.args.as_seq() {
            let enc = text_of(enc)
                .unwrap_or_default()
                .to_ascii_lowercase()
                .replace('-', "");
            if matches!(enc.as_str(), "latin1" | "iso88591") {
                if s.chars().any(|ch| ch as u32 > 255) {
                    return Err("_codecs.encode(latin1) of a character beyond latin-1".into());
                }
                return Ok(Value::Bytes(s.chars().map(|ch| ch as u8).collect()));
            }
            if matches!(enc.as_str(), "utf8") {
                return Ok(Value::Bytes(s.as_bytes().to_vec()));
            }
        }
    }
    if is_global(c, BUILTINS, "bytes") || is_global(c, BUILTINS, "bytearray") {
        match obj.args.as_seq() {
            Some([]) => return Ok(Value::Bytes(Vec::new())),
            Some([Value::Bytes(b)]) => return Ok(Value::Bytes(b.clone())),
            Some([Value::Str(s), _enc]) if s.chars().all(|ch| (ch as u32) < 256) => {
                return Ok(Value::Bytes(s.chars().map(|ch| ch as u8).collect()))
            }
            _ => {}
        }
    }
    if is_global(c, BUILTINS, "set") || is_global(c, BUILTINS, "frozenset") {
        let items = match obj.args.as_seq() {
            Some([]) => Some(Vec::new()),
            Some([Value::List(v)]) | Some([Value::Tuple(v)]) => Some(v.clone()),
            _ => None,
        };
        if let Some(items) = items {
            return Ok(if is_global(c, BUILTINS, "set") {
                Value::Set(items)
            } else {
                Value::FrozenSet(items)
            });
        }
    }
    if is_global(c, &["collections"], "OrderedDict") {
        let mut pairs = Vec::new();
        if let Some([Value::List(init)]) = obj.args.as_seq() {
            for p in init {
                match p.as_seq() {
                    Some([k, v]) => pairs.push((k.clone(), v.clone())),
                    _ => return Err("OrderedDict initialiser is not a list of pairs".into()),
                }
            }
        }
        pairs.extend(obj.dict_items);
        return Ok(Value::Dict(pairs));
    }
    if is_global(c, &["numpy"], "dtype") {
        if let (Some(code), Some(state)) = (
            obj.args.as_seq().and_then(|a| a.first()).and_then(text_of),
            &obj.state,
        ) {
            if let Some(dtype) = DType::parse(&code) {
                let order = state.as_seq().and_then(|s| s.get(1)).and_then(text_of);
                let big_endian = order.as_deref() == Some(">") || code.starts_with('>');
                return Ok(Value::DType { dtype, big_endian });
            }
        }
    }
    if is_global(c, MULTIARRAY, "scalar") {
        if let Value::Tuple(a) = &mut obj.args {
            if let [Value::DType { dtype, big_endian }, data] = a.as_mut_slice() {
                let raw = raw_of(std::mem::replace(data, Value::None))
                    .map_err(|v| format!("numpy scalar data is a {}", v.kind()))?;
                return make_array(*dtype, *big_endian, Vec::new(), false, raw);
            }
        }
    }
    if is_global(c, NUMERIC, "_frombuffer") {
        if let Value::Tuple(a) = &mut obj.args {
            if let [buf, Value::DType { dtype, big_endian }, shape, order] = a.as_mut_slice() {
                let shape = shape_of(shape)?;
                let fortran = text_of(order).as_deref() == Some("F");
                let raw = raw_of(std::mem::replace(buf, Value::None))
                    .map_err(|v| format!("numpy buffer is a {}", v.kind()))?;
                return make_array(*dtype, *big_endian, shape, fortran, raw);
            }
        }
    }
    if is_global(c, MULTIARRAY, "_reconstruct") {
        if let Some(Value::Tuple(st)) = &mut obj.state {
            // ndarray.__setstate__ takes (version, shape, dtype, fortran, data) or the same
            // without the version.
            let st = if st.len() == 5 {
                &mut st[1..]
            } else {
                &mut st[..]
            };
            if let [shape, Value::DType { dtype, big_endian }, fortran, data] = st {
                let shape = shape_of(shape)?;
                let fortran = fortran
                    .as_bool()
                    .ok_or("numpy array: fortran flag is not a bool")?;
                let raw = raw_of(std::mem::replace(data, Value::None)).map_err(|v| {
                    format!(
                        "numpy array data is a {} (object arrays are not supported)",
                        v.kind()
                    )
                })?;
                return make_array(*dtype, *big_endian, shape, fortran, raw);
            }
        }
    }
    Ok(Value::Object(Box::new(obj)))
}

fn shape_of(v: &Value) -> std::result::Result<Vec<usize>, String> {
    let dims = match v {
        Value::Int(_) => vec![v.clone()],
        _ => v.as_seq().ok_or("numpy shape is not a tuple")?.to_vec(),
    };
    dims.iter()
        .map(|d| {
            d.as_i64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| format!("numpy shape has a bad dimension ({})", d.kind()))
        })
        .collect()
}

fn make_array(
    dtype: DType,
    big_endian: bool,
    shape: Vec<usize>,
    fortran: bool,
    mut data: Vec<u8>,
) -> std::result::Result<Value, String> {
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("numpy shape {shape:?} overflows"))?;
    let size = dtype.size();
    let need = numel
        .checked_mul(size)
        .ok_or_else(|| format!("numpy shape {shape:?} overflows"))?;
    if need != data.len() {
        return Err(format!(
            "numpy array of shape {shape:?} and dtype {} needs {need} bytes, the data has {}",
            dtype.code(),
            data.len()
        ));
    }
    if big_endian && size > 1 {
        for e in data.chunks_exact_mut(size) {
            e.reverse();
        }
    }
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape, size);
    }
    Ok(Value::Array(NdArray { dtype, shape, data }))
}

/// Reorders column-major elements into row-major order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let n = shape.iter().product::<usize>();
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[off * size..(off + 1) * size]);
        // Advance the row-major multi-index.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
    }

    fn arr<'a>(v: &'a Value, key: &str) -> &'a NdArray {
        v.get(key)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{key} is not an array: {:?}", v.get(key)))
    }

    fn ints(v: &[Value]) -> Vec<i64> {
        v.iter().map(|x| x.as_i64().unwrap()).collect()
    }

    #[test]
    fn python3_protocols_decode_alike() {
        for proto in [0, 2, 4, 5] {
            let v = load(&fixture(&format!("pickle_p{proto}.pkl"))).unwrap();
            let ctx = format!("protocol {proto}");
            let keys = v.keys();
            assert_eq!(keys[..3], ["u8", "f4", "f8be"], "{ctx}");
            assert_eq!(keys.len(), 23, "{ctx}");

            let u8a = arr(&v, "u8");
            assert_eq!(
                (u8a.dtype, u8a.shape.clone()),
                (DType::U8, vec![4, 6]),
                "{ctx}"
            );
            assert_eq!(
                u8a.as_u8().unwrap(),
                (0..24).collect::<Vec<u8>>().as_slice(),
                "{ctx}"
            );
            let f4 = arr(&v, "f4");
            assert_eq!((f4.dtype, f4.shape.clone()), (DType::F32, vec![1, 3]));
            assert_eq!(f4.to_f32_vec(), vec![1.5, -2.25, 3.0], "{ctx}");
            let be = arr(&v, "f8be");
            assert_eq!(be.dtype, DType::F64);
            assert_eq!(be.to_f64_vec(), vec![1.0, -0.5, 1e300], "{ctx}");
            assert_eq!(
                arr(&v, "i8").to_i64_vec().unwrap(),
                vec![-3, 0, 1 << 40],
                "{ctx}"
            );
            let b1 = arr(&v, "b1");
            assert_eq!(
                (b1.dtype, b1.to_i64_vec().unwrap()),
                (DType::Bool, vec![1, 0, 1])
            );
            // Fortran-ordered source, read back in C order.
            let f = arr(&v, "i2f");
            assert_eq!(
                (f.dtype, f.shape.clone()),
                (DType::I16, vec![2, 3]),
                "{ctx}"
            );
            assert_eq!(f.to_i64_vec().unwrap(), vec![0, 1, 2, 3, 4, 5], "{ctx}");

            let s = v.get("f64s").unwrap();
            assert_eq!(
                s.as_array().map(|a| (a.dtype, a.shape.len())),
                Some((DType::F64, 0))
            );
            assert_eq!(s.as_f64(), Some(2.5), "{ctx}");
            assert_eq!(v.get("i64s").unwrap().as_i64(), Some(-7), "{ctx}");

            assert_eq!(
                v.get("bytes").unwrap().as_bytes(),
                Some(&b"\x00\xffabc\n"[..]),
                "{ctx}"
            );
            assert_eq!(v.get("empty").unwrap().as_bytes(), Some(&b""[..]), "{ctx}");
            assert_eq!(
                v.get("bytearray").unwrap().as_bytes(),
                Some(&b"xy"[..]),
                "{ctx}"
            );
            assert_eq!(
                v.get("text").unwrap().as_str(),
                Some("h\u{e9}llo \u{2603}\\"),
                "{ctx}"
            );
            assert_eq!(
                v.get("tuple"),
                Some(&Value::Tuple(vec![
                    Value::Int(1),
                    Value::Float(2.5),
                    Value::None,
                    Value::Bool(true),
                    Value::Bool(false)
                ])),
                "{ctx}"
            );
            let Some(Value::Set(set)) = v.get("set") else {
                panic!("{ctx}: set")
            };
            let mut set = ints(set);
            set.sort();
            assert_eq!(set, vec![3, 4]);
            assert_eq!(
                v.get("frozen"),
                Some(&Value::FrozenSet(vec![Value::Int(5)])),
                "{ctx}"
            );
            let mut big = vec![0u8; 9];
            big[8] = 0x40;
            assert_eq!(v.get("big"), Some(&Value::BigInt(big)), "{ctx}");
            assert_eq!(v.get("neg").unwrap().as_i64(), Some(-123_456_789_012));
            assert_eq!(v.get("small").unwrap().as_i64(), Some(-1));
            assert_eq!(v.get("int255").unwrap().as_i64(), Some(255));
            assert_eq!(v.get("int65535").unwrap().as_i64(), Some(65535));
            let pair = Value::List(vec![Value::Int(1), Value::Int(2)]);
            assert_eq!(
                v.get("shared"),
                Some(&Value::List(vec![pair.clone(), pair])),
                "{ctx}"
            );
            assert_eq!(v.get("labels").unwrap().to_i64_vec(), Some(vec![0, 9, 3]));
            let od = v.get("od").unwrap();
            assert_eq!(od.keys(), vec!["a", "b"], "{ctx}");
            assert_eq!(od.get("b").and_then(Value::as_i64), Some(2), "{ctx}");
        }
    }

    #[test]
    fn python2_hand_assembled_pickles() {
        let mut v = load(&fixture("py2_p2.pkl")).unwrap();
        // Python 2 str keys are bytes; lookups by text still work.
        assert!(matches!(v.as_dict().unwrap()[0].0, Value::Bytes(_)));
        assert_eq!(v.keys(), vec!["data", "labels", "batch_label", "filenames"]);
        assert_eq!(v.get("labels").unwrap().to_i64_vec(), Some(vec![6, 9]));
        assert_eq!(
            v.get("batch_label").unwrap().as_bytes(),
            Some(&b"training batch 1 of 5"[..])
        );
        let names = v.get("filenames").and_then(Value::as_seq).unwrap();
        assert_eq!(names[1].as_bytes(), Some(&b"b.png"[..]));
        let data = v.take("data").and_then(Value::into_array).unwrap();
        assert_eq!(data.shape, vec![2, 3072]);
        let expect: Vec<u8> = (0..2 * 3072).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(data.as_u8().unwrap(), expect.as_slice());
        assert!(v.get("data").is_none());

        let v = load(&fixture("py2_p0.pkl")).unwrap();
        assert_eq!(v.get("int"), Some(&Value::Int(42)));
        assert_eq!(v.get("true"), Some(&Value::Bool(true)));
        // 12345678901234567890 does not fit in i64: little-endian two's complement.
        let mut long = 12_345_678_901_234_567_890u64.to_le_bytes().to_vec();
        long.push(0);
        assert_eq!(v.get("long"), Some(&Value::BigInt(long)));
        assert_eq!(v.get("neg"), Some(&Value::Int(-5)));
        assert_eq!(v.get("float"), Some(&Value::Float(-1.25)));
        assert_eq!(v.get("str").unwrap().as_bytes(), Some(&b"a\nb\x00'c\\"[..]));
        assert_eq!(v.get("uni").unwrap().as_str(), Some("\u{e9}t\u{2603}\\"));
        let l = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(v.get("list"), Some(&l));
        assert_eq!(v.get("again"), Some(&l));
        assert_eq!(
            v.get("tuple"),
            Some(&Value::Tuple(vec![
                Value::Int(7),
                Value::Bytes(b"q".to_vec())
            ]))
        );
    }

    /// A Python-2 style protocol-2 pickle of one array (as in the fixture script).
    fn py2_array(shape: &[u16], code: &[u8], order: u8, fortran: bool, data: &[u8]) -> Vec<u8> {
        let mut o = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01(".to_vec();
        for &d in shape {
            o.push(b'M');
            o.extend_from_slice(&d.to_le_bytes());
        }
        o.extend_from_slice(b"tcnumpy\ndtype\nU");
        o.push(code.len() as u8);
        o.extend_from_slice(code);
        o.extend_from_slice(b"K\x00K\x01\x87R(K\x03U\x01");
        o.push(order);
        o.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        o.push(if fortran { 0x88 } else { 0x89 });
        o.push(b'T');
        o.extend_from_slice(&(data.len() as i32).to_le_bytes());
        o.extend_from_slice(data);
        o.extend_from_slice(b"tb.");
        o
    }

    #[test]
    fn python2_arrays_big_endian_fortran_and_bad_sizes() {
        // >i4, shape (2, 2), Fortran order: column-major [1, 3, 2, 4] -> rows [1, 2], [3, 4].
        let mut raw = Vec::new();
        for v in [1i32, 3, 2, 4] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        let v = parse(&py2_array(&[2, 2], b"i4", b'>', true, &raw), "a.pkl").unwrap();
        let a = v.as_array().unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (DType::I32, vec![2, 2]));
        assert_eq!(a.to_i64_vec().unwrap(), vec![1, 2, 3, 4]);

        let e = parse(&py2_array(&[2, 3], b"u1", b'|', false, &[0; 5]), "bad.pkl").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("bad.pkl:") && e.contains("needs 6 bytes") && e.contains("has 5"),
            "{e}"
        );
        // An unknown dtype leaves an inert object behind instead of guessing.
        let v = parse(&py2_array(&[1], b"c16", b'<', false, &[0; 16]), "c.pkl").unwrap();
        assert_eq!(v.kind(), "object");
    }

    #[test]
    fn hostile_inputs_are_one_line_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (b"\x80\x02".to_vec(), "truncated"),
            (
                b"\x80\x09.".to_vec(),
                "byte 0: PROTO (0x80): unsupported protocol 9",
            ),
            (
                b"T\xff\xff\xff\x7f".to_vec(),
                "byte 0: BINSTRING (0x54): needs 2147483647 bytes",
            ),
            (b"T\xff\xff\xff\xff".to_vec(), "negative length"),
            ([&b"\x8e"[..], &[0xff; 8]].concat(), "BINBYTES8"),
            (b"\x95\x00\x10\x00\x00\x00\x00\x00\x00N.".to_vec(), "FRAME"),
            (b".".to_vec(), "byte 0: STOP (0x2e): stack underflow"),
            (b"N(.".to_vec(), "stack underflow"),
            (b"Na.".to_vec(), "byte 1: APPEND (0x61): stack underflow"),
            (b"N\xff.".to_vec(), "byte 1: unknown opcode (0xff)"),
            (b"h\x05.".to_vec(), "memo key 5 was never stored"),
            (b"Ne.".to_vec(), "no MARK"),
            (b"(K\x01d.".to_vec(), "odd number of items"),
            (b"K\x01K\x02b.".to_vec(), "BUILD on a int"),
            (b"K\x01K\x02a.".to_vec(), "cannot append to a int"),
            (b"I12x\n.".to_vec(), "bad or too large integer"),
            (b"S'abc\n.".to_vec(), "not quoted"),
            (b"Vab\\u00\n.".to_vec(), "invalid \\u escape"),
            (b"X\x02\x00\x00\x00\xff\xfe.".to_vec(), "not valid UTF-8"),
            (b"Q.".to_vec(), "persistent ids"),
            (b"\x97.".to_vec(), "out-of-band"),
            (b"cos\nsystem".to_vec(), "without a terminating newline"),
            // A list appended to itself.
            (b"]q\x00h\x00a.".to_vec(), "contains itself"),
        ];
        for (bytes, needle) in cases {
            let e = parse(&bytes, "evil.pkl").unwrap_err().to_string();
            assert!(e.starts_with("evil.pkl: "), "{e}");
            assert!(e.contains(needle), "{bytes:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn globals_and_reduce_are_data_not_calls() {
        // os.system('rm -rf /') as a protocol-0 pickle: decoded, never run.
        let v = parse(b"cos\nsystem\n(S'rm -rf /'\ntR.", "x").unwrap();
        let Value::Object(o) = v else { panic!("{v:?}") };
        assert_eq!(o.kind, ObjectKind::Reduce);
        assert_eq!(
            o.callable,
            Value::Global {
                module: "os".into(),
                name: "system".into()
            }
        );
        assert_eq!(
            o.args,
            Value::Tuple(vec![Value::Bytes(b"rm -rf /".to_vec())])
        );
    }

    #[test]
    fn sharing_and_nesting_are_bounded() {
        // "Billion laughs": each level is a pair of the previous one, 60 levels deep.
        let mut b = b"\x80\x02]q\x00".to_vec();
        for _ in 0..60 {
            b.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        b.push(b'.');
        let e = parse(&b, "laughs.pkl").unwrap_err().to_string();
        assert!(e.contains("copy too much"), "{e}");
        // A 16-level version is fine and has 2^16 leaves.
        let mut b = b"\x80\x02K\x07q\x00".to_vec();
        for _ in 0..16 {
            b.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        b.push(b'.');
        let mut v = parse(&b, "ok.pkl").unwrap();
        let mut depth = 0;
        while let Value::Tuple(t) = v {
            assert_eq!(t[0], t[1]);
            v = t.into_iter().next().unwrap();
            depth += 1;
        }
        assert_eq!((depth, v), (16, Value::Int(7)));
        // 100,000 nested lists: refused, no stack overflow.
        let mut b = vec![b']'; 100_000];
        b.extend(vec![b'a'; 99_999]);
        b.push(b'.');
        let e = parse(&b, "deep.pkl").unwrap_err().to_string();
        assert!(e.contains("nesting deeper"), "{e}");
    }

    #[test]
    fn truncated_and_corrupted_fixtures_never_panic() {
        let good = std::fs::read(fixture("pickle_p2.pkl")).unwrap();
        for cut in 0..good.len() {
            assert!(
                parse(&good[..cut], "cut").is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..r.random_range(1..4) {
                let i = r.random_range(0..b.len());
                b[i] = r.random();
            }
            let _ = parse(&b, "fuzz");
        }
    }
}
