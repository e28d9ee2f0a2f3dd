//! Metadata values: the typed key/value pairs in a GGUF header.

use crate::reader::Reader;
use crate::{GgufError, Result};

/// The GGUF value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies in the file.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Arrays may nest, but real files nest at most once; deeper nesting is refused so a
/// hostile file cannot recurse without bound.
const MAX_ARRAY_DEPTH: usize = 4;

pub(crate) fn read_value(r: &mut Reader<'_>, key: &str, depth: usize) -> Result<Value> {
    let type_id = r.u32("value type")?;
    let ty = ValueType::from_u32(type_id)
        .ok_or_else(|| GgufError::metadata(key, format!("unknown value type {type_id}")))?;
    read_typed(r, key, ty, depth)
}

fn read_typed(r: &mut Reader<'_>, key: &str, ty: ValueType, depth: usize) -> Result<Value> {
    let what = key;
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8(what)?),
        ValueType::I8 => Value::I8(r.i8(what)?),
        ValueType::U16 => Value::U16(r.u16(what)?),
        ValueType::I16 => Value::I16(r.i16(what)?),
        ValueType::U32 => Value::U32(r.u32(what)?),
        ValueType::I32 => Value::I32(r.i32(what)?),
        ValueType::F32 => Value::F32(r.f32(what)?),
        ValueType::Bool => match r.u8(what)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(GgufError::metadata(
                    key,
                    format!("bool byte {b} is neither 0 nor 1"),
                ))
            }
        },
        ValueType::String => Value::String(r.string(what)?),
        ValueType::U64 => Value::U64(r.u64(what)?),
        ValueType::I64 => Value::I64(r.i64(what)?),
        ValueType::F64 => Value::F64(r.f64(what)?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::metadata(key, "arrays nested too deeply"));
            }
            let elem_id = r.u32(what)?;
            let elem = ValueType::from_u32(elem_id).ok_or_else(|| {
                GgufError::metadata(key, format!("unknown array element type {elem_id}"))
            })?;
            let count = r.u64(what)?;
            r.check_count(count, elem.min_bytes(), key)?;
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_typed(r, key, elem, depth + 1)?);
            }
            Value::Array(items)
        }
    })
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any non-negative integer as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human-readable rendering (long arrays are summarised).
    pub fn summary(&self, max_chars: usize) -> String {
        let s = match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(items) => {
                let head: Vec<String> = items.iter().take(4).map(|v| v.summary(40)).collect();
                let more = if items.len() > 4 { ", …" } else { "" };
                format!("[{}{}] ({} items)", head.join(", "), more, items.len())
            }
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
        };
        if s.chars().count() > max_chars {
            let mut t: String = s.chars().take(max_chars).collect();
            t.push('…');
            t
        } else {
            s
        }
    }
}
