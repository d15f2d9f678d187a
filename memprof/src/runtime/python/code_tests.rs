    use super::super::layout::{layout, SUPPORTED};
    use super::super::linetable::tests::{interpreters, require_root, PY_TRUTH_PRELUDE};
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, Command, Stdio};

    /// Type addresses for objects forged in this process.
    const FAKE: TypeAddrs =
        TypeAddrs { code: 0x7f00_1111_0000, unicode: 0x7f00_2222_0000, bytes: 0x7f00_3333_0000 };

    fn put(buf: &mut [u8], off: u64, v: &[u8]) {
        buf[off as usize..off as usize + v.len()].copy_from_slice(v);
    }

    /// A compact str object as CPython lays it out: `kind` bytes per char, terminating NUL.
    fn fake_str(l: &Layout, chars: &[u32], kind: u32, ascii: bool) -> Vec<u8> {
        let data = if ascii { l.str_ascii_size } else { l.str_compact_size };
        let mut b = vec![0u8; data as usize + (chars.len() + 1) * kind as usize];
        put(&mut b, l.ob_type, &FAKE.unicode.to_le_bytes());
        put(&mut b, l.str_length, &(chars.len() as u64).to_le_bytes());
        let st = (kind << 2) | (1 << 5) | if ascii { 1 << 6 } else { 0 };
        put(&mut b, l.str_state, &st.to_le_bytes());
        for (i, &c) in chars.iter().enumerate() {
            put(&mut b, data + (i as u64) * u64::from(kind), &c.to_le_bytes()[..kind as usize]);
        }
        b
    }

    fn text(l: &Layout, s: &str) -> Vec<u8> {
        let chars: Vec<u32> = s.chars().map(u32::from).collect();
        let max = chars.iter().copied().max().unwrap_or(0);
        let kind = if max < 0x100 {
            1
        } else if max < 0x10000 {
            2
        } else {
            4
        };
        fake_str(l, &chars, kind, max < 0x80)
    }

    fn fake_bytes(l: &Layout, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; l.bytes_sval as usize + data.len() + 1];
        put(&mut b, l.ob_type, &FAKE.bytes.to_le_bytes());
        put(&mut b, l.ob_size, &(data.len() as u64).to_le_bytes());
        put(&mut b, l.bytes_sval, data);
        b
    }

    fn addr(b: &[u8]) -> u64 {
        b.as_ptr() as u64
    }

    /// A code object header pointing at the given objects.
    fn fake_code(l: &Layout, first: u32, name: u64, qualname: u64, filename: u64, table: u64) -> Vec<u8> {
        let mut b = vec![0u8; l.co_read as usize];
        put(&mut b, l.ob_type, &FAKE.code.to_le_bytes());
        put(&mut b, l.co_firstlineno, &first.to_le_bytes());
        put(&mut b, l.co_name, &name.to_le_bytes());
        if let Some(q) = l.co_qualname {
            put(&mut b, q, &qualname.to_le_bytes());
        }
        put(&mut b, l.co_filename, &filename.to_le_bytes());
        put(&mut b, l.co_linetable, &table.to_le_bytes());
        b
    }

    /// Objects forged in this process's memory, read back through `process_vm_readv`: every
    /// kind of string, and every way the objects can be wrong.
    #[test]
    fn forged_objects() {
        let mem = ProcMem::new(std::process::id());
        for minor in SUPPORTED {
            let l = layout(minor).expect("layout");
            let name = text(&l, "grüße");
            let qual = text(&l, "Ω.функция");
            let file = text(&l, "/tmp/😀/ü.py");
            let tbl = match minor {
                9 => vec![0, 1, 4, 1],
                10 => vec![2, 1, 4, 1],
                _ => vec![0x80 | (11 << 3) | 1, 0, 0],
            };
            let table = fake_bytes(&l, &tbl);
            let code = fake_code(&l, 42, addr(&name), addr(&qual), addr(&file), addr(&table));
            let read = |c: &[u8], check| read_code(&mem, &l, &FAKE, addr(c), check);
            let info = read(&code, 42).unwrap_or_else(|e| panic!("3.{minor}: {e}"));
            assert_eq!(info.name, "grüße");
            assert_eq!(info.qualname, if minor >= 11 { "Ω.функция" } else { "grüße" });
            assert_eq!(info.filename, "/tmp/😀/ü.py");
            assert_eq!(info.firstlineno, 42);
            assert_eq!(info.table.bytes(), &tbl[..]);
            assert_eq!(info.line(0), Some(43));
            assert_eq!(read(&code, PY_NO_CHECK).as_ref(), Ok(&info));
            assert!(matches!(read(&code, 41), Err(CodeError::Stale { found: 42, expected: 41, .. })));

            // The code object itself.
            let mut c = code.clone();
            put(&mut c, l.ob_type, &FAKE.unicode.to_le_bytes());
            assert!(matches!(read(&c, 42), Err(CodeError::NotCode { .. })));
            let mut c = code.clone();
            put(&mut c, l.co_firstlineno, &(-5i32).to_le_bytes());
            assert!(matches!(read(&c, PY_NO_CHECK), Err(CodeError::BadCode { .. })));
            for a in [0, 8, u64::MAX - 16, u64::MAX, 0xffff_8000_0000_0000] {
                assert!(
                    matches!(read_code(&mem, &l, &FAKE, a, 1), Err(CodeError::Unreadable { .. })),
                    "{a:#x}"
                );
            }

            // Strings.
            let s = |b: &[u8]| read_str(&mem, &l, &FAKE, addr(b));
            assert_eq!(s(&fake_str(&l, &[0xd800, 0x41], 2, false)).as_deref(), Ok("\u{fffd}A"));
            assert_eq!(s(&fake_str(&l, &[0x11_0000, 0x1f600], 4, false)).as_deref(), Ok("\u{fffd}😀"));
            assert_eq!(s(&fake_str(&l, &[], 1, true)).as_deref(), Ok(""));
            assert_eq!(s(&fake_str(&l, &[0x61; 4096], 1, true)).map(|t| t.len()), Ok(4096));
            let bad_str = |b: Vec<u8>, why: &str| {
                let r = s(&b);
                assert!(
                    matches!(&r, Err(CodeError::BadString { why: w, .. }) if *w == why),
                    "3.{minor} {why}: {r:?}"
                );
                // And the same string as a code object's name.
                let c = fake_code(&l, 42, addr(&b), addr(&qual), addr(&file), addr(&table));
                assert!(matches!(read(&c, 42), Err(CodeError::BadString { .. })), "3.{minor} {why}");
            };
            bad_str(fake_str(&l, &[0x61; 4097], 1, true), "too long");
            bad_str(fake_str(&l, &[0x61; 3], 3, false), "bad kind");
            bad_str(fake_str(&l, &[0x61; 3], 2, true), "bad kind");
            bad_str(fake_str(&l, &[0xe9, 0x61], 1, true), "non-ASCII byte in an ASCII string");
            let mut b = text(&l, "abc");
            put(&mut b, l.str_state, &(1u32 << 2).to_le_bytes());
            bad_str(b, "not a compact string");
            let mut b = text(&l, "abc");
            put(&mut b, l.str_length, &u64::MAX.to_le_bytes());
            bad_str(b, "too long");
            let mut b = text(&l, "abc");
            let n = b.len();
            b[n - 1] = b'x';
            bad_str(b, "no terminating NUL");
            bad_str(table.clone(), "not a str object");
            let c = fake_code(&l, 42, 0, addr(&qual), addr(&file), addr(&table));
            assert!(matches!(read(&c, 42), Err(CodeError::Unreadable { .. })));

            // Line tables.
            let bad_table = |b: Vec<u8>, why: &str| {
                let c = fake_code(&l, 42, addr(&name), addr(&qual), addr(&file), addr(&b));
                let r = read(&c, 42);
                assert!(
                    matches!(&r, Err(CodeError::BadLineTable { why: w, .. }) if *w == why),
                    "3.{minor} {why}: {r:?}"
                );
            };
            bad_table(name.clone(), "not a bytes object");
            let mut b = fake_bytes(&l, &[1, 2]);
            put(&mut b, l.ob_size, &u64::MAX.to_le_bytes());
            bad_table(b, "too large");
            let mut b = fake_bytes(&l, &[1, 2]);
            put(&mut b, l.ob_size, &(MAX_TABLE_BYTES + 1).to_le_bytes());
            bad_table(b, "too large");
            let mut b = fake_bytes(&l, &[1, 2]);
            let n = b.len();
            b[n - 1] = 7;
            bad_table(b, "no terminating NUL");
            if minor <= 10 {
                bad_table(fake_bytes(&l, &[1, 2, 3]), "odd length");
            }
            let big = fake_bytes(&l, &vec![0x80; MAX_TABLE_BYTES as usize]);
            let c = fake_code(&l, 42, addr(&name), addr(&qual), addr(&file), addr(&big));
            assert_eq!(read(&c, 42).map(|i| i.table.bytes().len()), Ok(MAX_TABLE_BYTES as usize));

            // Garbage: words that are often pointers to the objects above or the type values.
            let targets = [
                addr(&name),
                addr(&qual),
                addr(&file),
                addr(&table),
                addr(&code),
                FAKE.code,
                FAKE.unicode,
                FAKE.bytes,
            ];
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ u64::from(minor);
            let mut words = vec![0u64; 4096];
            for w in words.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *w = match x % 4 {
                    0 => targets[(x >> 8) as usize % targets.len()],
                    1 => x >> 40,
                    _ => x,
                };
            }
            let base = words.as_ptr() as u64;
            for i in 0..words.len() as u64 * 8 {
                let _ = read_code(&mem, &l, &FAKE, base + i, PY_NO_CHECK);
                let _ = read_str(&mem, &l, &FAKE, base + i);
            }
        }
    }

    /// The child: defines code objects of every kind the brief lists, prints what CPython
    /// says of them (JSON, one line), then sleeps until killed.
    const CHILD: &str = r#"
import time
SRC = '''
class Greeter:
    def hello(self, who):
        msg = "hi " + who

        return msg

def outer(x):
    def inner(y):
        return x + y
    return inner

def grüße(n):
    squares = [i * i for i in range(n)]
    return sum(j for j in squares)

def функция():
    return "ф"

def 𠀀𠀁(a,
        b):
    return (a,
            b)

lam = lambda v: v * 2
'''
FILE = "/tmp/ünïcödé/mödülé_😀.py"
mod = compile(SRC, FILE, "exec")
ns = {}
exec(mod, ns)

codes = [mod, ns["Greeter"].hello.__code__, ns["outer"](1).__code__, ns["grüße"].__code__,
         ns["функция"].__code__, ns["𠀀𠀁"].__code__, ns["lam"].__code__]
codes += [c for c in ns["grüße"].__code__.co_consts if isinstance(c, type(mod))]
out = []
for co in codes:
    n = len(co.co_code) // 2
    out.append({"id": id(co), "name": co.co_name, "qualname": getattr(co, "co_qualname", co.co_name),
                "filename": co.co_filename, "first": co.co_firstlineno,
                "name_ptr": id(getattr(co, "co_qualname", co.co_name)),
                "c": [None if l < 0 else l for l in (a2l(co, 2 * u) for u in range(n))],
                "py": py_lines(co)})
junk = [1, 2, 3]
text = "grüße Ω 😀"
freed = compile("def f():\n    pass\n", "freed.py", "exec")
freed_id = id(freed)
del freed
print(json.dumps({"version": list(sys.version_info[:3]), "code_type": id(type(mod)), "str_type": id(str),
                  "bytes_type": id(bytes), "codes": out, "list": id(junk), "str": id(text), "text": text,
                  "freed": freed_id}), flush=True)
time.sleep(600)
"#;

    /// Kills and reaps the child it holds (only that PID), however the test ends.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn u(v: &serde_json::Value) -> u64 {
        v.as_u64().expect("a number")
    }

    /// Live interpreters: every field of every code object, and the line of every code unit,
    /// read from the running child; garbage addresses in it fail cleanly.
    #[test]
    fn live_code_objects() {
        require_root();
        let mut summary = Vec::new();
        let script = format!("{PY_TRUTH_PRELUDE}{CHILD}");
        for (label, argv) in interpreters() {
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .args(["-c", script.as_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{label}: cannot run {argv:?}: {e}"));
            let mut child = Reap(child);
            let mut line = String::new();
            BufReader::new(child.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
            if line.is_empty() {
                let mut err = String::new();
                let _ = child.0.stderr.as_mut().expect("stderr").read_to_string(&mut err);
                panic!("{label}: the child printed nothing: {err}");
            }
            let j: serde_json::Value = serde_json::from_str(&line).expect("json");
            let minor = u(&j["version"][1]) as u32;
            let Some(l) = layout(minor) else {
                eprintln!("{label}: 3.{minor} is not supported, skipped");
                continue;
            };
            let types = TypeAddrs {
                code: u(&j["code_type"]),
                unicode: u(&j["str_type"]),
                bytes: u(&j["bytes_type"]),
            };
            let mem = ProcMem::new(child.0.id());
            let codes = j["codes"].as_array().expect("codes");
            let mut units = 0;
            for co in codes {
                let a = u(&co["id"]);
                let first = u(&co["first"]) as u32;
                let info = read_code(&mem, &l, &types, a, first)
                    .unwrap_or_else(|e| panic!("{label}: {}: {e}", co["qualname"]));
                assert_eq!(info.name, co["name"].as_str().expect("name"), "{label}");
                assert_eq!(info.qualname, co["qualname"].as_str().expect("qualname"), "{label}");
                assert_eq!(info.filename, co["filename"].as_str().expect("filename"), "{label}");
                assert_eq!(info.firstlineno, first, "{label}");
                // The tag the kernel records: from the pointer of the string the name is read from.
                assert_eq!(info.name_tag, memprof_common::python::py_name_tag(u(&co["name_ptr"])), "{label}");
                assert_eq!(read_code(&mem, &l, &types, a, PY_NO_CHECK).as_ref(), Ok(&info), "{label}");
                let stale = read_code(&mem, &l, &types, a, first + 1);
                assert!(matches!(stale, Err(CodeError::Stale { .. })), "{label}: {stale:?}");
                for key in ["c", "py"] {
                    let want = co[key].as_array().expect("lines");
                    for (i, w) in want.iter().enumerate() {
                        let w = w.as_u64().map(|w| w as u32);
                        assert_eq!(info.line(i as u32), w, "{label}: {} unit {i} ({key})", info.qualname);
                    }
                    units += want.len();
                }
            }
            // Garbage.
            let read = |a: u64| read_code(&mem, &l, &types, a, PY_NO_CHECK);
            assert!(matches!(read(0), Err(CodeError::Unreadable { .. })), "{label}");
            assert!(matches!(read(u(&j["list"])), Err(CodeError::NotCode { .. })), "{label}");
            assert!(matches!(read(u(&j["str"])), Err(CodeError::NotCode { .. })), "{label}");
            let freed = read(u(&j["freed"]));
            assert_eq!(
                read_str(&mem, &l, &types, u(&j["str"])).as_deref(),
                Ok(j["text"].as_str().expect("text")),
                "{label}"
            );
            assert!(
                matches!(read_str(&mem, &l, &types, u(&j["list"])), Err(CodeError::BadString { .. })),
                "{label}"
            );
            let first = u(&codes[1]["id"]);
            for off in 1..(l.co_read * 4) {
                let _ = read(first.wrapping_add(off));
                let _ = read(first.wrapping_sub(off));
                let _ = read_str(&mem, &l, &types, first.wrapping_add(off));
            }
            summary.push(format!(
                "{label} ({}): {} code objects, {units} units match; freed code object: {}",
                j["version"],
                codes.len(),
                match freed {
                    Ok(i) => format!("still reads as {}", i.qualname),
                    Err(e) => e.to_string(),
                }
            ));
        }
        eprintln!("{}", summary.join("\n"));
        assert!(!summary.is_empty(), "no supported interpreter was exercised");
    }
