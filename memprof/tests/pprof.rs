//! Checks `profile.pb.gz` with an independent decoder: `protoc --decode` against a copy of
//! pprof's upstream `profile.proto` (tests/data/profile.proto). Needs `protoc` (Debian package
//! `protobuf-compiler`, installed by `cargo xtask setup`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use memprof::output::pprof::{encode_profile, PPROF_FILE};
use memprof::output::write_pprof;
use memprof::report::{Frame, StackReport};

const DURATION_NS: i64 = 12_500_000_000;
const TIME_NANOS: i64 = 1_700_000_000_123_456_789;

fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn frame(
    function: &str,
    file: Option<&str>,
    line: Option<u32>,
    module: &str,
    offset: u64,
) -> Frame {
    Frame {
        function: function.to_string(),
        file: file.map(str::to_string),
        line,
        module: module.to_string(),
        offset,
        inlined: false,
    }
}

fn inlined(function: &str, file: &str, line: u32, module: &str, offset: u64) -> Frame {
    Frame {
        inlined: true,
        ..frame(function, Some(file), Some(line), module, offset)
    }
}

fn stack(frames: Vec<Frame>, values: [u64; 4]) -> StackReport {
    StackReport {
        frames: frames.iter().map(Frame::display_name).collect(),
        frame_details: frames,
        bytes: values[0],
        allocations: values[1],
        total_bytes: values[2],
        total_allocations: values[3],
        pids: vec![42],
        ..Default::default()
    }
}

const APP: &str = "/usr/bin/api-server";
const LIBFOO: &str = "/usr/lib/x86_64-linux-gnu/libfoo.so.1";

/// Root → leaf, as the symbolizer produces them.
fn stacks() -> Vec<StackReport> {
    vec![
        // main → handle_request [→ parse_header → grow_buffer, both inlined] → foo_alloc
        stack(
            vec![
                frame("main", Some("/src/main.c"), Some(10), APP, 0x1100),
                frame(
                    "handle_request",
                    Some("/src/server.c"),
                    Some(200),
                    APP,
                    0x2200,
                ),
                inlined("parse_header", "/src/http.h", 55, APP, 0x2200),
                inlined("grow_buffer", "/src/buf.h", 7, APP, 0x2200),
                frame("foo_alloc", None, None, LIBFOO, 0x30),
            ],
            [4096, 4, 8192, 10],
        ),
        // Shares `main`'s location; freed everything (only alloc_* non-zero).
        stack(
            vec![
                frame("main", Some("/src/main.c"), Some(10), APP, 0x1100),
                frame("libfoo.so.1+0x99", None, None, LIBFOO, 0x99),
            ],
            [0, 0, 100, 1],
        ),
        stack(Vec::new(), [64, 1, 64, 1]),
    ]
}

/// Runs `protoc --decode=perftools.profiles.Profile` on `data`; fails (never skips) without
/// protoc.
fn protoc_decode(data: &[u8]) -> String {
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let child = Command::new(&protoc)
        .arg("--decode=perftools.profiles.Profile")
        .arg("-I")
        .arg(proto_dir())
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "protoc not found ({}): run `cargo xtask setup` (it installs the Debian package \
             protobuf-compiler), or set PROTOC to the protoc binary",
            protoc.to_string_lossy()
        ),
        Err(e) => panic!("failed to run protoc: {e}"),
    };
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc --decode failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("protoc output is UTF-8")
}

/// A message in protobuf text format: fields in order.
#[derive(Debug, Default)]
struct Msg(Vec<(String, Val)>);

#[derive(Debug)]
enum Val {
    Scalar(String),
    Msg(Msg),
}

impl Msg {
    fn all(&self, name: &str) -> Vec<&Val> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    fn msgs(&self, name: &str) -> Vec<&Msg> {
        self.all(name)
            .into_iter()
            .map(|v| match v {
                Val::Msg(m) => m,
                Val::Scalar(s) => panic!("{name} is a scalar: {s}"),
            })
            .collect()
    }

    fn msg(&self, name: &str) -> &Msg {
        let all = self.msgs(name);
        assert_eq!(all.len(), 1, "expected one {name}");
        all[0]
    }

    fn scalars(&self, name: &str) -> Vec<&str> {
        self.all(name)
            .into_iter()
            .map(|v| match v {
                Val::Scalar(s) => s.as_str(),
                Val::Msg(_) => panic!("{name} is a message"),
            })
            .collect()
    }

    /// A numeric field; 0 when absent (proto3 default).
    fn int(&self, name: &str) -> i64 {
        match self.scalars(name)[..] {
            [] => 0,
            [s] => s.parse().unwrap_or_else(|_| panic!("{name}: {s}")),
            _ => panic!("{name} repeated"),
        }
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        self.scalars(name)
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        match self.scalars(name)[..] {
            [] => false,
            ["true"] => true,
            ref v => panic!("{name}: {v:?}"),
        }
    }
}

/// Parses protoc's text output (one field per line, `name {` ... `}` for messages).
fn parse_text(text: &str) -> Msg {
    let mut stack = vec![(String::new(), Msg::default())];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "}" {
            let (name, msg) = stack.pop().unwrap();
            stack.last_mut().unwrap().1 .0.push((name, Val::Msg(msg)));
        } else if let Some(name) = line.strip_suffix(" {") {
            stack.push((name.to_string(), Msg::default()));
        } else {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(quoted) => unquote(quoted),
                None => value.to_string(),
            };
            stack
                .last_mut()
                .unwrap()
                .1
                 .0
                .push((name.to_string(), Val::Scalar(value)));
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced braces");
    stack.pop().unwrap().1
}

/// Undoes the C escapes protoc uses for the strings in this test.
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The decoded profile with ids and string indices resolved.
struct Resolved {
    strings: Vec<String>,
    /// id → (name, system_name, filename)
    functions: BTreeMap<i64, (String, String, String)>,
    /// id → (mapping filename or "", address, lines as "name:line", innermost first)
    locations: BTreeMap<i64, (String, i64, Vec<String>)>,
}

impl Resolved {
    fn new(p: &Msg) -> Self {
        let strings: Vec<String> = p
            .scalars("string_table")
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = |i: i64| strings[usize::try_from(i).unwrap()].clone();
        let mut mappings = BTreeMap::new();
        for m in p.msgs("mapping") {
            assert!(mappings.insert(m.int("id"), s(m.int("filename"))).is_none());
        }
        let mut functions = BTreeMap::new();
        for f in p.msgs("function") {
            let id = f.int("id");
            assert_ne!(id, 0);
            let rec = (
                s(f.int("name")),
                s(f.int("system_name")),
                s(f.int("filename")),
            );
            assert!(
                functions.insert(id, rec).is_none(),
                "duplicate function {id}"
            );
        }
        let mut locations = BTreeMap::new();
        for l in p.msgs("location") {
            let id = l.int("id");
            assert_ne!(id, 0);
            let mapping = match l.int("mapping_id") {
                0 => String::new(),
                m => mappings.get(&m).expect("location's mapping exists").clone(),
            };
            let lines = l
                .msgs("line")
                .iter()
                .map(|line| {
                    let name = &functions[&line.int("function_id")].0;
                    format!("{name}:{}", line.int("line"))
                })
                .collect();
            let rec = (mapping, l.int("address"), lines);
            assert!(
                locations.insert(id, rec).is_none(),
                "duplicate location {id}"
            );
        }
        Resolved {
            strings,
            functions,
            locations,
        }
    }

    fn value_type(&self, m: &Msg) -> (String, String) {
        (
            self.strings[m.int("type") as usize].clone(),
            self.strings[m.int("unit") as usize].clone(),
        )
    }
}

fn decoded_profile() -> (String, Msg) {
    let dir = std::env::temp_dir().join(format!("memprof-pprof-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(PPROF_FILE);
    write_pprof(&path, &stacks(), DURATION_NS, TIME_NANOS).unwrap();
    let gz = fs::read(&path).unwrap();
    assert!(!dir.join(format!("{PPROF_FILE}.tmp")).exists());
    fs::remove_dir_all(&dir).unwrap();

    assert_eq!(&gz[..2], [0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw, encode_profile(&stacks(), DURATION_NS, TIME_NANOS));
    let text = protoc_decode(&raw);
    let msg = parse_text(&text);
    (text, msg)
}

#[test]
fn protoc_decodes_profile() {
    let (text, p) = decoded_profile();
    // Unknown fields would be printed by number: every field must be in profile.proto.
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with(|c: char| c.is_ascii_digit()),
            "unknown field in {line:?}\n{text}"
        );
    }
    let r = Resolved::new(&p);
    assert_eq!(r.strings[0], "");

    let types: Vec<_> = p
        .msgs("sample_type")
        .into_iter()
        .map(|m| r.value_type(m))
        .collect();
    let expected_types = [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ]
    .map(|(t, u)| (t.to_string(), u.to_string()));
    assert_eq!(types, expected_types);
    assert_eq!(
        r.strings[p.int("default_sample_type") as usize],
        "inuse_space"
    );
    assert_eq!(
        r.value_type(p.msg("period_type")),
        ("space".to_string(), "bytes".to_string())
    );
    assert_eq!(p.int("period"), 1);
    assert_eq!(p.int("duration_nanos"), DURATION_NS);
    assert_eq!(p.int("time_nanos"), TIME_NANOS);

    // Samples: values in sample-type order, locations leaf first, lines innermost first.
    let samples: Vec<(Vec<Vec<String>>, Vec<i64>)> = p
        .msgs("sample")
        .into_iter()
        .map(|s| {
            let locs = s
                .ints("location_id")
                .iter()
                .map(|id| r.locations[id].2.clone())
                .collect();
            (locs, s.ints("value"))
        })
        .collect();
    let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        samples,
        [
            (
                vec![
                    lines(&["foo_alloc:0"]),
                    lines(&["grow_buffer:7", "parse_header:55", "handle_request:200"]),
                    lines(&["main:10"]),
                ],
                vec![4096, 4, 8192, 10],
            ),
            (
                vec![lines(&["libfoo.so.1+0x99:0"]), lines(&["main:10"])],
                vec![0, 0, 100, 1],
            ),
            (vec![lines(&["[no stack]:0"])], vec![64, 1, 64, 1]),
        ]
    );

    // `main` is one location shared by both stacks.
    let first = p.msgs("sample")[0].ints("location_id");
    let second = p.msgs("sample")[1].ints("location_id");
    assert_eq!(first.last(), second.last());
    assert_eq!(r.locations.len(), 5);

    // Locations: mapping file and address (= file offset).
    let by_leaf_fn: BTreeMap<String, (String, i64)> = r
        .locations
        .values()
        .map(|(m, addr, lines)| (lines[0].clone(), (m.clone(), *addr)))
        .collect();
    assert_eq!(by_leaf_fn["main:10"], (APP.to_string(), 0x1100));
    assert_eq!(by_leaf_fn["grow_buffer:7"], (APP.to_string(), 0x2200));
    assert_eq!(by_leaf_fn["foo_alloc:0"], (LIBFOO.to_string(), 0x30));
    assert_eq!(by_leaf_fn["libfoo.so.1+0x99:0"], (LIBFOO.to_string(), 0x99));
    assert_eq!(by_leaf_fn["[no stack]:0"], (String::new(), 0));

    // Functions: name = system_name, file or "".
    let functions: BTreeMap<&str, (&str, &str)> = r
        .functions
        .values()
        .map(|(n, sys, file)| (n.as_str(), (sys.as_str(), file.as_str())))
        .collect();
    assert_eq!(
        functions,
        BTreeMap::from([
            ("main", ("main", "/src/main.c")),
            ("handle_request", ("handle_request", "/src/server.c")),
            ("parse_header", ("parse_header", "/src/http.h")),
            ("grow_buffer", ("grow_buffer", "/src/buf.h")),
            ("foo_alloc", ("foo_alloc", "")),
            ("libfoo.so.1+0x99", ("libfoo.so.1+0x99", "")),
            ("[no stack]", ("[no stack]", "")),
        ])
    );

    // Mappings: one per module, symbolized.
    let mappings = p.msgs("mapping");
    let files: Vec<&str> = mappings
        .iter()
        .map(|m| r.strings[m.int("filename") as usize].as_str())
        .collect();
    assert_eq!(files, [APP, LIBFOO]);
    for m in &mappings {
        assert!(m.flag("has_functions") && m.flag("has_filenames") && m.flag("has_line_numbers"));
    }
    assert!(mappings[0].flag("has_inline_frames"));
}

#[test]
fn empty_profile_decodes() {
    let raw = encode_profile(&[], 0, 0);
    let p = parse_text(&protoc_decode(&raw));
    let r = Resolved::new(&p);
    assert_eq!(p.msgs("sample_type").len(), 4);
    assert!(p.msgs("sample").is_empty());
    assert!(r.locations.is_empty() && r.functions.is_empty());
    assert_eq!(
        r.strings[p.int("default_sample_type") as usize],
        "inuse_space"
    );
}
