//! Symbolization of real objects: separate debug files, stripped objects, demangling, perf maps
//! and the stack options. The C/C++ tests compile small programs; a missing gcc, g++ or
//! binutils fails them (they are never skipped).

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use object::{Object, ObjectSegment, ObjectSymbol};

use super::{root::RootDir, StackOpts, Symbolizer, JIT_MODULE, UNMAPPED_MODULE};
use crate::report::Frame;

/// A fresh temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("memprof-sym-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool (gcc, g++, binutils: installed by `cargo xtask setup`); a missing or failing
/// tool fails the test, it is never skipped.
fn run(cmd: &str, args: &[&str]) -> bool {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!("{cmd} {args:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run {cmd} (install it, e.g. with `cargo xtask setup`): {e}"),
    }
}

/// Compiles `src` (written to `dir/name.ext`) into `dir/name` with `compiler` and `flags`.
fn compile(dir: &Path, name: &str, ext: &str, compiler: &str, flags: &[&str], src: &str) -> Option<PathBuf> {
    let src_path = dir.join(format!("{name}.{ext}"));
    fs::write(&src_path, src).unwrap();
    let out = dir.join(name);
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-o", out.to_str().unwrap(), src_path.to_str().unwrap()]);
    run(compiler, &args).then_some(out)
}

/// The file offset of symbol `name` (whose name contains it, demangled or not) in `path`.
fn symbol_offset(path: &Path, name: &str) -> u64 {
    let data = fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let sym = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .find(|s| s.name().is_ok_and(|n| n == name || n.contains(name)) && s.size() > 0)
        .unwrap_or_else(|| panic!("no symbol {name} in {}", path.display()));
    let addr = sym.address();
    obj.segments()
        .find_map(|s| {
            let (off, size) = s.file_range();
            (s.address() <= addr && addr < s.address() + size).then(|| addr - s.address() + off)
        })
        .unwrap()
}

/// Frames for file offset `offset` of the object at `path`, symbolized the way process stacks
/// are (the object opened once, debug files searched in `root` and the symbolizer's dirs).
fn frames_at(s: &mut Symbolizer, path: &Path, root: Option<Arc<RootDir>>, offset: u64) -> (usize, Vec<Frame>) {
    let module = s.add_module(path.display().to_string(), Some(File::open(path).unwrap()), root);
    s.resolve(&[super::Location { module, offset }]);
    s.modules[module].used = true;
    (module, s.cache[&(module, offset)].clone())
}

const C_PROG: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void *leaky_alloc(size_t n) {
    void *p = malloc(n);
    printf("%p\n", p);
    return p;
}
int main(int argc, char **argv) { return leaky_alloc(argc * 16) == NULL; }
"#;

/// `prog` compiled with -g, split into `prog.debug` + a stripped `prog` with a debug link.
fn split_debug(dir: &Path) -> Option<(PathBuf, PathBuf, u64)> {
    let exe = compile(dir, "prog", "c", "gcc", &["-g", "-O1"], C_PROG)?;
    let offset = symbol_offset(&exe, "leaky_alloc");
    let debug = dir.join("prog.debug");
    let (e, d) = (exe.to_str().unwrap(), debug.to_str().unwrap());
    let ok = run("objcopy", &["--only-keep-debug", e, d])
        && run("strip", &["--strip-debug", "--strip-unneeded", e])
        && run("objcopy", &[&format!("--add-gnu-debuglink={d}"), e]);
    ok.then_some((exe, debug, offset))
}

/// Places a copy of `debug` at `dir/.build-id/xx/rest.debug` for the build id of `exe`.
fn place_by_build_id(exe: &Path, debug: &Path, dir: &Path) -> PathBuf {
    let info = super::elf_info::ElfInfo::read(&File::open(exe).unwrap()).unwrap();
    let id = info.build_id_hex().expect("gcc writes build ids");
    let p = dir.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::copy(debug, &p).unwrap();
    p
}

fn assert_leaky_alloc(frames: &[Frame]) {
    let f = frames.first().expect("a frame");
    assert_eq!(f.function, "leaky_alloc", "{frames:?}");
    assert!(f.file.as_deref().is_some_and(|p| p.ends_with("prog.c")), "{frames:?}");
    assert!(f.line.is_some_and(|l| (4..=7).contains(&l)), "{frames:?}");
}

#[test]
fn debug_file_next_to_the_object() {
    let dir = TempDir::new("sibling");
    let Some((exe, debug, offset)) = split_debug(&dir.0) else { return };
    let info = super::elf_info::ElfInfo::read(&File::open(&exe).unwrap()).unwrap();
    assert!(!info.has_debug_info && !info.has_symtab && info.debuglink.is_some());
    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_leaky_alloc(&frames);
    let src = s.module_sources();
    assert_eq!(src.len(), 1);
    assert_eq!(src[0].symbols, "dwarf");
    assert_eq!(src[0].debug_file.as_deref(), debug.to_str());
    assert_eq!(src[0].build_id, info.build_id_hex());
}

#[test]
fn debug_file_by_build_id_in_a_debug_dir() {
    let dir = TempDir::new("buildid");
    let Some((exe, debug, offset)) = split_debug(&dir.0) else { return };
    // Without the debug link (and the sibling gone) only the build id can find it.
    assert!(run("objcopy", &["--remove-section=.gnu_debuglink", exe.to_str().unwrap()]));
    let dbg_dir = dir.0.join("debug");
    let by_id = place_by_build_id(&exe, &debug, &dbg_dir);
    fs::remove_file(&debug).unwrap();
    let mut s = Symbolizer::with_debug_dirs(vec![dbg_dir.clone()]);
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_leaky_alloc(&frames);
    assert_eq!(s.module_sources()[0].debug_file.as_deref(), by_id.to_str());
    // A stale file of the right name but another build is not taken.
    let mut other = Symbolizer::with_debug_dirs(vec![dbg_dir]);
    let cdir = TempDir::new("buildid-other");
    let exe2 = compile(&cdir.0, "prog", "c", "gcc", &["-g", "-O0", "-DX=1"], &format!("{C_PROG}int x;"))
        .unwrap();
    let debug2 = cdir.0.join("prog.debug");
    assert!(run("objcopy", &["--only-keep-debug", exe2.to_str().unwrap(), debug2.to_str().unwrap()]));
    fs::copy(&debug2, &by_id).unwrap();
    let (_, frames) = frames_at(&mut other, &exe, None, offset);
    assert!(frames[0].function.starts_with("prog+0x"), "{frames:?}");
    assert_eq!(other.module_sources()[0].symbols, "none");
}

#[test]
fn debug_link_in_a_debug_dir_and_inside_the_target_root() {
    let dir = TempDir::new("link");
    let Some((exe, debug, offset)) = split_debug(&dir.0) else { return };
    // DIR/NAME on the host.
    let dbg_dir = dir.0.join("debug");
    fs::create_dir_all(&dbg_dir).unwrap();
    fs::rename(&debug, dbg_dir.join("prog.debug")).unwrap();
    let mut s = Symbolizer::with_debug_dirs(vec![dbg_dir.clone()]);
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_leaky_alloc(&frames);
    // A target root: its /usr/lib/debug/.build-id is searched, and shown as /proc/PID/root/...
    let root_dir = TempDir::new("link-root");
    place_by_build_id(&exe, &dbg_dir.join("prog.debug"), &root_dir.0.join("usr/lib/debug"));
    fs::remove_dir_all(&dbg_dir).unwrap();
    let root = Arc::new(RootDir::open_dir(root_dir.0.to_str().unwrap(), 4242).unwrap());
    let mut s = Symbolizer::new();
    let (_, frames) = frames_at(&mut s, &exe, Some(root), offset);
    assert_leaky_alloc(&frames);
    let shown = s.module_sources()[0].debug_file.clone().unwrap();
    assert!(shown.starts_with("/proc/4242/root/usr/lib/debug/.build-id/"), "{shown}");
}

#[test]
fn stripped_objects() {
    let dir = TempDir::new("stripped");
    let Some(exe) = compile(&dir.0, "prog", "c", "gcc", &["-O1"], C_PROG) else { return };
    let offset = symbol_offset(&exe, "leaky_alloc");
    assert!(run("strip", &["--strip-all", exe.to_str().unwrap()]));
    let lib_src = "__attribute__((noinline)) int lib_fn(int x) { return x * 3 + 1; }\n";
    let Some(lib) = compile(&dir.0, "libx.so", "c", "gcc", &["-O1", "-shared", "-fPIC"], lib_src) else {
        return;
    };
    let lib_offset = symbol_offset(&lib, "lib_fn");
    assert!(run("strip", &["--strip-all", lib.to_str().unwrap()]));

    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].function, format!("prog+{offset:#x}"));
    assert_eq!(frames[0].file, None);
    let (_, frames) = frames_at(&mut s, &lib, None, lib_offset);
    assert_eq!(frames[0].function, "lib_fn");
    let src = s.module_sources();
    let by_name = |n: &str| src.iter().find(|m| m.module.ends_with(n)).unwrap().symbols;
    assert_eq!(by_name("/prog"), "none");
    assert_eq!(by_name("/libx.so"), "dynsym");
}

#[test]
fn symtab_only() {
    let dir = TempDir::new("symtab");
    let Some(exe) = compile(&dir.0, "prog", "c", "gcc", &["-O1"], C_PROG) else { return };
    let offset = symbol_offset(&exe, "leaky_alloc");
    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset + 1);
    assert_eq!(frames[0].function, "leaky_alloc");
    assert_eq!(frames[0].file, None);
    assert_eq!(s.module_sources()[0].symbols, "symtab");
}

const CPP_PROG: &str = r#"
#include <cstdio>
#include <vector>
namespace ns {
template <class T> struct Foo {
    std::vector<T> v;
    __attribute__((noinline)) void bar(unsigned long n);
};
template <class T> void Foo<T>::bar(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) v.push_back(T(i));
    std::printf("%zu\n", v.size());
}
template struct Foo<int>;
}
int main(int argc, char **) { ns::Foo<int> f; f.bar(argc); return 0; }
"#;

#[test]
fn cpp_names_are_demangled() {
    let dir = TempDir::new("cpp");
    let Some(exe) = compile(&dir.0, "prog", "cc", "g++", &["-O1", "-g"], CPP_PROG) else { return };
    let offset = symbol_offset(&exe, "_ZN2ns3FooIiE3barEm");
    let want = "ns::Foo<int>::bar(unsigned long)";
    // With DWARF.
    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_eq!(frames[0].function, want, "{frames:?}");
    assert!(frames[0].line.is_some());
    // From the symbol table alone.
    assert!(run("strip", &["--strip-debug", exe.to_str().unwrap()]));
    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_eq!(frames[0].function, want, "{frames:?}");
    assert_eq!(s.module_sources()[0].symbols, "symtab");
}

/// A Rust function of this test binary, for the end-to-end tests.
#[inline(never)]
fn rust_marker(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3)
}

/// The address of `rust_marker`, and one just inside it (what a return address into it minus
/// one would be).
fn marker_addr() -> u64 {
    std::hint::black_box(rust_marker(1));
    rust_marker as *const () as usize as u64
}

/// An anonymous executable page of this process, unmapped when dropped.
struct AnonCode(*mut libc::c_void);

impl AnonCode {
    fn new() -> Self {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Self(p)
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }
}

impl Drop for AnonCode {
    fn drop(&mut self) {
        // SAFETY: mapped in new() with this length.
        unsafe { libc::munmap(self.0, 4096) };
    }
}

#[test]
fn rust_names_and_stack_options_end_to_end() {
    let me = std::process::id();
    let code = AnonCode::new();
    let map_path = PathBuf::from(format!("/tmp/perf-{}.map", super::root::ns_pid(me).unwrap()));
    let jit = code.addr();
    let _remove = RemoveOnDrop(map_path.clone());
    fs::write(&map_path, format!("{jit:x} 40 JS:*leakyFunction /app/leak.js:3:20\n0x{:x} 0x10 LazyCompile:*foo\nbad line\n", jit + 0x40)).unwrap();
    let marker = marker_addr();
    let mut s = Symbolizer::new();
    s.observe_process(me);

    // Leaf first: JIT code (exact), a return address into rust_marker, an unmapped address.
    let ips = [jit + 0x10, marker + 1, 0x10];
    let trusted = s.symbolize_stack(me, &ips, StackOpts { first_exact: true, trust_all: true });
    let names: Vec<(&str, &str)> = trusted.iter().map(|f| (f.module.as_str(), f.function.as_str())).collect();
    assert_eq!(names.len(), 3, "{trusted:?}");
    assert_eq!(names[0], (UNMAPPED_MODULE, "0x10"));
    assert!(names[1].1.ends_with("symbolize::tests::rust_marker"), "{names:?}");
    assert!(!names[1].1.contains("17h"), "not demangled: {names:?}");
    assert_eq!(names[2], (JIT_MODULE, "JS:*leakyFunction /app/leak.js:3:20"));

    // A frame-pointer walk stops at the garbage; JIT code counts as code.
    let fp = s.symbolize_stack(me, &ips, StackOpts { first_exact: true, trust_all: false });
    assert_eq!(fp.len(), 2, "{fp:?}");
    assert_eq!(fp[1].module, JIT_MODULE);

    // Not exact: jit + 0x40 is looked up as jit + 0x3f, in the first function.
    let not_exact = s.symbolize_stack(me, &[jit + 0x40], StackOpts::default());
    assert_eq!(not_exact[0].function, "JS:*leakyFunction /app/leak.js:3:20");
    let exact = s.symbolize_stack(me, &[jit + 0x40], StackOpts { first_exact: true, trust_all: false });
    assert_eq!(exact[0].function, "LazyCompile:*foo");

    // Appended lines are found (the file is re-read when an address is missing).
    let mut text = fs::read_to_string(&map_path).unwrap();
    text.push_str(&format!("{:x} 100 py::later:/app/x.py\n", jit + 0x100));
    fs::write(&map_path, text).unwrap();
    let later = s.symbolize_stack(me, &[jit + 0x180], StackOpts { first_exact: true, trust_all: false });
    assert_eq!(later[0].function, "py::later:/app/x.py");

    // Outside the perf map: anonymous code is still code, named by its mapping.
    let anon = s.symbolize_stack(me, &[jit + 0x800], StackOpts { first_exact: true, trust_all: true });
    assert_eq!(anon[0].function, "[anon]+0x800", "{anon:?}");

    // Heap data with trust_all: named by its mapping; without it the stack ends there.
    let heap = Box::new([0u8; 64]);
    let data = heap.as_ptr() as u64 + 8;
    assert!(s.symbolize_stack(me, &[data], StackOpts { first_exact: true, trust_all: false }).is_empty());
    let kept = s.symbolize_stack(me, &[data], StackOpts { first_exact: true, trust_all: true });
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].function.contains("+0x"), "{kept:?}");

    let src = s.module_sources();
    assert!(src.iter().any(|m| m.module == JIT_MODULE && m.symbols == "perf-map"), "{src:?}");
    assert!(src.iter().any(|m| m.symbols == "dwarf" || m.symbols == "symtab"), "{src:?}");
}

/// Removes a file when dropped (also when a test fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Fedora's MiniDebugInfo: the stripped object carries an xz-compressed `.symtab` of its
/// functions in `.gnu_debugdata`.
fn add_mini_debuginfo(dir: &Path, exe: &Path) -> bool {
    let e = exe.to_str().unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let script = format!(
        "nm -D {e} --format=posix --defined-only | awk '{{print $1}}' | sort > {dyn_}; \
         nm {e} --format=posix --defined-only | awk '{{ if ($2 == \"T\" || $2 == \"t\") print $1 }}' | sort > {funcs}; \
         comm -13 {dyn_} {funcs} > {keep}; \
         objcopy --only-keep-debug {e} {dbg} && \
         objcopy -S --remove-section .comment --keep-symbols={keep} {dbg} {mini} && \
         strip --strip-all -R .comment {e} && xz -f {mini} && \
         objcopy --add-section .gnu_debugdata={mini}.xz {e}",
        dyn_ = p("dynsyms"),
        funcs = p("funcsyms"),
        keep = p("keep"),
        dbg = p("full.debug"),
        mini = p("mini"),
    );
    run("sh", &["-c", &script])
}

#[test]
fn mini_debuginfo() {
    let dir = TempDir::new("minidebug");
    let Some(exe) = compile(&dir.0, "prog", "c", "gcc", &["-O1"], C_PROG) else { return };
    let offset = symbol_offset(&exe, "leaky_alloc");
    if !add_mini_debuginfo(&dir.0, &exe) {
        return;
    }
    let mut s = Symbolizer::with_debug_dirs(Vec::new());
    let (_, frames) = frames_at(&mut s, &exe, None, offset);
    assert_eq!(frames[0].function, "leaky_alloc", "{frames:?}");
    assert_eq!(s.module_sources()[0].symbols, "symtab");
}
