//! Where the probes of a runtime's allocator function go (CPython's `_PyObject_Malloc` and
//! friends): the same idea as [`super::placement`] for `free`, for functions that are not
//! glibc's.
//!
//! pymalloc's functions start with an instruction the kernel single-steps (`lea -0x1(%rsi),%rax`
//! in `_PyObject_Malloc`; `test %rsi,%rsi; je` in `_PyObject_Free`): on this machine that is
//! ~13.7 µs per call instead of ~1.1 µs, for the most frequent call a Python program makes. A
//! uretprobe costs that too, since it is an entry breakpoint that hijacks the return address.
//! Both can sit on the first instruction the kernel emulates (`push r64`, `nop`) as long as,
//! at that point, everything they read is as it was at the entry:
//!
//! 1. The skipped instructions change neither the stack pointer nor memory (so `[%rsp]` is
//!    still the return address a uretprobe takes over, and `%rsp` the entry's, which tells
//!    nested calls apart), and write none of the argument registers the entry program reads
//!    (`preserve`). Other registers may be written (`lea -0x1(%rsi),%rax` writes `%rax`, which
//!    the entry program does not read).
//! 2. No path leaves the skipped range except, for a free-like function, the `je` right after a
//!    NULL check of the pointer argument (freeing NULL frees nothing). Allocation functions skip
//!    no branch at all.
//! 3. Nothing jumps into (entry, probe] (the whole function is decoded to check).
//! 4. At most [`MAX_SKIPPED_INSNS`] instructions and [`MAX_SKIPPED_BYTES`] bytes are skipped.

use iced_x86::{InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};

use super::placement::{
    MAX_FUNC_BYTES, MAX_SKIPPED_BYTES, MAX_SKIPPED_INSNS, Placement, branch_target, decode_all,
    emulated_anyway, insn_bytes, is_immediate, name, stop_here,
};

/// The System V x86-64 argument registers, by argument index.
pub const ARG_REGS: [Register; 6] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];

/// What the probe must still see at its new place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRules {
    /// Argument registers the entry program reads: none of them may be written before it.
    pub preserve: Vec<Register>,
    /// For a free-like function, the pointer argument: a `je` right after its NULL check may be
    /// skipped. None: no branch may be skipped.
    pub null_check: Option<Register>,
}

/// Chooses where the entry probe (and, for an allocation function, its return probe) of a
/// function goes; `code` holds its bytes from its start, `func_size` its size.
pub fn place_entry_probe(code: &[u8], func_size: u64, rules: &EntryRules) -> Placement {
    let entry = |why: String| Placement { offset: 0, reason: why };
    if func_size == 0 || func_size > MAX_FUNC_BYTES || (code.len() as u64) < func_size {
        return entry(format!("its {func_size} bytes cannot all be checked"));
    }
    let body = &code[..func_size as usize];
    let insns = match decode_all(body) {
        Ok(i) => i,
        Err(at) => return entry(format!("undecodable instruction at +{at}")),
    };
    let Some(first) = insns.first() else { return entry("no instructions".into()) };
    if let Some(what) = emulated_anyway(first, insn_bytes(body, first)) {
        return entry(format!("its first instruction ({what}) is already emulated"));
    }
    let mut factory = InstructionInfoFactory::new();
    let mut skipped = Vec::new();
    let mut stop = None;
    for (i, ins) in insns.iter().enumerate() {
        if let Some(what) = stop_here(ins, insn_bytes(body, ins)) {
            stop = Some((ins.ip(), what));
            break;
        }
        if skipped.len() >= MAX_SKIPPED_INSNS || ins.next_ip() > MAX_SKIPPED_BYTES {
            return entry(format!("no emulated instruction within {MAX_SKIPPED_INSNS} instructions / {MAX_SKIPPED_BYTES} bytes"));
        }
        if ins.is_jcc_short_or_near() {
            let after_null_check = i > 0 && rules.null_check.is_some_and(|r| is_null_check(&insns[i - 1], r));
            if ins.mnemonic() != Mnemonic::Je || !after_null_check {
                return entry(format!("cannot skip {} at +{}: a branch a call could take before the probe", name(ins), ins.ip()));
            }
        } else if ins.flow_control() != iced_x86::FlowControl::Next {
            return entry(format!("cannot skip {} at +{}: a branch, call or return", name(ins), ins.ip()));
        } else {
            let info = factory.info(ins);
            if info.used_memory().iter().any(|m| m.access() != OpAccess::NoMemAccess) {
                return entry(format!("cannot skip {} at +{}: it accesses memory", name(ins), ins.ip()));
            }
            for used in info.used_registers() {
                if matches!(used.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::None | OpAccess::NoMemAccess) {
                    continue;
                }
                let r = used.register().full_register();
                if r == Register::RSP || rules.preserve.contains(&r) {
                    return entry(format!("cannot skip {} at +{}: it writes {r:?}", name(ins), ins.ip()));
                }
            }
        }
        skipped.push(name(ins));
    }
    let Some((offset, what)) = stop else {
        return entry("no emulated instruction before the end of the function".into());
    };
    for ins in &insns {
        if let Some(t) = branch_target(ins) {
            if t > 0 && t <= offset {
                return entry(format!("{} at +{} targets +{t}, inside the skipped range", name(ins), ins.ip()));
            }
        }
    }
    Placement { offset, reason: format!("skips {}; {what} emulated", skipped.join("/")) }
}

/// `test %r,%r` or `cmp $0,%r` for register `r`.
fn is_null_check(ins: &iced_x86::Instruction, r: Register) -> bool {
    if ins.op_count() != 2 || ins.op0_kind() != OpKind::Register || ins.op0_register() != r {
        return false;
    }
    match ins.mnemonic() {
        Mnemonic::Test => ins.op1_kind() == OpKind::Register && ins.op1_register() == r,
        Mnemonic::Cmp => is_immediate(ins.op1_kind()) && ins.immediate(1) == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(preserve: &[Register], null_check: Option<Register>) -> EntryRules {
        EntryRules { preserve: preserve.to_vec(), null_check }
    }

    /// `code` followed by filler (`mov %rdi,%rax` x 8) and `ret`.
    fn body(head: &[u8]) -> Vec<u8> {
        let mut v = head.to_vec();
        for _ in 0..8 {
            v.extend_from_slice(&[0x48, 0x89, 0xf8]);
        }
        v.push(0xc3);
        v
    }

    #[test]
    fn pymalloc_malloc_moves_past_lea() {
        // pyenv 3.11's _PyObject_Malloc: lea -0x1(%rsi),%rax; push %rbx
        let code = body(&[0x48, 0x8d, 0x46, 0xff, 0x53]);
        let p = place_entry_probe(&code, code.len() as u64, &rules(&[Register::RSI], None));
        assert_eq!(p.offset, 4, "{}", p.reason);
        // Not when the entry program reads the register it writes.
        let p = place_entry_probe(&code, code.len() as u64, &rules(&[Register::RAX], None));
        assert_eq!(p.offset, 0, "{}", p.reason);
    }

    #[test]
    fn pymalloc_free_moves_past_its_null_check() {
        // _PyObject_Free: test %rsi,%rsi; je END; mov %rsi,%rcx; lea 0x10(%rip),%rdx; push %rbx
        let mut head = vec![0x48, 0x85, 0xf6, 0x74, 0x00, 0x48, 0x89, 0xf1, 0x48, 0x8d, 0x15, 0x10, 0, 0, 0, 0x53];
        let code = body(&head);
        head[4] = (code.len() - 1 - 5) as u8; // je → the final ret
        let code = body(&head);
        let r = rules(&[Register::RSI], Some(Register::RSI));
        let p = place_entry_probe(&code, code.len() as u64, &r);
        assert_eq!(p.offset, 15, "{}", p.reason);
        // A NULL check of another register does not make the je skippable.
        let p = place_entry_probe(&code, code.len() as u64, &rules(&[Register::RSI], Some(Register::RDI)));
        assert_eq!(p.offset, 0, "{}", p.reason);
        // An allocation function skips no branch.
        let p = place_entry_probe(&code, code.len() as u64, &rules(&[Register::RSI], None));
        assert_eq!(p.offset, 0, "{}", p.reason);
    }

    #[test]
    fn stack_and_memory_writes_stay() {
        // sub $8,%rsp; push %rbx
        let code = body(&[0x48, 0x83, 0xec, 0x08, 0x53]);
        assert_eq!(place_entry_probe(&code, code.len() as u64, &rules(&[], None)).offset, 0);
        // mov %rsi,(%rdi); push %rbx
        let code = body(&[0x48, 0x89, 0x37, 0x53]);
        assert_eq!(place_entry_probe(&code, code.len() as u64, &rules(&[], None)).offset, 0);
        // push first: stays at the entry.
        let code = body(&[0x53, 0x48, 0x8d, 0x46, 0xff]);
        assert_eq!(place_entry_probe(&code, code.len() as u64, &rules(&[], None)).offset, 0);
    }

    #[test]
    fn a_branch_into_the_skipped_range_stays() {
        // lea -0x1(%rsi),%rax; push %rbx; ...; jmp back to +0 .. +4
        let mut code = vec![0x48, 0x8d, 0x46, 0xff, 0x53, 0x90, 0x90];
        let at = code.len() as i8;
        code.extend_from_slice(&[0xeb, (4 - (at + 2)) as u8]); // jmp +4
        code.push(0xc3);
        let p = place_entry_probe(&code, code.len() as u64, &rules(&[Register::RSI], None));
        assert_eq!(p.offset, 0, "{}", p.reason);
    }
}
