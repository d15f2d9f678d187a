//! The heap readers on objects forged in a fake memory, laid out as V8 11.3 (Node 20) does.

use super::*;
use crate::runtime::v8::layout::{Layout, tests::v11_3};
use crate::runtime::v8::positions::{self, line_at_bytecode_offset};
use crate::runtime::v8::strings::{self, read_string};
use crate::runtime::v8::V8Version;
use std::cell::RefCell;
use std::collections::HashMap;

const BASE: u64 = 0x1000_0000;
/// The "not internalized" bit of string instance types (0x20 in V8 10.x–13.x).
const NOT_INTERNALIZED: u16 = 0x20;
const ODDBALL_TYPE: u16 = 131;

/// A process memory made of one arena; objects are allocated in it.
struct Fake {
    bytes: RefCell<Vec<u8>>,
    maps: RefCell<HashMap<u16, u64>>,
    l: Layout,
}

impl Memory for Fake {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let b = self.bytes.borrow();
        let start = addr.checked_sub(BASE).ok_or(io::ErrorKind::InvalidInput)? as usize;
        let src = b.get(start..start.checked_add(buf.len()).ok_or(io::ErrorKind::InvalidInput)?);
        buf.copy_from_slice(src.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
}

impl Fake {
    fn new() -> Fake {
        let l = Layout::new(V8Version::new(11, 3, 244, 8), &v11_3()).unwrap();
        Fake { bytes: RefCell::new(vec![0; 64]), maps: RefCell::new(HashMap::new()), l }
    }

    /// `size` zeroed bytes; the untagged address.
    fn alloc(&self, size: usize) -> u64 {
        let mut b = self.bytes.borrow_mut();
        let at = b.len();
        b.resize(at + size.div_ceil(8) * 8 + 8, 0);
        BASE + at as u64
    }

    fn put(&self, addr: u64, v: &[u8]) {
        let at = (untag(addr) - BASE) as usize;
        self.bytes.borrow_mut()[at..at + v.len()].copy_from_slice(v);
    }

    fn put_u64(&self, obj: u64, off: u64, v: u64) {
        self.put(untag(obj) + off, &v.to_le_bytes());
    }

    /// The (tagged) map of instance type `t`.
    fn map(&self, t: u16) -> u64 {
        if let Some(&m) = self.maps.borrow().get(&t) {
            return m;
        }
        let m = self.alloc(80) | 1;
        self.put(untag(m) + self.l.map_instance_type, &t.to_le_bytes());
        self.maps.borrow_mut().insert(t, m);
        m
    }

    /// A (tagged) object of type `t` and `size` bytes.
    fn obj(&self, t: u16, size: usize) -> u64 {
        let o = self.alloc(size.max(16)) | 1;
        self.put_u64(o, self.l.map, self.map(t));
        o
    }

    fn string_obj(&self, rep: u16, one_byte: bool, len: usize, size: usize) -> u64 {
        let enc = if one_byte { self.l.one_byte_string_tag } else { 0 };
        let s = self.obj(NOT_INTERNALIZED | enc | rep, size);
        self.put(untag(s) + self.l.string_length, &(len as i32).to_le_bytes());
        s
    }

    fn seq(&self, text: &str) -> u64 {
        let units: Vec<u16> = text.encode_utf16().collect();
        if units.iter().all(|&u| u < 0x100) {
            let s = self.string_obj(self.l.seq_string_tag, true, units.len(), 16 + units.len());
            let bytes: Vec<u8> = units.iter().map(|&u| u as u8).collect();
            self.put(untag(s) + self.l.seq_one_byte_chars, &bytes);
            s
        } else {
            let s = self.string_obj(self.l.seq_string_tag, false, units.len(), 16 + 2 * units.len());
            let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
            self.put(untag(s) + self.l.seq_two_byte_chars, &bytes);
            s
        }
    }

    fn len_of(&self, s: u64) -> usize {
        strings::length(self, &self.l, s).unwrap() as usize
    }

    fn cons(&self, a: u64, b: u64) -> u64 {
        let s = self.string_obj(self.l.cons_string_tag, true, self.len_of(a) + self.len_of(b), 32);
        self.put_u64(s, self.l.cons_first, a);
        self.put_u64(s, self.l.cons_second, b);
        s
    }

    fn thin(&self, actual: u64) -> u64 {
        let s = self.string_obj(self.l.thin_string_tag, true, self.len_of(actual), 24);
        self.put_u64(s, self.l.thin_actual, actual);
        s
    }

    fn sliced(&self, parent: u64, offset: i32, len: usize) -> u64 {
        let s = self.string_obj(self.l.sliced_string_tag, true, len, 32);
        self.put_u64(s, self.l.sliced_parent, parent);
        self.put_u64(s, self.l.sliced_offset, smi(offset));
        s
    }

    fn external(&self, text: &[u8], cached: bool) -> u64 {
        let data = self.alloc(text.len());
        self.put(data, text);
        let rep = self.l.external_string_tag | if cached { 0 } else { self.l.uncached_external_string_mask };
        let s = self.string_obj(rep, true, text.len(), 40);
        self.put_u64(s, self.l.external_resource, 0x7777_0000);
        if cached {
            self.put_u64(s, self.l.external_data, data);
        }
        s
    }

    fn fixed_array(&self, t: u16, items: &[u64]) -> u64 {
        let a = self.obj(t, 16 + 8 * items.len());
        self.put_u64(a, self.l.fixed_array_length, smi(items.len() as i32));
        for (i, &v) in items.iter().enumerate() {
            self.put_u64(a, self.l.fixed_array_data + 8 * i as u64, v);
        }
        a
    }

    fn undefined(&self) -> u64 {
        self.obj(ODDBALL_TYPE, 48)
    }
}

fn text(f: &Fake, s: u64) -> Result<String, HeapError> {
    read_string(f, &f.l, s, MAX_NAME_UNITS)
}

#[test]
fn smi_and_tag_helpers() {
    for v in [0, 1, -1, 42, i32::MAX, i32::MIN] {
        assert!(is_smi(smi(v)));
        assert!(!is_heap_object(smi(v)));
        assert_eq!(smi_value(smi(v)), v);
    }
    assert!(is_heap_object(0x1234_5671));
    assert!(!is_heap_object(0x1234_5673), "a weak reference is not a strong pointer");
    assert!(!is_smi(0x1234_5671));
    assert_eq!(untag(0x1234_5671), 0x1234_5670);
    assert_eq!(untag(0x1234_5670), 0x1234_5670);
    assert_eq!(tag_of(0x0000_1234_5678_9ab9), ((0x1234_5678_9ab9u64 >> 3) & 0xffff) as u16);
}

#[test]
fn string_kinds() {
    let f = Fake::new();
    let hello = f.seq("hello");
    assert_eq!(text(&f, hello).unwrap(), "hello");
    let latin = f.seq("caf\u{e9}");
    assert_eq!(text(&f, latin).unwrap(), "café");
    let two = f.seq("na\u{ef}ve \u{2192} \u{1f600}");
    assert_eq!(text(&f, two).unwrap(), "naïve → 😀");
    let cons = f.cons(f.cons(f.seq("ab"), f.seq("cd")), f.seq("ef"));
    assert_eq!(text(&f, cons).unwrap(), "abcdef");
    assert_eq!(text(&f, f.thin(hello)).unwrap(), "hello");
    let sliced = f.sliced(f.seq("0123456789"), 3, 4);
    assert_eq!(text(&f, sliced).unwrap(), "3456");
    // A slice of a cons string, across its halves.
    assert_eq!(text(&f, f.sliced(cons, 1, 4)).unwrap(), "bcde");
    assert_eq!(text(&f, f.external(b"node:internal/timers", true)).unwrap(), "node:internal/timers");
    let empty = f.seq("");
    assert_eq!(text(&f, empty).unwrap(), "");
}

#[test]
fn string_garbage_is_an_error() {
    let f = Fake::new();
    let uncached = f.external(b"short", false);
    assert!(matches!(text(&f, uncached), Err(HeapError::Bad { why: "uncached external string", .. })));
    // Not a string at all.
    assert!(matches!(text(&f, f.undefined()), Err(HeapError::WrongType { .. })));
    // Untagged, unmapped, a SMI.
    assert!(text(&f, 0x1000).is_err());
    assert!(text(&f, 0xdead_beef_0001).is_err());
    assert!(matches!(text(&f, smi(3)), Err(HeapError::NotHeapObject { .. })));
    // Too long for a name.
    let long = f.seq(&"x".repeat(2000));
    assert!(matches!(text(&f, long), Err(HeapError::TooLarge { len: 2000, .. })));
    // A cons string whose length lies about its halves.
    let liar = f.cons(f.seq("ab"), f.seq("cd"));
    f.put(untag(liar) + f.l.string_length, &9i32.to_le_bytes());
    assert!(text(&f, liar).is_err());
    // A cycle (a cons string that is its own first half) ends at the depth limit.
    let cyc = f.cons(f.seq("ab"), f.seq("cd"));
    f.put_u64(cyc, f.l.cons_first, cyc);
    assert!(text(&f, cyc).is_err());
    // A negative length, a negative slice offset.
    let neg = f.seq("abc");
    f.put(untag(neg) + f.l.string_length, &(-1i32).to_le_bytes());
    assert!(text(&f, neg).is_err());
    assert!(text(&f, f.sliced(f.seq("abc"), -1, 2)).is_err());
    // An external string whose data pointer is garbage.
    let ext = f.external(b"abc", true);
    f.put_u64(ext, f.l.external_data, 0x10);
    assert!(text(&f, ext).is_err());
}

#[test]
fn line_ends_like_v8() {
    let f = Fake::new();
    // a \n b \r\n c \r d U+2028 e: terminators at 1, 4 (the \n of \r\n), 6, 8; then the length.
    let s = f.seq("a\nb\r\nc\rd\u{2028}e");
    assert_eq!(strings::line_ends(&f, &f.l, s, MAX_SOURCE_UNITS).unwrap(), vec![1, 4, 6, 8, 10]);
    let s = f.seq("x\r");
    assert_eq!(strings::line_ends(&f, &f.l, s, MAX_SOURCE_UNITS).unwrap(), vec![1, 2]);
    let big = f.seq(&"y".repeat(100));
    assert!(matches!(strings::line_ends(&f, &f.l, big, 50), Err(HeapError::TooLarge { .. })));
}

/// A Script: its line ends from `line_ends` when V8 has them, else from the source.
#[test]
fn scripts_and_lines() {
    let f = Fake::new();
    let src = f.seq("l1\nl2\nl3\n");
    let script = f.obj(f.l.type_script, 128);
    f.put_u64(script, f.l.script_name, f.seq("/app/x.js"));
    f.put_u64(script, f.l.script_source, src);
    f.put_u64(script, f.l.script_line_ends, f.undefined());
    let s = read_script(&f, &f.l, script).unwrap();
    assert_eq!((s.name.as_deref(), s.line_ends_from), (Some("/app/x.js"), LineEndsFrom::Source));
    assert_eq!(s.line_ends, vec![2, 5, 8, 9]);
    assert_eq!([0, 2, 3, 5, 6, 8, 9].map(|p| s.line_of(p)), [1, 1, 2, 2, 3, 3, 4].map(Some));
    let ends = f.fixed_array(f.l.type_fixed_array, &[smi(2), smi(5), smi(8), smi(9)]);
    f.put_u64(script, f.l.script_line_ends, ends);
    let s2 = read_script(&f, &f.l, script).unwrap();
    assert_eq!((s2.line_ends_from, &s2.line_ends), (LineEndsFrom::LineEnds, &s.line_ends));
    // Decreasing line ends are garbage: the source is used instead.
    let bad = f.fixed_array(f.l.type_fixed_array, &[smi(5), smi(2)]);
    f.put_u64(script, f.l.script_line_ends, bad);
    assert_eq!(read_script(&f, &f.l, script).unwrap().line_ends_from, LineEndsFrom::Source);
    // No readable source, no line ends: a script without lines.
    f.put_u64(script, f.l.script_source, f.undefined());
    let s3 = read_script(&f, &f.l, script).unwrap();
    assert_eq!((s3.line_ends_from, s3.line_of(3)), (LineEndsFrom::None, None));
}

/// A compiled function: SFI → ScopeInfo (name, positions) and Script; its JSFunction (a class
/// constructor's type, JS_FUNCTION_TYPE + 15); a bytecode offset's line.
#[test]
fn sfi_with_scope_info() {
    let f = Fake::new();
    let l = &f.l;
    let source = "'use strict';\nclass Store {\n  remember(n) {\n    return n + 1;\n  }\n}\n";
    let script = f.obj(l.type_script, 128);
    f.put_u64(script, l.script_name, f.seq("/app/store.js"));
    f.put_u64(script, l.script_source, f.seq(source));
    f.put_u64(script, l.script_line_ends, f.undefined());
    let start = source.find("(n)").unwrap() as i32;
    let end = source.rfind("}\n}").unwrap() as i32 + 1;
    // flags, parameter count, 1 context local (name, info), function variable (name, slot),
    // inferred name (undefined), positions.
    let undefined = f.undefined();
    let slots = [smi(0x1234), smi(1), smi(1), f.seq("local"), smi(7), f.seq("remember"), smi(-1), undefined, smi(start), smi(end)];
    let si = f.obj(l.type_scope_info, 8 + 8 * (slots.len() + 12));
    for (i, &v) in slots.iter().enumerate() {
        f.put_u64(si, 8 + 8 * i as u64, v);
    }
    let sfi = f.obj(l.type_sfi, 64);
    f.put_u64(sfi, l.sfi_name_or_scope_info, si);
    f.put_u64(sfi, l.sfi_script, script);
    let name = name_sfi(&f, l, untag(sfi)).unwrap();
    assert_eq!((name.name.as_str(), name.name_from), ("remember", NameFrom::ScopeInfo));
    assert_eq!(name.file(), Some("/app/store.js"));
    assert_eq!((name.start_position, name.start_line), (Some(start as u32), Some(3)));
    assert_eq!(name.tag, tag_of(si));
    assert_eq!(name_tag(&f, l, sfi).unwrap(), name.tag);

    let function = f.obj(l.type_js_function_first + 15, 64);
    f.put_u64(function, l.js_function_shared, sfi);
    assert_eq!(sfi_of_function(&f, l, function).unwrap(), sfi);
    let not_function = f.obj(l.type_js_function_last + 1, 64);
    f.put_u64(not_function, l.js_function_shared, sfi);
    assert!(sfi_of_function(&f, l, not_function).is_err());
    f.put_u64(function, l.js_function_shared, script);
    assert!(sfi_of_function(&f, l, function).is_err(), "shared must be an SFI");

    // Bytecode: offset 0 at `remember`'s start, offset 4 at `return n + 1` (line 4).
    let ret = source.find("return").unwrap() as u32;
    let table = positions::tests::encode(&[(0, true, positions::tests::raw(start as u32, 0)), (4, true, positions::tests::raw(ret, 0))]);
    let spt = f.obj(l.type_byte_array, 16 + table.len());
    f.put_u64(spt, l.fixed_array_length, smi(table.len() as i32));
    f.put(untag(spt) + l.fixed_array_data, &table);
    let bytecode = f.obj(l.type_bytecode_array, 64);
    f.put_u64(bytecode, l.bytecode_source_positions, spt);
    f.put_u64(sfi, l.sfi_function_data, bytecode);
    assert_eq!(line_at_bytecode_offset(&f, l, sfi, &name, 2).unwrap(), Some(3));
    assert_eq!(line_at_bytecode_offset(&f, l, sfi, &name, 6).unwrap(), Some(4));
    // Baseline code in function_data: its deoptimization_data slot holds the bytecode.
    let code = f.obj(l.type_code, 64);
    f.put_u64(code, l.code_deoptimization_data, bytecode);
    f.put_u64(sfi, l.sfi_function_data, code);
    assert_eq!(line_at_bytecode_offset(&f, l, sfi, &name, 6).unwrap(), Some(4));
    // No table collected yet: the function's first line.
    f.put_u64(bytecode, l.bytecode_source_positions, undefined);
    assert_eq!(line_at_bytecode_offset(&f, l, sfi, &name, 6).unwrap(), Some(3));
}

/// A ScopeInfo with 75 context locals or more keeps their names in one hash table slot; the
/// name is then found after that slot and the locals' infos.
#[test]
fn scope_info_with_many_locals() {
    let f = Fake::new();
    let l = &f.l;
    let ncl = 80;
    let table = f.fixed_array(l.type_fixed_array, &[]);
    let mut slots = vec![smi(0), smi(0), smi(ncl), table];
    slots.extend((0..ncl).map(|i| smi(i * 8)));
    slots.extend([f.seq("manyLocals"), smi(-1), f.undefined(), smi(40), smi(900)]);
    let si = f.obj(l.type_scope_info, 8 + 8 * (slots.len() + 12));
    for (i, &v) in slots.iter().enumerate() {
        f.put_u64(si, 8 + 8 * i as u64, v);
    }
    let facts = read_scope_info(&f, l, si).unwrap();
    assert_eq!((facts.name.as_deref(), facts.positions), (Some("manyLocals"), Some((40, 900))));
    // A garbage count is refused.
    f.put_u64(si, 8 + 8 * l.scope_info_ncontextlocals, smi(-3));
    assert!(read_scope_info(&f, l, si).is_err());
}

/// Names as strings (not compiled yet), anonymous functions, scripts cached and revalidated.
#[test]
fn sfi_names_and_script_cache() {
    let f = Fake::new();
    let l = &f.l;
    let script = f.obj(l.type_script, 128);
    f.put_u64(script, l.script_name, f.seq("/app/a.js"));
    f.put_u64(script, l.script_source, f.seq("x\ny\n"));
    let sfi = f.obj(l.type_sfi, 64);
    f.put_u64(sfi, l.sfi_name_or_scope_info, f.cons(f.seq("leaky"), f.seq("Handler")));
    f.put_u64(sfi, l.sfi_script, script);
    let mut cache = ScriptCache::default();
    let n = name_sfi_cached(&f, l, sfi, &mut cache).unwrap();
    assert_eq!((n.name.as_str(), n.name_from, n.file(), n.start_line), ("leakyHandler", NameFrom::String, Some("/app/a.js"), None));
    assert_eq!(cache.len(), 1);
    // Same script: the cached one (same Arc).
    let again = name_sfi_cached(&f, l, sfi, &mut cache).unwrap();
    assert!(Arc::ptr_eq(n.script.as_ref().unwrap(), again.script.as_ref().unwrap()));
    // Another script at the same address: read again.
    f.put_u64(script, l.script_name, f.seq("/app/b.js"));
    let moved = name_sfi_cached(&f, l, sfi, &mut cache).unwrap();
    assert_eq!(moved.file(), Some("/app/b.js"));

    // Anonymous: a SMI sentinel, or an empty name; no script (undefined).
    f.put_u64(sfi, l.sfi_name_or_scope_info, smi(0));
    f.put_u64(sfi, l.sfi_script, f.undefined());
    let anon = name_sfi(&f, l, sfi).unwrap();
    assert_eq!((anon.name.as_str(), anon.name_from, anon.script.is_none()), ("(anonymous)", NameFrom::Anonymous, true));
    f.put_u64(sfi, l.sfi_name_or_scope_info, f.seq(""));
    assert_eq!(name_sfi(&f, l, sfi).unwrap().name_from, NameFrom::Anonymous);
    // Not an SFI.
    assert!(matches!(name_sfi(&f, l, script), Err(HeapError::WrongType { .. })));
}

/// Garbage everywhere: every reader returns (an error, mostly), none panics.
#[test]
fn garbage_never_panics() {
    let f = Fake::new();
    let l = f.l.clone();
    // Some real maps among the garbage, so type checks sometimes pass.
    let types = [l.type_sfi, l.type_script, l.type_scope_info, l.type_fixed_array, 40, 41, 42, 35, 37, 45, 33];
    let maps: Vec<u64> = types.iter().map(|&t| f.map(t)).collect();
    let region = f.alloc(1 << 16);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..(1u64 << 13) {
        let r = next();
        let v = match r % 5 {
            0 => maps[(r >> 8) as usize % maps.len()],
            1 => (region + (r >> 8) % (1 << 16)) | 1,
            2 => smi((r >> 40) as i32 % 200),
            3 => r,
            _ => (r >> 16) & 0xff,
        };
        f.put_u64(region, 8 * i, v);
    }
    for k in 0..4096u64 {
        let p = (region + 8 * k) | 1;
        let _ = name_sfi(&f, &l, p);
        let _ = read_script(&f, &l, p);
        let _ = read_scope_info(&f, &l, p);
        let _ = read_string(&f, &l, p, MAX_NAME_UNITS);
        let _ = strings::line_ends(&f, &l, p, 1 << 12);
        let _ = sfi_of_function(&f, &l, p);
        let _ = positions::sfi_bytecode_array(&f, &l, p);
    }
}
