//! Unit tests of the pprof encoder.

use super::*;

// An independent, hand-written decoder: the bytes prost produces are checked against the
// field numbers of profile.proto written out here, not against the generated code.

/// Protobuf wire types.
const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

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
fn varint_decoding() {
    assert_eq!(get_varint(&[0x00]), (0, &[][..]));
    assert_eq!(get_varint(&[0x7f]), (127, &[][..]));
    assert_eq!(get_varint(&[0x80, 0x01]), (128, &[][..]));
    assert_eq!(get_varint(&[0xac, 0x02, 0x05]), (300, &[0x05][..]));
    assert_eq!(get_varint(&[0x80, 0x80, 0x01]), (16_384, &[][..]));
    assert_eq!(
        get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        (u64::MAX, &[][..])
    );
}

#[test]
fn negative_int64_is_ten_bytes() {
    let bytes = ValueType {
        r#type: -1,
        unit: 0,
    }
    .encode_to_vec();
    assert_eq!(
        bytes,
        [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
    assert_eq!(fields(&bytes), [(1, Value::Varint(u64::MAX))]);
}

/// The generated types' wire format: proto3 (zero scalars omitted), packed repeated scalars,
/// empty strings and messages in repeated fields still written.
#[test]
fn generated_wire_format() {
    let profile = Profile {
        sample: vec![
            Sample {
                location_id: vec![3, 270],
                value: vec![0, 1],
                label: Vec::new(),
            },
            Sample::default(),
        ],
        mapping: vec![Mapping {
            id: 150,
            has_functions: true,
            ..Mapping::default()
        }],
        string_table: vec![String::new(), "hi".to_string()],
        period_type: Some(ValueType { r#type: 2, unit: 0 }),
        ..Profile::default()
    };
    assert_eq!(
        profile.encode_to_vec(),
        [
            0x12, 0x09, // 2: sample {
            0x0a, 0x03, 0x03, 0x8e, 0x02, // 1: packed [3, 270]
            0x12, 0x02, 0x00, 0x01, // 2: packed [0, 1] }
            0x12, 0x00, // 2: sample {}
            0x1a, 0x05, 0x08, 0x96, 0x01, 0x38, 0x01, // 3: mapping { 1: 150, 7: true }
            0x32, 0x00, // 6: ""
            0x32, 0x02, b'h', b'i', // 6: "hi"
            0x5a, 0x02, 0x08, 0x02, // 11: { 1: 2 }
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
            .line
            .iter()
            .map(|l| t.strings[t.functions[l.function_id as usize - 1].name as usize].clone())
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
    let f = &t.functions[t.locations[0].line[0].function_id as usize - 1];
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
    assert!(top.contains(&(p::TIME_NANOS, Value::Varint(1_700_000_000_000_000_000))));
    // period_type { type: "space" (7), unit: "bytes" (2) }
    assert!(top.contains(&(p::PERIOD_TYPE, Value::Bytes(vec![0x08, 7, 0x10, 2]))));
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

/// The fields of the first top-level field `field` of `data`.
fn first(data: &[u8], field: u32) -> Vec<(u32, Value)> {
    match fields(data).into_iter().find(|(f, _)| *f == field) {
        Some((_, Value::Bytes(b))) => fields(&b),
        other => panic!("field {field}: {other:?}"),
    }
}

#[test]
fn inlined_location_and_mapping_on_the_wire() {
    let stacks = [stack(vec![
        frame("outer", "/bin/app", 0x20, false),
        frame("inner", "/bin/app", 0x20, true),
    ])];
    let data = encode_profile(&stacks, 0, 0);
    use field::{line as l, location as loc, mapping as m};
    // Strings: "", 4 sample types + units (1..=6), "space" (7), "/bin/app" (8), then
    // "inner" (9), "/src/inner.c" (10), "outer" (11), "/src/outer.c" (12).
    assert_eq!(
        first(&data, field::profile::MAPPING),
        [
            (m::ID, Value::Varint(1)),
            (m::FILENAME, Value::Varint(8)),
            (m::HAS_FUNCTIONS, Value::Varint(1)),
            (m::HAS_FILENAMES, Value::Varint(1)),
            (m::HAS_LINE_NUMBERS, Value::Varint(1)),
            (m::HAS_INLINE_FRAMES, Value::Varint(1)),
        ]
    );
    let line = |function_id: u8, line: u8| {
        Value::Bytes(vec![
            (l::FUNCTION_ID << 3) as u8,
            function_id,
            (l::LINE << 3) as u8,
            line,
        ])
    };
    assert_eq!(
        first(&data, field::profile::LOCATION),
        [
            (loc::ID, Value::Varint(1)),
            (loc::MAPPING_ID, Value::Varint(1)),
            (loc::ADDRESS, Value::Varint(0x20)),
            (loc::LINE, line(1, 0x20)), // inner, innermost first
            (loc::LINE, line(2, 0x20)), // outer
        ]
    );
}

/// prost decodes what it encoded, and the message holds what the tables built.
#[test]
fn prost_round_trip() {
    let stacks = [
        stack(vec![
            frame("main", "/bin/app", 1, false),
            frame("outer", "/bin/app", 2, false),
            frame("inner", "/bin/app", 2, true),
            frame(" ", "", 0, false),
        ]),
        stack(Vec::new()),
    ];
    let profile = build_profile(&stacks, 7, -3);
    let decoded = Profile::decode(&encode_profile(&stacks, 7, -3)[..]).unwrap();
    assert_eq!(decoded, profile);
    assert_eq!((decoded.duration_nanos, decoded.time_nanos), (7, -3));
    let name = |id: u64| {
        let f = &decoded.function[id as usize - 1];
        assert_eq!(f.id, id);
        decoded.string_table[f.name as usize].as_str()
    };
    let leaf = &decoded.location[decoded.sample[0].location_id[0] as usize - 1];
    assert_eq!(leaf.mapping_id, 0, "empty module: no mapping");
    assert_eq!(name(leaf.line[0].function_id), UNKNOWN_FUNCTION);
    let no_stack = &decoded.location[decoded.sample[1].location_id[0] as usize - 1];
    assert_eq!(name(no_stack.line[0].function_id), NO_STACK);
    assert_eq!(decoded.sample[1].value, [10, 1, 20, 2]);
    assert_eq!(decoded.mapping.len(), 1);
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
