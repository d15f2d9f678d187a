//! Where a thread's `PyThreadState` is, for any thread, whether or not it holds the GIL.
//!
//! CPython binds each thread's state to a pthread key (`autoTSSkey`, used by
//! `PyGILState_GetThisThreadState`) for its whole life; `_PyRuntime`'s "current thread state"
//! (≤ 3.11: the GIL holder) and the 3.12+ thread-local `_Py_tss_tstate` (NULL while the thread
//! has released the GIL) are not enough. The kernel side reads the key's slot from the thread's
//! `struct pthread`, which sits at the thread pointer (x86-64 `%fs` base, = `pthread_self()`).
//! Which offset in it holds key K depends on the C library (glibc: `specific_1stblock[K].data`
//! for K < 32, a second-level block beyond; musl: `tsd[K]`). Rather than keeping tables per
//! libc version, memprof finds it in the process itself: every `PyThreadState` records its
//! thread's `pthread_self()` (`thread_id`), so the slot is where that thread's pthread area holds
//! that state. The answer must agree for every thread found.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use memprof_common::python::{PY_TSS_DIRECT, PY_TSS_INDIRECT};

use super::{elf::PyElf, layout::Layout};
use crate::runtime::mem::{ProcMem, le_u64};

/// Most thread states followed in the interpreter's list.
const MAX_THREADS: usize = 256;
/// Bytes of `struct pthread` searched for a directly held slot.
const PTHREAD_SCAN: usize = 4096;
/// Bytes of `struct pthread` searched for a pointer to a block of slots.
const PTHREAD_PTR_SCAN: u64 = 1024;
/// pthread keys are below this (glibc's and musl's PTHREAD_KEYS_MAX).
const KEYS_MAX: u32 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TssError {
    /// Python is not initialized yet (no interpreter or no thread state): try again later.
    #[error("the interpreter is not initialized yet")]
    NotReady,
    #[error("_PyRuntime is unreadable")]
    Unreadable,
    #[error("the pthread key of the thread states is not initialized")]
    NoKey,
    #[error("no thread's state was found where its pthread key points ({0} thread states checked)")]
    NoSlot(usize),
    #[error("the threads disagree on where their state is kept")]
    Inconsistent,
}

/// The interpreter's thread states: (address, the thread's `pthread_self()`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadStates {
    pub interp: u64,
    pub states: Vec<(u64, u64)>,
}

/// Lists the main interpreter's thread states.
pub fn thread_states(mem: &ProcMem, layout: &Layout, runtime: u64) -> Result<ThreadStates, TssError> {
    let interp = mem.u64(runtime.wrapping_add(layout.rt_interpreters_head)).ok_or(TssError::Unreadable)?;
    if interp == 0 {
        return Err(TssError::NotReady);
    }
    let mut t = mem.u64(interp.wrapping_add(layout.interp_threads_head)).ok_or(TssError::NotReady)?;
    let mut states = Vec::new();
    while t != 0 && states.len() < MAX_THREADS {
        let need = [layout.ts_next, layout.ts_interp, layout.ts_thread_id].into_iter().max().unwrap_or(0) + 8;
        let Some(buf) = mem.bytes(t, need as usize) else { break };
        let (Some(next), Some(owner), Some(tid)) = (
            le_u64(&buf, layout.ts_next),
            le_u64(&buf, layout.ts_interp),
            le_u64(&buf, layout.ts_thread_id),
        ) else {
            break;
        };
        if owner != interp {
            // Not a thread state of this interpreter: the list (or our layout) is wrong.
            break;
        }
        if tid != 0 && !states.iter().any(|&(s, _)| s == t) {
            states.push((t, tid));
        }
        t = next;
    }
    if states.is_empty() {
        return Err(TssError::NotReady);
    }
    Ok(ThreadStates { interp, states })
}

/// The pthread key at a `Py_tss_t` (`int _is_initialized; pthread_key_t _key`).
pub fn read_key(mem: &ProcMem, tss: u64) -> Option<u32> {
    let b = mem.bytes(tss, 8)?;
    let init = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let key = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    (init == 1 && key < KEYS_MAX).then_some(key)
}

/// Candidate addresses (in the process) of `autoTSSkey`, best first: decoded from
/// `PyGILState_GetThisThreadState` (the approach of the OpenTelemetry eBPF profiler's
/// `decodeStub`), then the version table's offset in `_PyRuntime`.
pub fn key_candidates(elf: &PyElf, bias: u64, mem: &ProcMem, layout: &Layout) -> Vec<u64> {
    let mut out = Vec::new();
    let runtime = elf.symbols.get("_PyRuntime").copied();
    if let (Some(f), Some(rt)) = (elf.symbols.get("PyGILState_GetThisThreadState"), runtime) {
        if let Some(code) = elf.code_at(f.addr, 64) {
            let start = rt.addr.wrapping_add(bias);
            let in_runtime = |a: u64| a >= start && a - start < rt.size.max(1);
            for a in decode_key_address(code, f.addr, bias, mem) {
                if in_runtime(a) && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    if let Some(rt) = runtime {
        let a = rt.addr.wrapping_add(bias).wrapping_add(layout.rt_autotss);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The `Py_tss_t` addresses `PyGILState_GetThisThreadState`'s code passes to
/// `PyThread_tss_get` (`lea disp(reg), %rdi`) or whose key it loads itself
/// (`mov disp(...), %edi`, the key being 4 bytes in). Registers loaded from the GOT are
/// followed through the process's memory.
fn decode_key_address(code: &[u8], vaddr: u64, bias: u64, mem: &ProcMem) -> Vec<u64> {
    let mut regs: Vec<(Register, u64)> = Vec::new();
    let mut out = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    for ins in &mut decoder {
        let mem_addr = |ins: &iced_x86::Instruction, regs: &[(Register, u64)]| -> Option<u64> {
            if ins.memory_base() == Register::RIP {
                Some(ins.memory_displacement64().wrapping_add(bias))
            } else if ins.memory_base() == Register::None && ins.memory_index() == Register::None {
                Some(ins.memory_displacement64().wrapping_add(bias))
            } else if ins.memory_index() == Register::None {
                let base = regs.iter().find(|(r, _)| *r == ins.memory_base())?.1;
                Some(base.wrapping_add(ins.memory_displacement64()))
            } else {
                None
            }
        };
        match ins.mnemonic() {
            Mnemonic::Mov if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Memory => {
                let dst = ins.op0_register();
                let Some(at) = mem_addr(&ins, &regs) else { continue };
                if dst == Register::EDI {
                    out.push(at.wrapping_sub(4));
                } else if dst.size() == 8 && ins.memory_base() == Register::RIP {
                    // A pointer from the GOT (PIC code reaching _PyRuntime).
                    if let Some(v) = mem.u64(at) {
                        regs.retain(|(r, _)| *r != dst);
                        regs.push((dst, v));
                    }
                }
            }
            Mnemonic::Lea if ins.op0_kind() == OpKind::Register => {
                let Some(at) = mem_addr(&ins, &regs) else { continue };
                if ins.op0_register() == Register::RDI {
                    out.push(at);
                } else {
                    regs.retain(|(r, _)| *r != ins.op0_register());
                    regs.push((ins.op0_register(), at));
                }
            }
            Mnemonic::Ret | Mnemonic::Jmp | Mnemonic::Call => {
                if !out.is_empty() {
                    break;
                }
            }
            _ => {}
        }
    }
    out
}

/// How the kernel finds the state from the thread pointer (`PY_TSS_*`, a, b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub mode: u32,
    pub a: i64,
    pub b: i64,
}

/// Finds where key `key`'s value lives relative to each thread's `pthread_self()`, checked on
/// every thread state that could be placed.
pub fn find_slot(mem: &ProcMem, key: u32, threads: &ThreadStates) -> Result<Slot, TssError> {
    let mut agreed: Option<Vec<Slot>> = None;
    let mut placed = 0;
    for &(state, tid) in &threads.states {
        // struct pthread may end its mapping (a thread stack's top): read what is there.
        let area = mem.bytes_prefix(tid, PTHREAD_SCAN);
        let mut found: Vec<Slot> = Vec::new();
        // The slot itself in the pthread area (glibc, key < 32).
        for off in (0..PTHREAD_SCAN as u64).step_by(8) {
            if le_u64(&area, off) == Some(state) {
                found.push(Slot { mode: PY_TSS_DIRECT, a: off as i64, b: 0 });
            }
        }
        // A pointer in the pthread area to a block of slots: musl's `tsd[key]`, glibc's
        // `specific[key / 32][key % 32].data`.
        let second = [u64::from(key) * 8, u64::from(key % 32) * 16 + 8];
        for off in (0..PTHREAD_PTR_SCAN).step_by(8) {
            let Some(p) = le_u64(&area, off) else { continue };
            if p < 0x10000 || p >= memprof_common::runtime::USER_ADDR_LIMIT {
                continue;
            }
            for b in second {
                if mem.u64(p + b) == Some(state) {
                    found.push(Slot { mode: PY_TSS_INDIRECT, a: off as i64, b: b as i64 });
                }
            }
        }
        if found.is_empty() {
            // A thread not bound yet (starting up) or whose area is unreadable.
            continue;
        }
        placed += 1;
        agreed = Some(match agreed {
            None => found,
            Some(prev) => prev.into_iter().filter(|s| found.contains(s)).collect(),
        });
    }
    let Some(agreed) = agreed else { return Err(TssError::NoSlot(threads.states.len())) };
    // Prefer the direct slot (one read in the kernel); several candidates left means the
    // evidence is ambiguous (a single thread that happens to keep its state twice).
    let direct: Vec<&Slot> = agreed.iter().filter(|s| s.mode == PY_TSS_DIRECT).collect();
    match (direct.as_slice(), agreed.as_slice()) {
        ([one], _) => Ok(**one),
        ([], [one]) => Ok(*one),
        ([], []) => Err(TssError::Inconsistent),
        _ if placed > 1 => Err(TssError::Inconsistent),
        _ => Err(TssError::Inconsistent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds the slot of a key this test process creates itself, on two threads: the same
    /// mechanism as CPython's `autoTSSkey`, with glibc.
    #[test]
    fn finds_the_pthread_slot_of_a_key() {
        let mut key: libc::pthread_key_t = 0;
        assert_eq!(unsafe { libc::pthread_key_create(&mut key, None) }, 0);
        let mine = Box::new(0xdead_beef_u64);
        let mine_addr = &*mine as *const u64 as u64;
        unsafe { libc::pthread_setspecific(key, &*mine as *const u64 as *const libc::c_void) };
        let me = unsafe { libc::pthread_self() } as u64;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let theirs = Box::new(1u64);
            unsafe { libc::pthread_setspecific(key, &*theirs as *const u64 as *const libc::c_void) };
            tx.send((&*theirs as *const u64 as u64, unsafe { libc::pthread_self() } as u64)).unwrap();
            let _ = done_rx.recv();
            drop(theirs);
        });
        let (theirs_addr, them) = rx.recv().unwrap();
        let mem = ProcMem::new(std::process::id());
        let threads = ThreadStates { interp: 0, states: vec![(mine_addr, me), (theirs_addr, them)] };
        let slot = find_slot(&mem, key, &threads).unwrap();
        assert_eq!(slot.mode, PY_TSS_DIRECT, "{slot:?}");
        // The slot read the way the kernel reads it.
        assert_eq!(mem.u64(me + slot.a as u64), Some(mine_addr));
        assert_eq!(mem.u64(them + slot.a as u64), Some(theirs_addr));
        done_tx.send(()).unwrap();
        t.join().unwrap();
        // A state no thread holds.
        let bogus = ThreadStates { interp: 0, states: vec![(0x1234_5678, me)] };
        assert_eq!(find_slot(&mem, key, &bogus), Err(TssError::NoSlot(1)));
        unsafe { libc::pthread_key_delete(key) };
    }

    /// musl's layout, built in this process's memory: `struct pthread` holds a pointer to the
    /// thread's `tsd` array, whose slot `key` is the state.
    #[test]
    fn finds_a_slot_behind_a_pointer_as_musl_keeps_it() {
        let key = 5u32;
        let states: Vec<Box<u64>> = (0..2).map(|i| Box::new(0x5000 + i)).collect();
        let tsds: Vec<Vec<u64>> =
            states.iter().map(|st| (0..8).map(|k| if k == key as usize { &**st as *const u64 as u64 } else { 0 }).collect()).collect();
        // Two fake pthread areas with the tsd pointer at offset 0x40 (musl: after self, dtv,
        // prev, next, sysinfo, canary...).
        let areas: Vec<Vec<u64>> = tsds
            .iter()
            .map(|t| (0..512).map(|i| if i == 8 { t.as_ptr() as u64 } else { 0x11 }).collect())
            .collect();
        let threads = ThreadStates {
            interp: 0,
            states: states.iter().zip(&areas).map(|(st, a)| (&**st as *const u64 as u64, a.as_ptr() as u64)).collect(),
        };
        let slot = find_slot(&ProcMem::new(std::process::id()), key, &threads).unwrap();
        assert_eq!(slot, Slot { mode: PY_TSS_INDIRECT, a: 0x40, b: 8 * key as i64 });
    }

    #[test]
    fn keys_are_checked() {
        let good: [i32; 2] = [1, 3];
        let mem = ProcMem::new(std::process::id());
        assert_eq!(read_key(&mem, good.as_ptr() as u64), Some(3));
        let uninit: [i32; 2] = [0, 3];
        assert_eq!(read_key(&mem, uninit.as_ptr() as u64), None);
        let huge: [u32; 2] = [1, 5000];
        assert_eq!(read_key(&mem, huge.as_ptr() as u64), None);
        assert_eq!(read_key(&mem, 0), None);
    }
}
