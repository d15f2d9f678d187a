//! pprof's `perftools.profiles.Profile` protobuf (`profile.pb.gz`), hand-encoded.
//!
//! Four sample values per stack: `inuse_space`/`bytes`, `inuse_objects`/`count`,
//! `alloc_space`/`bytes`, `alloc_objects`/`count` (in that order; `inuse_space` is the default).
//! Locations are keyed by (module, file offset); a frame and the frames inlined into it become one
//! location whose lines list the innermost inlined function first and the outer function last,
//! as pprof expects. `Location.address` is the file offset inside the module (mappings have
//! `memory_start`/`memory_limit` 0), and every mapping is marked as already symbolized.
//!
//! Field numbers follow github.com/google/pprof/proto/profile.proto (a copy is in
//! `tests/data/profile.proto`, which the integration test decodes with `protoc`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::{write_atomic, OutputError, NO_STACK};
use crate::report::{Frame, StackReport};

/// File name of the pprof profile in an output directory.
pub const PPROF_FILE: &str = "profile.pb.gz";

/// `(type, unit)` of each sample value: `[bytes, allocations, total_bytes, total_allocations]`.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("inuse_space", "bytes"),
    ("inuse_objects", "count"),
    ("alloc_space", "bytes"),
    ("alloc_objects", "count"),
];

/// Written in place of an empty function name.
const UNKNOWN_FUNCTION: &str = "[unknown]";

/// Field numbers of `profile.proto`.
mod field {
    pub mod profile {
        pub const SAMPLE_TYPE: u32 = 1;
        pub const SAMPLE: u32 = 2;
        pub const MAPPING: u32 = 3;
        pub const LOCATION: u32 = 4;
        pub const FUNCTION: u32 = 5;
        pub const STRING_TABLE: u32 = 6;
        pub const TIME_NANOS: u32 = 9;
        pub const DURATION_NANOS: u32 = 10;
        pub const PERIOD_TYPE: u32 = 11;
        pub const PERIOD: u32 = 12;
        pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
    }
    pub mod value_type {
        pub const TYPE: u32 = 1;
        pub const UNIT: u32 = 2;
    }
    pub mod sample {
        pub const LOCATION_ID: u32 = 1;
        pub const VALUE: u32 = 2;
    }
    pub mod mapping {
        pub const ID: u32 = 1;
        pub const FILENAME: u32 = 5;
        pub const HAS_FUNCTIONS: u32 = 7;
        pub const HAS_FILENAMES: u32 = 8;
        pub const HAS_LINE_NUMBERS: u32 = 9;
        pub const HAS_INLINE_FRAMES: u32 = 10;
    }
    pub mod location {
        pub const ID: u32 = 1;
        pub const MAPPING_ID: u32 = 2;
        pub const ADDRESS: u32 = 3;
        pub const LINE: u32 = 4;
    }
    pub mod line {
        pub const FUNCTION_ID: u32 = 1;
        pub const LINE: u32 = 2;
    }
    pub mod function {
        pub const ID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const SYSTEM_NAME: u32 = 3;
        pub const FILENAME: u32 = 4;
    }
}

/// Encodes `stacks` as an uncompressed pprof profile. `duration_ns` is the length of the run,
/// `time_nanos` its start (nanoseconds since the Unix epoch).
pub fn encode_profile(stacks: &[StackReport], duration_ns: i64, time_nanos: i64) -> Vec<u8> {
    let mut tables = Tables::default();
    let sample_types: Vec<(i64, i64)> = SAMPLE_TYPES
        .iter()
        .map(|(ty, unit)| (tables.string(ty), tables.string(unit)))
        .collect();
    let period_type = (tables.string("space"), tables.string("bytes"));
    let default_sample_type = sample_types[0].0;
    let samples: Vec<(Vec<u64>, [i64; 4])> = stacks
        .iter()
        .map(|s| (tables.stack(&s.frame_details), sample_values(s)))
        .collect();

    use field::profile as p;
    let mut w = ProtoWriter::new();
    for (ty, unit) in &sample_types {
        w.message(p::SAMPLE_TYPE, |m| value_type(m, *ty, *unit));
    }
    for (locations, values) in &samples {
        w.message(p::SAMPLE, |m| {
            m.packed_uint64(field::sample::LOCATION_ID, locations);
            m.packed_int64(field::sample::VALUE, values);
        });
    }
    for (i, mapping) in tables.mappings.iter().enumerate() {
        use field::mapping as f;
        w.message(p::MAPPING, |m| {
            m.uint64(f::ID, i as u64 + 1);
            m.int64(f::FILENAME, mapping.filename);
            m.bool(f::HAS_FUNCTIONS, true);
            m.bool(f::HAS_FILENAMES, true);
            m.bool(f::HAS_LINE_NUMBERS, true);
            m.bool(f::HAS_INLINE_FRAMES, mapping.has_inline_frames);
        });
    }
    for (i, location) in tables.locations.iter().enumerate() {
        use field::location as f;
        w.message(p::LOCATION, |m| {
            m.uint64(f::ID, i as u64 + 1);
            m.uint64(f::MAPPING_ID, location.mapping_id);
            m.uint64(f::ADDRESS, location.address);
            for &(function_id, line) in &location.lines {
                m.message(f::LINE, |l| {
                    l.uint64(field::line::FUNCTION_ID, function_id);
                    l.int64(field::line::LINE, line);
                });
            }
        });
    }
    for (i, function) in tables.functions.iter().enumerate() {
        use field::function as f;
        w.message(p::FUNCTION, |m| {
            m.uint64(f::ID, i as u64 + 1);
            m.int64(f::NAME, function.name);
            m.int64(f::SYSTEM_NAME, function.name);
            m.int64(f::FILENAME, function.filename);
        });
    }
    for s in &tables.strings {
        // Every entry is written, the empty string at index 0 included.
        w.bytes(p::STRING_TABLE, s.as_bytes());
    }
    w.int64(p::TIME_NANOS, time_nanos);
    w.int64(p::DURATION_NANOS, duration_ns);
    w.message(p::PERIOD_TYPE, |m| {
        value_type(m, period_type.0, period_type.1)
    });
    w.int64(p::PERIOD, 1);
    w.int64(p::DEFAULT_SAMPLE_TYPE, default_sample_type);
    w.into_bytes()
}

/// Writes [`encode_profile`] gzip-compressed to `path` (atomically).
pub fn write_pprof(
    path: &Path,
    stacks: &[StackReport],
    duration_ns: i64,
    time_nanos: i64,
) -> Result<(), OutputError> {
    let gz = gzip(&encode_profile(stacks, duration_ns, time_nanos))
        .map_err(|e| OutputError::io(path, e))?;
    write_atomic(path, &gz)
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        Compression::default(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// `[bytes, allocations, total_bytes, total_allocations]`, clamped to `i64::MAX`.
fn sample_values(s: &StackReport) -> [i64; 4] {
    [s.bytes, s.allocations, s.total_bytes, s.total_allocations]
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn value_type(m: &mut ProtoWriter, ty: i64, unit: i64) {
    m.int64(field::value_type::TYPE, ty);
    m.int64(field::value_type::UNIT, unit);
}

struct MappingRec {
    filename: i64,
    has_inline_frames: bool,
}

struct LocationRec {
    /// 0: no mapping.
    mapping_id: u64,
    address: u64,
    /// `(function_id, line)`, innermost inlined function first.
    lines: Vec<(u64, i64)>,
}

struct FunctionRec {
    name: i64,
    filename: i64,
}

/// `(mapping_id, address, lines)`.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

/// The profile's deduplicated tables; ids are 1-based indices.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<MappingRec>,
    mapping_ids: HashMap<String, u64>,
    functions: Vec<FunctionRec>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<LocationRec>,
    location_ids: HashMap<LocationKey, u64>,
}

impl Tables {
    /// Index of `s` in the string table (index 0 is always "").
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn mapping(&mut self, module: &str) -> u64 {
        if module.is_empty() {
            return 0;
        }
        if let Some(&id) = self.mapping_ids.get(module) {
            return id;
        }
        let filename = self.string(module);
        self.mappings.push(MappingRec {
            filename,
            has_inline_frames: false,
        });
        let id = self.mappings.len() as u64;
        self.mapping_ids.insert(module.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = match name.trim() {
            "" => UNKNOWN_FUNCTION,
            _ => name,
        };
        let file = file.unwrap_or("");
        let key = (name.to_string(), file.to_string());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let rec = FunctionRec {
            name: self.string(name),
            filename: self.string(file),
        };
        self.functions.push(rec);
        let id = self.functions.len() as u64;
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, mapping_id: u64, address: u64, lines: Vec<(u64, i64)>) -> u64 {
        let key = (mapping_id, address, lines);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        self.locations.push(LocationRec {
            mapping_id,
            address,
            lines: key.2.clone(),
        });
        let id = self.locations.len() as u64;
        self.location_ids.insert(key, id);
        id
    }

    /// Location ids of a stack given root → leaf, leaf first.
    fn stack(&mut self, frames: &[Frame]) -> Vec<u64> {
        if frames.is_empty() {
            let function = self.function(NO_STACK, None);
            return vec![self.location(0, 0, vec![(function, 0)])];
        }
        let mut ids = Vec::new();
        let mut start = 0;
        while start < frames.len() {
            // A frame, then the frames inlined into it (which follow it, root → leaf).
            let end = start + 1 + frames[start + 1..].iter().take_while(|f| f.inlined).count();
            ids.push(self.inline_group(&frames[start..end]));
            start = end;
        }
        ids.reverse();
        ids
    }

    /// One location for `group` = [outer frame, inlined callees...].
    fn inline_group(&mut self, group: &[Frame]) -> u64 {
        let head = &group[0];
        let mapping_id = self.mapping(&head.module);
        if group.len() > 1 && mapping_id != 0 {
            self.mappings[mapping_id as usize - 1].has_inline_frames = true;
        }
        let lines = group
            .iter()
            .rev()
            .map(|f| {
                let function = self.function(&f.function, f.file.as_deref());
                (function, i64::from(f.line.unwrap_or(0)))
            })
            .collect();
        self.location(mapping_id, head.offset, lines)
    }
}

/// Protobuf wire types.
const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

/// A minimal protobuf encoder: proto3 semantics, so zero scalars are not written.
struct ProtoWriter {
    buf: Vec<u8>,
}

impl ProtoWriter {
    fn new() -> Self {
        ProtoWriter { buf: Vec::new() }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn key(&mut self, field: u32, wire: u32) {
        put_varint(&mut self.buf, u64::from(field << 3 | wire));
    }

    fn uint64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, WIRE_VARINT);
            put_varint(&mut self.buf, v);
        }
    }

    /// `int64`: negative values are written as their 64-bit two's complement (10 bytes).
    fn int64(&mut self, field: u32, v: i64) {
        self.uint64(field, v as u64);
    }

    fn bool(&mut self, field: u32, v: bool) {
        self.uint64(field, u64::from(v));
    }

    /// A length-delimited field (string, bytes); written even when empty.
    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.key(field, WIRE_LEN);
        put_varint(&mut self.buf, data.len() as u64);
        self.buf.extend_from_slice(data);
    }

    /// An embedded message built by `f`; written even when empty.
    fn message(&mut self, field: u32, f: impl FnOnce(&mut ProtoWriter)) {
        let mut inner = ProtoWriter::new();
        f(&mut inner);
        self.bytes(field, &inner.buf);
    }

    /// A packed `repeated uint64`; nothing for an empty slice.
    fn packed_uint64(&mut self, field: u32, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut data = Vec::with_capacity(values.len() * 2);
        for &v in values {
            put_varint(&mut data, v);
        }
        self.bytes(field, &data);
    }

    /// A packed `repeated int64`; nothing for an empty slice.
    fn packed_int64(&mut self, field: u32, values: &[i64]) {
        let values: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        self.packed_uint64(field, &values);
    }
}

/// Appends `v` as a base-128 varint (least significant group first).
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        buf
    }

    /// Decodes one varint, returning it and the rest.
    fn get_varint(data: &[u8]) -> (u64, &[u8]) {
        let mut v = 0u64;
        for (i, &b) in data.iter().enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (v, &data[i + 1..]);
            }
        }
        panic!("truncated varint");
    }

    #[derive(Debug, PartialEq)]
    enum Value {
        Varint(u64),
        Bytes(Vec<u8>),
    }

    /// Splits a message into `(field, value)` pairs.
    fn fields(mut data: &[u8]) -> Vec<(u32, Value)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (key, rest) = get_varint(data);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u32);
            match wire {
                WIRE_VARINT => {
                    let (v, rest) = get_varint(rest);
                    out.push((field, Value::Varint(v)));
                    data = rest;
                }
                WIRE_LEN => {
                    let (len, rest) = get_varint(rest);
                    let (v, rest) = rest.split_at(len as usize);
                    out.push((field, Value::Bytes(v.to_vec())));
                    data = rest;
                }
                w => panic!("unexpected wire type {w}"),
            }
        }
        out
    }

    fn count(fields: &[(u32, Value)], field: u32) -> usize {
        fields.iter().filter(|(f, _)| *f == field).count()
    }

    #[test]
    fn varint_encoding() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(16_383), [0xff, 0x7f]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(varint(u32::MAX as u64), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(
            varint(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            assert_eq!(get_varint(&varint(v)), (v, &[][..]));
        }
    }

    #[test]
    fn negative_int64_is_ten_bytes() {
        let mut w = ProtoWriter::new();
        w.int64(1, -1);
        assert_eq!(
            w.into_bytes(),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn writer_fields() {
        let mut w = ProtoWriter::new();
        w.uint64(1, 0); // proto3 default: omitted
        w.uint64(1, 150);
        w.bool(7, true);
        w.bytes(6, b"");
        w.bytes(6, b"hi");
        w.packed_uint64(1, &[]);
        w.packed_uint64(1, &[3, 270]);
        w.packed_int64(2, &[0, 1]);
        w.message(11, |m| m.int64(1, 2));
        w.message(3, |_| {});
        assert_eq!(
            w.into_bytes(),
            [
                0x08, 0x96, 0x01, // 1: 150
                0x38, 0x01, // 7: true
                0x32, 0x00, // 6: ""
                0x32, 0x02, b'h', b'i', // 6: "hi"
                0x0a, 0x03, 0x03, 0x8e, 0x02, // 1: packed [3, 270]
                0x12, 0x02, 0x00, 0x01, // 2: packed [0, 1]
                0x5a, 0x02, 0x08, 0x02, // 11: { 1: 2 }
                0x1a, 0x00, // 3: {}
            ]
        );
    }

    fn frame(function: &str, module: &str, offset: u64, inlined: bool) -> Frame {
        Frame {
            function: function.to_string(),
            file: Some(format!("/src/{function}.c")),
            line: Some(offset as u32),
            module: module.to_string(),
            offset,
            inlined,
        }
    }

    fn stack(frames: Vec<Frame>) -> StackReport {
        StackReport {
            frames: frames.iter().map(Frame::display_name).collect(),
            frame_details: frames,
            bytes: 10,
            allocations: 1,
            total_bytes: 20,
            total_allocations: 2,
            pids: vec![1],
            ..Default::default()
        }
    }

    #[test]
    fn inlined_frames_share_a_location_innermost_first() {
        let mut t = Tables::default();
        let ids = t.stack(&[
            frame("main", "/bin/app", 1, false),
            frame("outer", "/bin/app", 2, false),
            frame("mid", "/bin/app", 2, true),
            frame("inner", "/bin/app", 2, true),
            frame("alloc", "/lib/libc.so", 3, false),
        ]);
        assert_eq!(ids, [3, 2, 1]);
        assert_eq!(t.locations.len(), 3);
        let names = |t: &Tables, loc: usize| -> Vec<String> {
            t.locations[loc]
                .lines
                .iter()
                .map(|&(f, _)| t.strings[t.functions[f as usize - 1].name as usize].clone())
                .collect()
        };
        assert_eq!(names(&t, 1), ["inner", "mid", "outer"]);
        assert_eq!(t.locations[1].address, 2);
        assert_eq!(t.locations[2].mapping_id, 2);
        assert!(t.mappings[0].has_inline_frames);
        assert!(!t.mappings[1].has_inline_frames);
        // The same frames again reuse everything.
        let again = t.stack(&[
            frame("main", "/bin/app", 1, false),
            frame("outer", "/bin/app", 2, false),
            frame("mid", "/bin/app", 2, true),
            frame("inner", "/bin/app", 2, true),
        ]);
        assert_eq!(again, [2, 1]);
        assert_eq!((t.locations.len(), t.functions.len()), (3, 5));
        assert_eq!(t.strings[0], "");
    }

    #[test]
    fn empty_stack_gets_no_stack_location() {
        let mut t = Tables::default();
        let ids = t.stack(&[]);
        assert_eq!(ids, [1]);
        assert_eq!(t.locations[0].mapping_id, 0);
        let f = &t.functions[t.locations[0].lines[0].0 as usize - 1];
        assert_eq!(t.strings[f.name as usize], NO_STACK);
        assert_eq!(f.filename, 0);
    }

    #[test]
    fn profile_top_level_fields() {
        let stacks = [
            stack(vec![frame("main", "/bin/app", 1, false)]),
            stack(Vec::new()),
        ];
        let data = encode_profile(&stacks, 5_000_000_000, 1_700_000_000_000_000_000);
        let top = fields(&data);
        use field::profile as p;
        assert_eq!(count(&top, p::SAMPLE_TYPE), 4);
        assert_eq!(count(&top, p::SAMPLE), 2);
        assert_eq!(count(&top, p::MAPPING), 1);
        assert_eq!(count(&top, p::LOCATION), 2);
        assert_eq!(count(&top, p::FUNCTION), 2);
        let strings: Vec<&[u8]> = top
            .iter()
            .filter_map(|(f, v)| match v {
                Value::Bytes(b) if *f == p::STRING_TABLE => Some(&b[..]),
                _ => None,
            })
            .collect();
        assert_eq!(strings[0], b"");
        assert_eq!(strings[1], b"inuse_space");
        assert!(top.contains(&(p::DEFAULT_SAMPLE_TYPE, Value::Varint(1))));
        assert!(top.contains(&(p::PERIOD, Value::Varint(1))));
        assert!(top.contains(&(p::DURATION_NANOS, Value::Varint(5_000_000_000))));
        let Some((_, Value::Bytes(sample))) = top.iter().find(|(f, _)| *f == p::SAMPLE) else {
            panic!("no sample");
        };
        assert_eq!(
            fields(sample),
            [
                (field::sample::LOCATION_ID, Value::Bytes(vec![1])),
                (field::sample::VALUE, Value::Bytes(vec![10, 1, 20, 2])),
            ]
        );
    }

    #[test]
    fn gzip_round_trips() {
        let data = encode_profile(&[], 0, 0);
        let gz = gzip(&data).unwrap();
        assert_eq!(&gz[..2], [0x1f, 0x8b]);
        let mut out = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }
}
