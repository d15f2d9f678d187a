//! CPython's line number tables: from an instruction offset to a source line, in the three
//! formats CPython 3.9–3.14 use.
//!
//! Each walk is a transcription of CPython's own `PyCode_Addr2Line` (`Objects/codeobject.c`) for
//! its version, so that memprof reports the line a traceback would; the formats are described
//! in CPython's `Objects/lnotab_notes.txt` (3.9, 3.10) and `Objects/locations.md` (3.11+). The
//! tables come from another process's memory: every walk is bounded by the table, uses no
//! unchecked indexing and saturating arithmetic, and answers `None` when it cannot say.
//!
//! Compared with the OpenTelemetry eBPF profiler (`interpreter/python/python.go`, read at
//! b442421a): its `mapByteCodeIndexToLine` (3.9) matches [`LineTable::Lnotab`]; its
//! `walkLineTable` (3.10) iterates over only half the table and so loses late lines, and its
//! `walkLocationTable` (3.11+) resets the line on a "no location" entry, where CPython keeps the
//! running line (later deltas apply to it); neither of those is copied here. The varint
//! readers follow CPython's `scan_varint` / `scan_signed_varint`, as `readVarint` /
//! `readSignedVarint` there do.

/// A code object's line table, as read from the process (the version picks the format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// 3.9: `co_lnotab`, pairs of (bytecode offset delta in bytes, line delta).
    Lnotab(Vec<u8>),
    /// 3.10: `co_linetable`, pairs of (range length in bytes, line delta or -128: no line).
    Lines310(Vec<u8>),
    /// 3.11+: `co_linetable`, the location table (entries of 1 to 8 code units).
    Locations(Vec<u8>),
}

/// Bytes per code unit (`sizeof(_Py_CODEUNIT)`): the 3.9 and 3.10 tables count bytes.
const UNIT: u64 = 2;

impl LineTable {
    /// Which format 3.`minor` uses.
    pub fn for_minor(minor: u32, table: Vec<u8>) -> LineTable {
        match minor {
            0..=9 => LineTable::Lnotab(table),
            10 => LineTable::Lines310(table),
            _ => LineTable::Locations(table),
        }
    }

    /// The raw table.
    pub fn bytes(&self) -> &[u8] {
        match self {
            LineTable::Lnotab(t) | LineTable::Lines310(t) | LineTable::Locations(t) => t,
        }
    }

    /// The source line of the instruction `instr_units` code units from the start of the
    /// bytecode, for a code object whose `co_firstlineno` is `firstlineno`: what
    /// `PyCode_Addr2Line(co, instr_units * 2)` returns, `None` where it returns -1 (the
    /// instruction has no line, or the offset is past the table) or a negative line.
    pub fn line(&self, firstlineno: u32, instr_units: u32) -> Option<u32> {
        let addrq = u64::from(instr_units) * UNIT;
        let first = i64::from(firstlineno);
        let line = match self {
            LineTable::Lnotab(t) => Some(lnotab_line(t, first, addrq)),
            LineTable::Lines310(t) => lines310_line(t, first, addrq),
            LineTable::Locations(t) => locations_line(t, first, addrq),
        }?;
        u32::try_from(line).ok()
    }
}

/// 3.9: CPython 3.9's `PyCode_Addr2Line` (`Objects/codeobject.c`), format in
/// `Objects/lnotab_notes.txt`:
///
/// ```c
/// while (--size >= 0) { addr += *p++; if (addr > addrq) break; line += (signed char)*p; p++; }
/// ```
///
/// Address deltas are unsigned bytes, line deltas signed bytes (since 3.6); the line is always
/// defined (the last one reached).
fn lnotab_line(t: &[u8], first: i64, addrq: u64) -> i64 {
    let mut addr = 0u64;
    let mut line = first;
    for pair in t.chunks_exact(2) {
        let &[a, l] = pair else { break };
        addr = addr.saturating_add(u64::from(a));
        if addr > addrq {
            break;
        }
        line = line.saturating_add(i64::from(l as i8));
    }
    line
}

/// 3.10: `PyCode_Addr2Line` → `_PyCode_CheckLineNumber` → `PyLineTable_NextAddressRange` →
/// `advance` (CPython 3.10 `Objects/codeobject.c`), format in `Objects/lnotab_notes.txt`.
///
/// Each pair (sdelta: unsigned byte, ldelta: signed byte) is the next address range
/// `[end, end + sdelta)` in bytes; `ldelta` is added to the running line unless it is -128,
/// which marks the range as having no line (and leaves the running line alone). Empty ranges
/// are skipped (they only carry line deltas too large for one byte). The answer is the line of
/// the first non-empty range that ends past `addrq` (ranges are contiguous from 0, so it
/// starts at or before `addrq`); none if the table ends first.
fn lines310_line(t: &[u8], first: i64, addrq: u64) -> Option<i64> {
    let mut end = 0u64;
    let mut computed = first;
    for pair in t.chunks_exact(2) {
        let &[sdelta, ldelta] = pair else { break };
        let ldelta = ldelta as i8;
        let start = end;
        end = end.saturating_add(u64::from(sdelta));
        let line = if ldelta == -128 {
            None
        } else {
            computed = computed.saturating_add(i64::from(ldelta));
            Some(computed)
        };
        if start != end && end > addrq {
            return line;
        }
    }
    None
}

/// The location table's entry kinds (`_PyCodeLocationInfoKind`, CPython `Include/cpython/code.h`
/// 3.11, `Include/internal/pycore_code.h` later).
mod kind {
    /// 0–9: `PY_CODE_LOCATION_INFO_SHORT0..9`: same line, one byte of columns.
    pub const ONE_LINE0: u8 = 10;
    pub const ONE_LINE1: u8 = 11;
    pub const ONE_LINE2: u8 = 12;
    pub const NO_COLUMNS: u8 = 13;
    pub const LONG: u8 = 14;
    pub const NONE: u8 = 15;
}

/// A cursor over a location table entry's varints (CPython's `scan_varint`: little-endian 6-bit
/// chunks, bit 6 set on every chunk but the last). Stops at the end of the table; chunks past
/// 32 bits are dropped (CPython's `unsigned int` would overflow there: garbage either way).
fn scan_varint(t: &[u8], pos: &mut usize) -> u32 {
    let mut val = 0u32;
    let mut shift = 0u32;
    while let Some(&b) = t.get(*pos) {
        *pos += 1;
        if shift < 32 {
            val |= u32::from(b & 63) << shift;
        }
        if b & 64 == 0 {
            break;
        }
        shift = shift.saturating_add(6);
    }
    val
}

/// CPython's `scan_signed_varint`: the low bit of the unsigned varint is the sign.
fn scan_signed_varint(t: &[u8], pos: &mut usize) -> i64 {
    let uval = scan_varint(t, pos);
    let mag = i64::from(uval >> 1);
    if uval & 1 != 0 {
        -mag
    } else {
        mag
    }
}

/// 3.11+: `PyCode_Addr2Line` → `_PyCode_CheckLineNumber` → `_PyLineTable_NextAddressRange` →
/// `advance` / `get_line_delta` / `is_no_line_marker` (CPython 3.11–3.14
/// `Objects/codeobject.c`), format in `Objects/locations.md`.
///
/// An entry starts with a byte with bit 7 set: bits 3–6 are its kind, bits 0–2 its length in
/// code units minus one. Kinds 0–9 (short form: one byte of columns follows) and 10–12 (one-line
/// form: line delta `kind - 10`, two column bytes) are read from the first byte alone; 13 (no
/// columns) and 14 (long form: then end line delta and columns as three varints) start with a
/// signed varint line delta; 15 is "no location": the range has no line, and the running line
/// is kept. As in CPython, the next entry is the next byte with bit 7 set (the bytes between
/// have bit 7 clear), so only the line delta is decoded.
fn locations_line(t: &[u8], first: i64, addrq: u64) -> Option<i64> {
    let mut pos = 0usize;
    let mut end = 0u64;
    let mut computed = first;
    while let Some(&b) = t.get(pos) {
        if b & 0x80 == 0 {
            // Only possible at the start (later entries are found by this bit): not a table.
            return None;
        }
        let code = (b >> 3) & 15;
        let mut p = pos + 1;
        let delta = match code {
            kind::NO_COLUMNS | kind::LONG => scan_signed_varint(t, &mut p),
            kind::ONE_LINE1 => 1,
            kind::ONE_LINE2 => 2,
            kind::ONE_LINE0 | kind::NONE => 0,
            _ => 0,
        };
        computed = computed.saturating_add(delta);
        let line = if code == kind::NONE { None } else { Some(computed) };
        end = end.saturating_add((u64::from(b & 7) + 1) * UNIT);
        if end > addrq {
            return line;
        }
        pos += 1;
        while t.get(pos).is_some_and(|&c| c & 0x80 == 0) {
            pos += 1;
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    //! Ground truth from the interpreters themselves: each prints, for every code object of a
    //! fixture module, generated functions with large line deltas, and a few of its own stdlib
    //! modules, the line table and the line of every code unit, as CPython's C function
    //! `PyCode_Addr2Line` (through `ctypes.pythonapi`) and its Python-level API (`co_positions`
    //! 3.11+, `co_lines` 3.10, `dis.findlinestarts` 3.9) give it. Both must match ours.

    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// The CPython interpreters the Python tests run, as (label, argv prefix):
    /// - the host's `/usr/bin/python3.11` and `python3` (from `PATH`), where present;
    /// - `$MEMPROF_PY_ROOTS/*/usr/bin/python3.N` (default: `target/python-roots`, where the integration tests build them; a fresh checkout has none yet and runs the host's two):
    ///   distribution root file systems (e.g. Debian bullseye for 3.9), each run through
    ///   `chroot <root> /usr/bin/python3.N` (the tests run as root).
    ///
    /// Tests fail when none is found.
    pub(crate) fn interpreters() -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        if Path::new("/usr/bin/python3.11").exists() {
            out.push(("host /usr/bin/python3.11".to_string(), vec!["/usr/bin/python3.11".to_string()]));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path).any(|d| d.join("python3").exists()) {
            out.push(("host python3".to_string(), vec!["python3".to_string()]));
        }
        let roots = std::env::var_os("MEMPROF_PY_ROOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/python-roots")));
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&roots)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        dirs.sort();
        for root in dirs {
            let Ok(bins) = std::fs::read_dir(root.join("usr/bin")) else { continue };
            let mut names: Vec<String> = bins
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix("python3.")
                        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect();
            names.sort();
            for name in names {
                let label = format!("{} {name}", root.file_name().unwrap_or_default().to_string_lossy());
                let argv = vec![
                    "chroot".to_string(),
                    root.to_string_lossy().into_owned(),
                    format!("/usr/bin/{name}"),
                ];
                out.push((label, argv));
            }
        }
        assert!(
            !out.is_empty(),
            "no Python interpreter found (host python3, /usr/bin/python3.11, $MEMPROF_PY_ROOTS)"
        );
        out
    }

    /// Panics with a clear message unless the tests run as root (chroot, reading other
    /// processes' memory).
    pub(crate) fn require_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("the Python tests must run as root (chroot into the interpreter roots, process_vm_readv)");
        }
    }

    /// Runs `script` (on stdin) under the interpreter `argv`; its stdout, or a panic with its
    /// stderr.
    fn run_script(label: &str, argv: &[String], script: &str) -> String {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot run {argv:?}: {e}"));
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write script");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{label}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// The fixture module: most constructs the compiler has (3.9-compatible syntax).
    const FIXTURE: &str = r##""""A module exercising the line table: every construct below compiles on 3.9–3.14."""
import functools


def simple(a, b):
    c = a + b
    return c * 2


def with_gaps(x):

    y = x + 1



    z = y * 2
    # a comment


    return z


def branches(n):
    if n > 10:
        r = "big"
    elif n < 0:
        r = "negative"
    else:
        r = "small"
    for i in range(n):
        if i % 2:
            continue
        r += str(i)
    while n > 0:
        n -= 3
        if n == 4:
            break
    else:
        r += "!"
    return r


def comprehensions(xs):
    a = [x * 2 for x in xs if x]
    b = {x: x + 1 for x in xs}
    c = {x for x in xs}
    d = list(x for x in xs)
    e = [[y for y in range(x)]
         for x in xs
         if x > 1]
    return a, b, c, d, e


def nested(x):
    def inner(y):
        def innermost(z):
            return x + y + z
        return innermost
    return inner(x)(x)


def lambdas(xs):
    f = lambda v: v + 1
    g = lambda v, w=2: (
        v * w
    )
    return sorted(xs, key=lambda v: -v), f, g


def exceptions(x):
    try:
        y = 1 / x
    except ZeroDivisionError as e:
        y = str(e)
    except (TypeError, ValueError):
        y = None
    else:
        y = y * 2
    finally:
        x = 0
    try:
        try:
            raise KeyError(x)
        finally:
            x += 1
    except KeyError:
        pass
    return y


def decorator(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


@decorator
@functools.lru_cache(maxsize=None)
def decorated(
    a,
    b=3,
):
    return a ** b


class Klass:
    attr = [1, 2, 3]

    def __init__(self, v):
        self.v = v

    @property
    def prop(self):
        return self.v

    @staticmethod
    def static(a, *, b=1):
        return a - b

    class Inner:
        def method(self):
            return [self for _ in range(3)]


def generators(n):
    yield 1
    yield from range(n)
    x = yield
    return x


async def coroutine(aw, it):
    r = await aw
    async for v in it:
        r += v
    async with aw as m:
        r += m
    return [v async for v in it]


def context(path):
    with open(path) as f, open(path) as g:
        data = f.read() + g.read()
    return data


def multiline_call(a, b, c):
    return simple(
        a,
        simple(b,
               c),
    ) + simple(a, b)


def fstrings_walrus(xs):
    if (n := len(xs)) > 3:
        return f"{n!r:>10} items: {xs[0]} ... {xs[-1]}"
    return f"{n}"


def globals_and_del(v):
    global GLOBAL_VALUE
    GLOBAL_VALUE = v
    w = [v]
    del w[0]
    assert not w, "should be empty"
    return GLOBAL_VALUE


def star_args(*args, **kwargs):
    a, *rest = args
    return {**kwargs, "a": a}, [*rest, *args]


def slices_and_subscripts(xs):
    xs[1:3] = xs[::2]
    xs[0] += 1
    return xs[-1], xs[1:], xs[::-1]


def chained(a, b, c):
    return a < b < c or (a is not b and c not in (a, b))


def early_returns(x):
    if x:
        return 1

    return 2


GLOBAL_VALUE = [f(1) for f in (lambda v: v,)]
if GLOBAL_VALUE:
    print_it = lambda *a: None
"##;

    /// Prints the ground truth as JSON (see the module comment).
    const TRUTH: &str = r#"
import sys, json, ctypes, dis, importlib.util
minor = sys.version_info[1]
a2l = ctypes.pythonapi.PyCode_Addr2Line
a2l.argtypes = [ctypes.py_object, ctypes.c_int]
a2l.restype = ctypes.c_int

def generated():
    L = ["def far_apart(x):", "    y = x"]
    L += [""] * 300
    L += ["    y += 1"]
    L += ["    # a comment"] * 600
    L += ["    while y < 10 ** 6:", "        y += 1"] + [""] * 400 + ["        y *= 2"]
    L += ["    z = [" + ", ".join("x + %d" % i for i in range(300)) + "]"]
    L += ["    w = far_apart(", "        y,"] + [""] * 300 + ["        z)"]
    L += ["    v = [x for x in z", ""] + [""] * 200 + ["         if x]"]
    L += ["    return w"]
    L += [""] * 70000
    L += ["def very_far(a):", "    b = a"] + [""] * 100000 + ["    return b"]
    return "\n".join(L) + "\n"

MATCH = '''
def matcher(v):
    match v:
        case [a, b, *rest]:
            return a + b
        case {"k": k}:
            return k
        case int(x) if x > 3:
            return x
        case _:
            return None
'''

EXCEPT_STAR = '''
def star():
    try:
        raise ExceptionGroup("g", [ValueError(1)])
    except* ValueError as e:
        r = e
    except* TypeError:
        r = None
    return r
'''

def codes(co):
    yield co
    for c in co.co_consts:
        if isinstance(c, type(co)):
            yield from codes(c)

def py_lines(co):
    n = len(co.co_code) // 2
    if minor >= 11:
        return [p[0] for p in co.co_positions()]
    out = [None] * n
    if minor == 10:
        for s, e, l in co.co_lines():
            for u in range(s // 2, min(e // 2, n)):
                out[u] = l
        return out
    starts = dict(dis.findlinestarts(co))
    cur = None
    for u in range(n):
        cur = starts.get(2 * u, cur)
        out[u] = cur
    return out

sources = [("fixture.py", FIXTURE), ("generated.py", generated())]
if minor >= 10:
    sources.append(("match.py", MATCH))
if minor >= 11:
    sources.append(("except_star.py", EXCEPT_STAR))
for m in ("inspect", "argparse", "dis", "typing"):
    path = importlib.util.find_spec(m).origin
    with open(path, encoding="utf-8") as f:
        sources.append((path, f.read()))
out = []
for fn, src in sources:
    for co in codes(compile(src, fn, "exec")):
        table = co.co_lnotab if minor < 10 else co.co_linetable
        n = len(co.co_code) // 2
        c = [a2l(co, 2 * u) for u in range(n)]
        out.append({"file": fn, "name": co.co_name, "first": co.co_firstlineno, "table": table.hex(),
                    "py": py_lines(co), "c": [None if l < 0 else l for l in c]})
print(json.dumps({"version": list(sys.version_info[:3]), "codes": out}))
"#;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
    }

    fn opt_lines(v: &serde_json::Value) -> Vec<Option<u32>> {
        v.as_array().expect("array").iter().map(|l| l.as_u64().map(|l| l as u32)).collect()
    }

    /// Every code unit of every code object, against CPython's C and Python answers.
    #[test]
    fn lines_match_every_interpreter() {
        require_root();
        let script = format!("FIXTURE = {:?}\n{TRUTH}", FIXTURE);
        let mut summary = Vec::new();
        for (label, argv) in interpreters() {
            let out = run_script(&label, &argv, &script);
            let truth: serde_json::Value = serde_json::from_str(&out).expect("json");
            let v = &truth["version"];
            let minor = v[1].as_u64().expect("minor") as u32;
            if !(9..=14).contains(&minor) {
                eprintln!("{label}: 3.{minor} is not supported, skipped");
                continue;
            }
            let (mut units, mut bad_c, mut bad_py, mut c_vs_py) = (0usize, Vec::new(), Vec::new(), 0usize);
            let codes = truth["codes"].as_array().expect("codes");
            for co in codes {
                let first = co["first"].as_u64().expect("first") as u32;
                let table = LineTable::for_minor(minor, unhex(co["table"].as_str().expect("table")));
                let c = opt_lines(&co["c"]);
                let py = opt_lines(&co["py"]);
                assert_eq!(c.len(), py.len(), "{label}: {}", co["name"]);
                for (u, (&c, &py)) in c.iter().zip(&py).enumerate() {
                    units += 1;
                    let ours = table.line(first, u as u32);
                    let at = || {
                        format!(
                            "{}:{} unit {u}: ours {ours:?}, C {c:?}, Python {py:?}",
                            co["file"], co["name"]
                        )
                    };
                    if ours != c {
                        bad_c.push(at());
                    }
                    if ours != py {
                        bad_py.push(at());
                    }
                    c_vs_py += usize::from(c != py);
                }
                // Past the end: CPython 3.10+ says "no line" (3.9 keeps the last line).
                if minor >= 10 {
                    assert_eq!(table.line(first, c.len() as u32 + 64), None, "{label}: {}", co["name"]);
                }
            }
            assert!(
                bad_c.is_empty(),
                "{label} ({v}): {} of {units} units differ from PyCode_Addr2Line:\n{}",
                bad_c.len(),
                bad_c[..bad_c.len().min(20)].join("\n")
            );
            assert!(
                bad_py.is_empty(),
                "{label} ({v}): {} of {units} units differ from the Python API:\n{}",
                bad_py.len(),
                bad_py[..bad_py.len().min(20)].join("\n")
            );
            summary.push(format!("{label} ({v}): {} code objects, {units} code units, all match ({c_vs_py} C/Python disagreements)", codes.len()));
        }
        eprintln!("{}", summary.join("\n"));
        assert!(!summary.is_empty(), "no supported interpreter was exercised");
    }

    /// Hand-made tables: the documented encodings, and their edge cases.
    #[test]
    fn hand_made_tables() {
        // 3.9: (2 bytes, +1), (4 bytes, -1 as 0xff), (250, +127).
        let t = LineTable::Lnotab(vec![2, 1, 4, 0xff, 250, 127]);
        assert_eq!(t.line(10, 0), Some(10));
        assert_eq!(t.line(10, 1), Some(11));
        assert_eq!(t.line(10, 3), Some(10));
        assert_eq!(t.line(10, 1000), Some(137));
        assert_eq!(LineTable::Lnotab(vec![]).line(7, 5), Some(7));
        // 3.10: [0,4) +1, [4,4) +5 (empty), [4,6) no line, [6,10) +0.
        let t = LineTable::Lines310(vec![4, 1, 0, 5, 2, 0x80, 4, 0]);
        assert_eq!(t.line(1, 0), Some(2));
        assert_eq!(t.line(1, 1), Some(2));
        assert_eq!(t.line(1, 2), None);
        assert_eq!(t.line(1, 3), Some(7));
        assert_eq!(t.line(1, 4), Some(7));
        assert_eq!(t.line(1, 5), None);
        // 3.11+: one-line form +1 (2 units), no location (1 unit: the running line is kept),
        // no-columns form -3 (signed varint 7) over 1 unit, long form +100 (varint 200:
        // 0x48 0x03), short form (8 units).
        #[rustfmt::skip]
        let t = LineTable::Locations(vec![
            0x80 | (11 << 3) | 1, 0, 0,
            0x80 | (15 << 3),
            0x80 | (13 << 3), 7,
            0x80 | (14 << 3), 0x48, 0x03, 0, 1, 2,
            0x80 | (3 << 3) | 7, 9,
        ]);
        let want = [Some(6), Some(6), None, Some(3), Some(103), Some(103), Some(103)];
        for (u, w) in want.iter().enumerate() {
            assert_eq!(t.line(5, u as u32), *w, "unit {u}");
        }
        assert_eq!(t.line(5, 12), Some(103));
        assert_eq!(t.line(5, 13), None);
        // Negative lines are no lines.
        assert_eq!(LineTable::Lines310(vec![2, 0x81]).line(3, 0), None);
        assert_eq!(LineTable::Locations(vec![0x80 | (13 << 3), 0x0b]).line(3, 0), None);
        // Not a location table.
        assert_eq!(LineTable::Locations(vec![0x10, 0x80]).line(3, 0), None);
    }

    /// Garbage never panics (nor overflows, in debug builds).
    #[test]
    fn garbage_tables_do_not_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 600) as usize;
            let mut t: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 {
                // Long varint runs.
                t.iter_mut().skip(1).for_each(|b| *b |= 0x40);
            }
            for table in
                [LineTable::Lnotab(t.clone()), LineTable::Lines310(t.clone()), LineTable::Locations(t)]
            {
                for u in [0, 1, 7, 100, 1000, u32::MAX / 2, u32::MAX] {
                    let _ = table.line(u32::MAX, u);
                    let _ = table.line(0, u);
                }
            }
        }
        let max = LineTable::Lnotab([0, 127].repeat(1 << 19));
        assert_eq!(max.line(u32::MAX, 0), None);
    }
}
