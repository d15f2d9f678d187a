//! CPython's object allocator as an allocator of its own.
//!
//! `PyObject_Malloc` and friends (and `PyMem_Malloc`, which uses the same allocator since 3.6)
//! call through a table of function pointers (`PyMemAllocatorEx`: ctx, malloc, calloc, realloc,
//! free): the functions it points at — pymalloc's `_PyObject_Malloc`, or whatever
//! `PYTHONMALLOC`/`tracemalloc` installed — see every object allocation of an ordinary build,
//! including those of callers that inlined the exported wrappers. memprof finds the table from
//! the exported wrappers' code, reads the pointers from the process's memory, and probes those
//! functions (context first: `pymalloc_*_enter`). Objects over 512 bytes then reach `malloc`
//! nested inside the probed call, and pymalloc's arenas are `mmap`s inside it: both are
//! allocator-internal and counted once, as the object.
//!
//! Optimised builds (PGO: Debian's and Ubuntu's `python3`, the official Docker images) promote
//! that indirect call: callers compare the pointer with pymalloc's address and run an inlined
//! copy of pymalloc when it matches. Those allocations and frees never enter any function a
//! probe could sit on, so per-object tracking would miss some allocations and, worse, some frees
//! (false leaks). memprof recognises the promotion (`cmp $pymalloc, %reg` after loading the
//! table's pointer) and then leaves the object allocator alone: objects are counted as the
//! arenas and `malloc` blocks they live in, attributed to the stack that created those.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::elf::PyElf;
use crate::runtime::mem::ProcMem;

/// A role in `PyMemAllocatorEx`, with its slot index (after `ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    Free = 4,
}

impl Role {
    /// The arguments the entry program reads (after the context, argument 0).
    pub fn args(self) -> &'static [usize] {
        match self {
            Role::Malloc | Role::Free => &[1],
            Role::Calloc | Role::Realloc => &[1, 2],
        }
    }

    /// The entry program of `memprof-ebpf` for functions of this role.
    pub fn program(self) -> &'static str {
        match self {
            Role::Malloc => "pymalloc_malloc_enter",
            Role::Calloc => "pymalloc_calloc_enter",
            Role::Realloc => "pymalloc_realloc_enter",
            Role::Free => "pymalloc_free_enter",
        }
    }
}

/// The exported wrappers, by domain and role.
const WRAPPERS: &[(&str, Role)] = &[
    ("PyObject_Malloc", Role::Malloc),
    ("PyObject_Calloc", Role::Calloc),
    ("PyObject_Realloc", Role::Realloc),
    ("PyObject_Free", Role::Free),
    ("PyMem_Malloc", Role::Malloc),
    ("PyMem_Calloc", Role::Calloc),
    ("PyMem_Realloc", Role::Realloc),
    ("PyMem_Free", Role::Free),
];

/// What memprof does with the object allocator of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectAllocator {
    /// Probe these functions (runtime addresses).
    Probe(Vec<(Role, u64)>),
    /// Leave it alone, and why.
    NotProbed(String),
}

/// What one wrapper's code says: the table slot it calls through (link-time address), and the
/// address it compares the pointer with when the build promoted the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wrapper {
    slot: Option<u64>,
    promoted_to: Option<u64>,
}

/// Decodes a wrapper: the first rip-relative load of a pointer, then either an indirect jump or
/// call through it (or through that slot directly), or a comparison of it with a code address.
fn decode_wrapper(code: &[u8], vaddr: u64) -> Wrapper {
    let mut w = Wrapper::default();
    let mut loaded: Vec<(Register, u64)> = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    for (n, ins) in (&mut decoder).into_iter().enumerate() {
        if n > 24 {
            break;
        }
        match ins.mnemonic() {
            Mnemonic::Jmp | Mnemonic::Call if ins.op0_kind() == OpKind::Memory && ins.memory_base() == Register::RIP => {
                w.slot = Some(ins.memory_displacement64());
                return w;
            }
            Mnemonic::Jmp | Mnemonic::Call if ins.op0_kind() == OpKind::Register => {
                if let Some(&(_, slot)) = loaded.iter().find(|(r, _)| *r == ins.op0_register()) {
                    w.slot = Some(slot);
                    return w;
                }
            }
            Mnemonic::Mov
                if ins.op0_kind() == OpKind::Register
                    && ins.op1_kind() == OpKind::Memory
                    && ins.memory_base() == Register::RIP
                    && ins.op0_register().size() == 8 =>
            {
                loaded.push((ins.op0_register(), ins.memory_displacement64()));
            }
            Mnemonic::Cmp if ins.op0_kind() == OpKind::Register => {
                let imm = match ins.op1_kind() {
                    OpKind::Immediate32to64 | OpKind::Immediate32 => Some(ins.immediate(1)),
                    _ => None,
                };
                if let (Some(imm), Some(&(_, slot))) = (imm, loaded.iter().find(|(r, _)| *r == ins.op0_register())) {
                    w.slot = Some(slot);
                    w.promoted_to = Some(imm);
                    return w;
                }
                if ins.op1_kind() == OpKind::Register {
                    // PIC code: `lea pymalloc(%rip), %rX; cmp %rX, %rY`; either side may be the
                    // loaded pointer.
                    let (a, b) = (ins.op0_register(), ins.op1_register());
                    let slot = loaded.iter().find(|(r, _)| *r == a || *r == b).map(|x| x.1);
                    if let Some(slot) = slot {
                        w.slot = Some(slot);
                        w.promoted_to = Some(0);
                        return w;
                    }
                }
            }
            Mnemonic::Ret => break,
            _ => {}
        }
    }
    w
}

/// `[start, end)` (in the process) of pymalloc's arena allocator (`_PyObject_ArenaMmap`, or
/// whatever `PyObject_SetArenaAllocator` installed): the function whose `mmap`s are the arenas
/// Python's small objects live in. Found through the table `PyObject_GetArenaAllocator` copies
/// (its first 16-byte load; ≤ 3.11 a static, 3.12+ inside `_PyRuntime`), read from memory.
pub fn arena_allocator(elf: &PyElf, bias: u64, mem: &ProcMem) -> Option<(u64, u64)> {
    let sym = elf.symbols.get("PyObject_GetArenaAllocator")?;
    let code = elf.code_at(sym.addr, sym.size.clamp(16, 128) as usize)?;
    let mut decoder = Decoder::with_ip(64, code, sym.addr, DecoderOptions::NONE);
    let table = (&mut decoder).into_iter().take(32).find_map(|ins| {
        let load = matches!(ins.mnemonic(), Mnemonic::Movaps | Mnemonic::Movdqa | Mnemonic::Movdqu | Mnemonic::Movups);
        (load && ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Memory && ins.memory_base() == Register::RIP)
            .then(|| ins.memory_displacement64())
    })?;
    let alloc = mem.u64(table.wrapping_add(bias).wrapping_add(8))?;
    let link = alloc.checked_sub(bias).filter(|&a| elf.is_code(a))?;
    let size = elf.function_size(link);
    (size > 0).then_some((alloc, alloc + size))
}

/// Decides what to do with the object allocator of a process whose interpreter object is `elf`
/// (mapped with `bias`): the functions to probe, or why not.
pub fn object_allocator(elf: &PyElf, bias: u64, mem: &ProcMem) -> ObjectAllocator {
    let mut probes: Vec<(Role, u64)> = Vec::new();
    for &(name, role) in WRAPPERS {
        let Some(sym) = elf.symbols.get(name) else {
            return ObjectAllocator::NotProbed(format!("{name} is not defined"));
        };
        let Some(code) = elf.code_at(sym.addr, sym.size.clamp(16, 96) as usize) else {
            return ObjectAllocator::NotProbed(format!("{name}'s code is not readable"));
        };
        let w = decode_wrapper(code, sym.addr);
        if w.promoted_to.is_some() {
            return ObjectAllocator::NotProbed(format!(
                "{name} compares its allocator with an inlined copy of pymalloc (an optimised PGO build): \
                 such inlined copies allocate and free without entering any function"
            ));
        }
        let Some(slot) = w.slot else {
            return ObjectAllocator::NotProbed(format!("{name}'s code does not call through the allocator table"));
        };
        let Some(func) = mem.u64(slot.wrapping_add(bias)) else {
            return ObjectAllocator::NotProbed(format!("the allocator table of {name} is unreadable"));
        };
        let Some(link) = func.checked_sub(bias).filter(|&a| elf.is_code(a)) else {
            return ObjectAllocator::NotProbed(format!(
                "{name} calls {func:#x}, outside the interpreter's code (a custom allocator)"
            ));
        };
        let _ = link;
        if !probes.contains(&(role, func)) {
            probes.push((role, func));
        }
    }
    // One function, one role: a function serving two roles would be ambiguous to probe.
    let mut by_addr: Vec<(u64, Role)> = probes.iter().map(|&(r, a)| (a, r)).collect();
    by_addr.sort_unstable();
    if by_addr.windows(2).any(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1) {
        return ObjectAllocator::NotProbed("one allocator function serves two roles".into());
    }
    ObjectAllocator::Probe(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thunk_and_promoted_wrappers() {
        // pyenv 3.11's PyObject_Malloc: mov %rdi,%rsi; test; js; mov ctx(%rip),%rdi;
        // jmp *malloc(%rip)
        let thunk = [
            0x48, 0x89, 0xfe, 0x48, 0x85, 0xff, 0x78, 0x10, 0x48, 0x8b, 0x3d, 0x71, 0xd0, 0x2a, 0x00, 0xff,
            0x25, 0x73, 0xd0, 0x2a, 0x00,
        ];
        let w = decode_wrapper(&thunk, 0x1af1e0);
        assert_eq!(w.slot, Some(0x45c268));
        assert_eq!(w.promoted_to, None);
        // Debian 3.11's: push %rbx; test; js; mov malloc(%rip),%rax; mov %rdi,%rbx;
        // mov ctx(%rip),%rdi; cmp $0x4fb450,%rax
        let promoted = [
            0x53, 0x48, 0x85, 0xff, 0x0f, 0x88, 0x65, 0xad, 0xf2, 0xff, 0x48, 0x8b, 0x05, 0xe7, 0xeb, 0x45,
            0x00, 0x48, 0x89, 0xfb, 0x48, 0x8b, 0x3d, 0xd5, 0xeb, 0x45, 0x00, 0x48, 0x3d, 0x50, 0xb4, 0x4f,
            0x00,
        ];
        let w = decode_wrapper(&promoted, 0x4fb350);
        assert_eq!(w.slot, Some(0x959f48));
        assert_eq!(w.promoted_to, Some(0x4fb450));
    }

    /// The host's interpreters, decided from their own files and a live process: pyenv's build
    /// is probed (both domains reach pymalloc's four functions); Debian's is not (PGO).
    #[test]
    fn host_interpreters() {
        use std::process::{Command, Stdio};
        for (exe, expect_probe) in [("python3", true), ("/usr/bin/python3.11", false)] {
            let mut child = Command::new(exe)
                .args(["-c", "import sys,time; print('ok', flush=True); time.sleep(30)"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{exe}: {e}"));
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
            let pid = child.id();
            let maps = crate::target::maps::read_maps(pid).unwrap();
            let inspection = super::super::process::inspect(pid, &maps, &mut Default::default());
            let _ = child.kill();
            let _ = child.wait();
            let result = match inspection {
                super::super::process::Inspection::Ready(f) => Some(f.allocator),
                other => panic!("{exe}: {other:?}"),
            };
            let decided = result.unwrap_or_else(|| panic!("{exe}: no interpreter object found"));
            match (&decided, expect_probe) {
                (ObjectAllocator::Probe(p), true) => {
                    let mut roles: Vec<Role> = p.iter().map(|x| x.0).collect();
                    roles.sort();
                    roles.dedup();
                    assert_eq!(roles, [Role::Malloc, Role::Calloc, Role::Realloc, Role::Free], "{exe}: {p:?}");
                    assert_eq!(p.len(), 4, "{exe}: both domains reach the same four functions: {p:x?}");
                }
                (ObjectAllocator::NotProbed(why), false) => assert!(why.contains("PGO"), "{exe}: {why}"),
                _ => panic!("{exe}: {decided:?}"),
            }
        }
    }
}
