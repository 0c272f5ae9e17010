//! The binary form of values and instances, written and read by hand.
//!
//! The bytes are exactly the ones postcard writes for the same types through serde
//! (`docs/protocol.md`, "Encodings"): no format of its own. It exists because serde's
//! dispatch per value — a visitor for the variant, one for the payload, a push through a
//! generic sequence — costs 10–20 ns a value, and a reply of 1 000 counters spent most of
//! its time there (`docs/performance.md`, "`get app.big`").
//!
//! **Invariants.** Writing gives the bytes serde gives (tests hold the two together on
//! every kind of value, instance and list). Reading accepts only what serde accepts and
//! gives what serde gives; anything it does not read — an error, a nested array, a names
//! blob that is refused — is `None`, and the caller decodes the same bytes with serde,
//! which says what is wrong. So this module never decides what an error says, and it
//! reads in one pass, allocating no more than the bytes can fill.

use std::collections::HashMap;

use crate::instance::Names;
use crate::{Instance, Timestamp, Value};

/// Bytes being read, front to back.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Skips to `rest`, the tail of what is left (after something read elsewhere).
    pub fn skip_to(&mut self, rest: &'a [u8]) {
        debug_assert!(rest.len() <= self.rest.len());
        self.rest = rest;
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    /// A varint of at most `max_bytes` bytes whose last byte is at most `max_last` when
    /// it is the `max_bytes`-th: postcard's rule, non-canonical forms included.
    fn varint(&mut self, max_bytes: u32, max_last: u8) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..max_bytes {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i < max_bytes - 1 || b <= max_last).then_some(out);
            }
        }
        None
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.varint(10, 0x01)
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn i64(&mut self) -> Option<i64> {
        let n = self.u64()?;
        Some(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
}

pub fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    write_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A value's variant index, as serde numbers `Value`'s variants.
fn tag(value: &Value) -> u8 {
    match value {
        Value::I64(_) => 0,
        Value::U64(_) => 1,
        Value::F64(_) => 2,
        Value::Bool(_) => 3,
        Value::String(_) => 4,
        Value::Bytes(_) => 5,
        Value::Timestamp(_) => 6,
        Value::Array(_) => 7,
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    out.push(tag(value));
    match value {
        Value::I64(v) | Value::Timestamp(Timestamp(v)) => write_i64(out, *v),
        Value::U64(v) => write_varint(out, *v),
        Value::F64(v) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(v) => write_bytes(out, v.as_bytes()),
        Value::Bytes(v) => write_bytes(out, v),
        Value::Array(items) => write_values(out, items),
    }
}

/// A sequence of values: its length, then each.
pub fn write_values(out: &mut Vec<u8>, values: &[Value]) {
    write_varint(out, values.len() as u64);
    for value in values {
        write_value(out, value);
    }
}

/// An instance: its names blob, then its values.
pub fn write_instance(out: &mut Vec<u8>, instance: &Instance) {
    write_bytes(out, instance.names().blob());
    write_values(out, instance.value_slice());
}

/// A list of instances: each distinct names blob once, then per instance the index of
/// its blob and its values (the tables in the order [`crate::instance_list`] gives them).
pub fn write_instance_list(out: &mut Vec<u8>, instances: &[Instance]) {
    let mut tables: Vec<&Names> = Vec::new();
    let mut by_blob: HashMap<&[u8], u32> = HashMap::new();
    let mut rows = Vec::with_capacity(instances.len());
    let mut last: Option<(&Names, u32)> = None;
    for instance in instances {
        let names = instance.names();
        let at = match last {
            Some((seen, at)) if seen.same(names) => at,
            _ => *by_blob.entry(names.blob()).or_insert_with(|| {
                tables.push(names);
                tables.len() as u32 - 1
            }),
        };
        last = Some((names, at));
        rows.push(at);
    }
    write_varint(out, tables.len() as u64);
    for names in tables {
        write_bytes(out, names.blob());
    }
    write_varint(out, instances.len() as u64);
    for (instance, at) in instances.iter().zip(rows) {
        write_varint(out, u64::from(at));
        write_values(out, instance.value_slice());
    }
}

/// How many of `announced` items of type `T` to make room for before reading them, with
/// `left` bytes to read: no more than the bytes can hold (a value takes at least two, its
/// tag and a byte; so does a row, its index and its values' length), and no more
/// than 1 MiB up front, as serde's sequences allow — a peer's length alone never makes
/// the reader allocate much more than the bytes it sent. The vector grows past it as
/// items are actually read.
fn cautious<T>(announced: usize, left: usize) -> usize {
    announced
        .min(left / 2)
        .min((1 << 20) / std::mem::size_of::<T>().max(1))
}

/// One value; `array` says whether an array may be read (not inside an array).
fn read_value(r: &mut Reader, array: bool) -> Option<Value> {
    Some(match r.u32()? {
        0 => Value::I64(r.i64()?),
        1 => Value::U64(r.u64()?),
        2 => Value::F64(f64::from_bits(u64::from_le_bytes(
            r.take(8)?.try_into().ok()?,
        ))),
        3 => Value::Bool(match r.byte()? {
            0 => false,
            1 => true,
            _ => return None,
        }),
        4 => Value::String(std::str::from_utf8(r.bytes()?).ok()?.to_owned()),
        5 => Value::Bytes(r.bytes()?.to_vec()),
        6 => Value::Timestamp(Timestamp(r.i64()?)),
        7 if array => Value::Array(read_sequence(r, false)?),
        _ => return None,
    })
}

fn read_sequence(outer: &mut Reader, arrays: bool) -> Option<Vec<Value>> {
    // A reader of its own, kept in registers, given back at the end (a declined read is
    // dropped whole, so a reader left behind by `?` does not matter).
    let mut local = Reader { rest: outer.rest };
    let r = &mut local;
    let n = r.len()?;
    let mut values = Vec::with_capacity(cautious::<Value>(n, r.rest.len()));
    for _ in 0..n {
        // Unsigned integers (counters, most values) on a path of their own: a push that
        // only ever writes `Value::U64` writes it in place, where one fed by a `match`
        // over every variant builds the value on the stack and copies it, and that copy
        // stalls on the stores before it (4–6 ns a value).
        if let [1, rest @ ..] = r.rest {
            r.rest = rest;
            Value::push_u64(&mut values, r.u64()?);
            continue;
        }
        values.push(read_value(r, arrays)?);
    }
    outer.rest = local.rest;
    Some(values)
}

/// A sequence of values, as [`write_values`] writes it.
pub fn read_values(r: &mut Reader) -> Option<Vec<Value>> {
    read_sequence(r, true)
}

/// An instance, as [`write_instance`] writes it.
pub fn read_instance(r: &mut Reader) -> Option<Instance> {
    let names = Names::decode(r.bytes()?).ok()?;
    let values = read_values(r)?;
    Instance::from_table(names, values).ok()
}

/// A list of instances, as [`write_instance_list`] writes it.
pub fn read_instance_list(r: &mut Reader) -> Option<Vec<Instance>> {
    let tables = r.len()?;
    let mut names = Vec::with_capacity(cautious::<Names>(tables, r.rest.len()));
    for _ in 0..tables {
        names.push(Names::decode(r.bytes()?).ok()?);
    }
    let rows = r.len()?;
    let mut instances = Vec::with_capacity(cautious::<Instance>(rows, r.rest.len()));
    for _ in 0..rows {
        let table = names.get(r.u32()? as usize)?.clone();
        instances.push(Instance::from_table(table, read_values(r)?).ok()?);
    }
    Some(instances)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identifier;

    fn every_kind() -> Vec<Value> {
        vec![
            Value::I64(0),
            Value::I64(-1),
            Value::I64(i64::MIN),
            Value::I64(i64::MAX),
            Value::U64(0),
            Value::U64(127),
            Value::U64(128),
            Value::U64(u64::MAX),
            Value::F64(-0.0),
            Value::F64(f64::NAN),
            Value::F64(1.5e300),
            Value::Bool(true),
            Value::Bool(false),
            Value::String(String::new()),
            Value::String("héllo".repeat(50)),
            Value::Bytes(vec![0, 255, 128]),
            Value::Bytes(vec![7; 300]),
            Value::Timestamp(Timestamp(-5)),
            Value::Timestamp(Timestamp(1_765_000_000_000_000_000)),
            Value::Array(vec![]),
            Value::Array(vec![Value::U64(1), Value::U64(300)]),
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        ]
    }

    fn instance(names: &[&str], values: Vec<Value>) -> Instance {
        names
            .iter()
            .map(|n| Identifier::new(n).unwrap())
            .zip(values)
            .collect()
    }

    #[test]
    fn values_are_written_as_serde_writes_them_and_read_back_the_same() {
        let values = every_kind();
        let serde = postcard::to_stdvec(&values).unwrap();
        let mut ours = Vec::new();
        write_values(&mut ours, &values);
        assert_eq!(ours, serde);
        let mut r = Reader::new(&serde);
        let back = read_values(&mut r).unwrap();
        assert!(r.rest().is_empty());
        // NaN is not equal to itself: compare the bytes they make again.
        let mut again = Vec::new();
        write_values(&mut again, &back);
        assert_eq!(again, serde);
        assert_eq!(back.len(), values.len());
    }

    #[test]
    fn instances_and_lists_are_written_as_serde_writes_them_and_read_back_equal() {
        let a = instance(
            &["name", "n"],
            vec![Value::String("x".into()), Value::U64(1)],
        );
        let b = Instance::with_values(a.names(), vec![Value::String("y".into()), Value::U64(2)]);
        // Same names in a table of its own: sent once, as serde sends it.
        let c = instance(
            &["name", "n"],
            vec![Value::String("z".into()), Value::U64(3)],
        );
        let d = instance(&["other"], vec![Value::Bool(true)]);
        let list = vec![a.clone(), b, d, c, Instance::new()];

        let serde = postcard::to_stdvec(&a).unwrap();
        let mut ours = Vec::new();
        write_instance(&mut ours, &a);
        assert_eq!(ours, serde);
        assert_eq!(read_instance(&mut Reader::new(&serde)).unwrap(), a);

        #[derive(serde::Serialize)]
        struct List<'a>(#[serde(with = "crate::instance_list")] &'a Vec<Instance>);
        let serde = postcard::to_stdvec(&List(&list)).unwrap();
        let mut ours = Vec::new();
        write_instance_list(&mut ours, &list);
        assert_eq!(ours, serde);
        let mut r = Reader::new(&serde);
        assert_eq!(read_instance_list(&mut r).unwrap(), list);
        assert!(r.rest().is_empty());
    }

    /// Whatever the bytes, reading either gives what serde gives or declines; it never
    /// accepts what serde refuses.
    #[test]
    fn reading_agrees_with_serde_on_damaged_bytes() {
        let a = instance(
            &["s", "u", "f", "arr", "b", "t"],
            vec![
                Value::String("abc".into()),
                Value::U64(300),
                Value::F64(2.5),
                Value::Array(vec![Value::I64(-3)]),
                Value::Bool(true),
                Value::Timestamp(Timestamp(9)),
            ],
        );
        let good = postcard::to_stdvec(&a).unwrap();
        let mut checked = 0;
        for at in 0..good.len() {
            for byte in [0u8, 1, 2, 7, 8, 0x7f, 0x80, 0xc3, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                for cut in [bad.len(), bad.len() - 1, at + 1] {
                    let bytes = &bad[..cut];
                    let ours = {
                        let mut r = Reader::new(bytes);
                        read_instance(&mut r).filter(|_| r.rest().is_empty())
                    };
                    let theirs = postcard::from_bytes::<Instance>(bytes).ok().filter(|_| {
                        postcard::take_from_bytes::<Instance>(bytes)
                            .unwrap()
                            .1
                            .is_empty()
                    });
                    if let Some(ours) = ours {
                        let theirs = theirs.expect("read what serde refuses");
                        let (mut x, mut y) = (Vec::new(), Vec::new());
                        write_instance(&mut x, &ours);
                        write_instance(&mut y, &theirs);
                        assert_eq!(x, y);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 0);
    }

    #[test]
    fn an_array_inside_an_array_and_an_unknown_variant_are_left_to_serde() {
        let nested = Value::Array(vec![Value::Array(vec![])]);
        let mut bytes = Vec::new();
        write_values(&mut bytes, std::slice::from_ref(&nested));
        assert!(read_values(&mut Reader::new(&bytes)).is_none());
        assert!(postcard::from_bytes::<Vec<Value>>(&bytes).is_err());
        assert!(read_values(&mut Reader::new(&[1, 8, 0])).is_none());
        // A length far beyond the bytes allocates nothing large and declines.
        assert!(read_values(&mut Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f])).is_none());
    }
}
