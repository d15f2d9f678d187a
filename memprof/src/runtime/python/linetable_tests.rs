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

    /// What both ground-truth scripts start with: CPython's C answer (`PyCode_Addr2Line`, as
    /// `a2l`) and its Python-level one (`py_lines(co)`: the line of every code unit).
    pub(crate) const PY_TRUTH_PRELUDE: &str = r#"
import sys, json, ctypes, dis
minor = sys.version_info[1]
a2l = ctypes.pythonapi.PyCode_Addr2Line
a2l.argtypes = [ctypes.py_object, ctypes.c_int]
a2l.restype = ctypes.c_int

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

"#;

    /// Prints the ground truth as JSON (see the module comment).
    const TRUTH: &str = r#"
import importlib.util

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
        let script = format!("{PY_TRUTH_PRELUDE}FIXTURE = {:?}\n{TRUTH}", FIXTURE);
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
