//! Where the entry probe of a free-like function goes.
//!
//! A uprobe replaces one instruction with `int3`. On the trap the kernel runs the BPF program
//! and then has to execute the instruction it replaced: a few kinds it *emulates* (it updates
//! the registers itself and resumes after the instruction), every other kind it copies to a
//! per-thread slot and *single-steps* out of line, which costs a second trap. On the machine
//! this was measured on, that second trap made glibc's `free` probe cost 13.7 µs more per call
//! than one on an emulated instruction (0.94 µs) — and free is called as often as malloc.
//!
//! What x86-64 kernels emulate (arch/x86/kernel/uprobes.c, `arch_uprobe_analyze_insn`):
//! - `branch_setup_xol_ops`: `jmp rel8`/`jmp rel32`, `call rel32`, `jcc rel8`/`jcc rel32`
//!   (none with a 0x66 prefix), and `nop` (0x90; older 6.x: `case 0x90`, newer: any NOP
//!   recognised by `insn_is_nop`, emulated as a jump of offset 0);
//! - `push_setup_xol_ops`: `push r64` as 0x50..0x57, or 0x41 0x50..0x57 (r8..r15), nothing else.
//!
//! We count only what every 6.x kernel emulates: the plain one-byte `nop` and those pushes (a
//! multi-byte NOP is emulated by recent kernels only, so it is not a place to stop at).
//!
//! glibc's `free` starts with `test %rdi,%rdi; je <return>` — the `free(NULL)` check — and the
//! `test` is single-stepped. Its first emulated instruction, `push %rbp`, comes right after. A
//! probe there sees every call that frees something, with the pointer still in %rdi. The skipped
//! instructions still run (the probe only moves); all that matters is that (a) no path leaves
//! the skipped range except the `free(NULL)` one, (b) the pointer register is unchanged at the
//! probe, and (c) nothing jumps back into the skipped range (a second hit of the probe on a path
//! the entry probe would not have seen, with something else in %rdi).
//!
//! [`place_free_probe`] moves the probe only when all of these can be shown from the bytes:
//!
//! 1. If the first instruction is already emulated, the probe stays at the entry.
//! 2. Every skipped instruction writes no general-purpose register and no memory (flags only):
//!    `test r,r`, `cmp r,r`, `cmp r,imm`, `endbr64`; or a `je`/`jz` directly after
//!    `test %rdi,%rdi` / `cmp $0,%rdi` (a NULL check of the first argument: the branch is taken
//!    only for `free(NULL)`, which frees nothing). Any other branch, call or return, or another
//!    conditional branch, keeps the probe at the entry.
//! 3. The walk stops at the first instruction every 6.x kernel emulates (`push r64`, `nop`): the
//!    probe goes there.
//! 4. That offset is an instruction boundary (from the decoder), inside the function, after at
//!    most [`MAX_SKIPPED_INSNS`] instructions and [`MAX_SKIPPED_BYTES`] bytes.
//! 5. No skipped instruction writes %rdi (implied by 2; checked again from the decoder's
//!    register-use information, together with "no register or memory written").
//! 6. No direct branch or call anywhere in the function targets an address in (entry, probe]:
//!    the whole function (its symbol size, at most [`MAX_FUNC_BYTES`]) is decoded to check. An
//!    undecodable instruction, a function without a size or larger than that cap keeps the
//!    probe at the entry. (Indirect jumps, e.g. through a jump table, and jumps from other
//!    functions cannot be seen; a compiler does not target a function's NULL check from there.)

use std::{fs::File, io, os::unix::fs::FileExt, path::Path};

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// Most instructions skipped before the probe.
pub const MAX_SKIPPED_INSNS: usize = 4;
/// Farthest the probe moves from the entry, in bytes.
pub const MAX_SKIPPED_BYTES: u64 = 32;
/// Largest function decoded whole (rule 6); a larger one keeps its probe at the entry.
pub const MAX_FUNC_BYTES: u64 = 4096;

/// Where to put the probe, relative to the symbol's start, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes after the symbol's start (0: the entry).
    pub offset: u64,
    pub reason: String,
}

impl Placement {
    fn entry(reason: impl Into<String>) -> Placement {
        Placement {
            offset: 0,
            reason: reason.into(),
        }
    }
}

/// Reads up to `len` bytes of `path` at `file_offset` (fewer at the end of the file).
pub fn read_code(path: &Path, file_offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], file_offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// How many bytes of a function [`place_free_probe`] needs: the whole function, up to
/// [`MAX_FUNC_BYTES`].
pub fn code_len(func_size: u64) -> usize {
    func_size.min(MAX_FUNC_BYTES) as usize
}

/// Chooses the probe offset of a free-like function from its code: `code` holds the function's
/// bytes from its start (at least `func_size` of them, see [`code_len`]), `func_size` is the
/// symbol's size. See the module documentation for the rules; when one of them cannot be shown
/// to hold, the probe stays at the entry (offset 0) and `reason` says why.
pub fn place_free_probe(code: &[u8], func_size: u64) -> Placement {
    if func_size == 0 {
        return Placement::entry("the symbol has no size: its branches cannot be checked");
    }
    if func_size > MAX_FUNC_BYTES {
        return Placement::entry(format!(
            "the function is {func_size} bytes, more than the {MAX_FUNC_BYTES} decoded to check its branches"
        ));
    }
    if (code.len() as u64) < func_size {
        return Placement::entry(format!(
            "only {} of its {func_size} bytes could be read",
            code.len()
        ));
    }
    let body = &code[..func_size as usize];
    let insns = match decode_all(body) {
        Ok(insns) => insns,
        Err(at) => return Placement::entry(format!("undecodable instruction at +{at}")),
    };
    let Some(first) = insns.first() else {
        return Placement::entry("no instructions");
    };
    if let Some(what) = emulated_anyway(first, insn_bytes(body, first)) {
        return Placement::entry(format!(
            "its first instruction ({what}) is already emulated"
        ));
    }

    // Rules 2-5: walk from the entry to the first emulated instruction.
    let mut skipped: Vec<&Instruction> = Vec::new();
    let mut stop = None;
    for ins in &insns {
        if let Some(what) = stop_here(ins, insn_bytes(body, ins)) {
            stop = Some((ins.ip(), what));
            break;
        }
        if skipped.len() >= MAX_SKIPPED_INSNS || ins.next_ip() > MAX_SKIPPED_BYTES {
            return Placement::entry(format!(
                "no emulated instruction within the first {MAX_SKIPPED_INSNS} instructions / {MAX_SKIPPED_BYTES} bytes"
            ));
        }
        if let Err(why) = writes_nothing(ins).and_then(|()| may_skip(ins, skipped.last().copied()))
        {
            return Placement::entry(format!("cannot skip {} at +{}: {why}", name(ins), ins.ip()));
        }
        skipped.push(ins);
    }
    let Some((offset, stop_name)) = stop else {
        return Placement::entry("no emulated instruction before the end of the function");
    };
    debug_assert!(offset > 0 && offset < func_size);

    // Rule 6: nothing may jump into (entry, probe].
    for ins in &insns {
        if let Some(target) = branch_target(ins) {
            if target > 0 && target <= offset {
                return Placement::entry(format!(
                    "{} at +{} targets +{target}, inside the skipped range (0, +{offset}]",
                    name(ins),
                    ins.ip()
                ));
            }
        }
    }

    let null_check = skipped
        .iter()
        .any(|i| i.condition_code() == ConditionCode::e);
    let names: Vec<String> = skipped.iter().map(|i| name(i)).collect();
    Placement {
        offset,
        reason: format!(
            "skips {}{}; {stop_name} emulated",
            names.join("/"),
            if null_check { " null check" } else { "" }
        ),
    }
}

/// Decodes `body` as 64-bit code with instruction pointers = offsets from its start; the
/// offset of the first invalid (or truncated) instruction is the error.
pub(super) fn decode_all(body: &[u8]) -> Result<Vec<Instruction>, u64> {
    let mut decoder = Decoder::with_ip(64, body, 0, DecoderOptions::NONE);
    let mut insns = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return Err(ins.ip());
        }
        insns.push(ins);
    }
    Ok(insns)
}

pub(super) fn insn_bytes<'a>(body: &'a [u8], ins: &Instruction) -> &'a [u8] {
    &body[ins.ip() as usize..ins.next_ip() as usize]
}

/// The instruction's mnemonic in lower case (`test`, `je`, `push`).
pub(super) fn name(ins: &Instruction) -> String {
    format!("{:?}", ins.mnemonic()).to_lowercase()
}

/// `push r64` exactly as the kernel emulates it: 0x50..0x57, or 0x41 0x50..0x57.
fn is_emulated_push(bytes: &[u8]) -> bool {
    match bytes {
        [op] => (0x50..=0x57).contains(op),
        [0x41, op] => (0x50..=0x57).contains(op),
        _ => false,
    }
}

/// The one-byte `nop`, emulated by every 6.x kernel.
fn is_emulated_nop(bytes: &[u8]) -> bool {
    bytes == [0x90]
}

/// Where the walk stops: an instruction every 6.x kernel emulates and that does not branch.
pub(super) fn stop_here(_ins: &Instruction, bytes: &[u8]) -> Option<&'static str> {
    if is_emulated_push(bytes) {
        Some("push")
    } else if is_emulated_nop(bytes) {
        Some("nop")
    } else {
        None
    }
}

/// Whether the kernel emulates this instruction (push, nop, or an unprefixed relative
/// jmp/call/jcc), with a short name for it.
pub(super) fn emulated_anyway(ins: &Instruction, bytes: &[u8]) -> Option<String> {
    if let Some(what) = stop_here(ins, bytes) {
        return Some(what.to_string());
    }
    let unprefixed_branch = match bytes {
        [0xeb, _] | [0xe9, _, _, _, _] | [0xe8, _, _, _, _] => true,
        [op, _] => (0x70..=0x7f).contains(op),
        [0x0f, op, _, _, _, _] => (0x80..=0x8f).contains(op),
        _ => false,
    };
    unprefixed_branch.then(|| name(ins))
}

pub(super) fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// `test %rdi,%rdi` or `cmp $0,%rdi`: flags set by whether the first argument is NULL.
fn is_null_check_of_rdi(ins: &Instruction) -> bool {
    if ins.op_count() != 2
        || ins.op0_kind() != OpKind::Register
        || ins.op0_register() != Register::RDI
    {
        return false;
    }
    match ins.mnemonic() {
        Mnemonic::Test => ins.op1_kind() == OpKind::Register && ins.op1_register() == Register::RDI,
        Mnemonic::Cmp => is_immediate(ins.op1_kind()) && ins.immediate(1) == 0,
        _ => false,
    }
}

/// Rule 2: the allow-list of instructions the probe may be placed after.
fn may_skip(ins: &Instruction, prev: Option<&Instruction>) -> Result<(), String> {
    let reg = |k: OpKind| k == OpKind::Register;
    match ins.mnemonic() {
        Mnemonic::Endbr64 => return Ok(()),
        Mnemonic::Test if ins.op_count() == 2 && reg(ins.op0_kind()) && reg(ins.op1_kind()) => {
            return Ok(())
        }
        Mnemonic::Cmp
            if ins.op_count() == 2
                && reg(ins.op0_kind())
                && (reg(ins.op1_kind()) || is_immediate(ins.op1_kind())) =>
        {
            return Ok(())
        }
        _ => {}
    }
    if ins.is_jcc_short_or_near() {
        if !matches!(ins.code(), Code::Je_rel8_64 | Code::Je_rel32_64) {
            return Err(
                "a conditional branch other than je: a non-NULL pointer could bypass the probe"
                    .into(),
            );
        }
        if !prev.is_some_and(is_null_check_of_rdi) {
            return Err("a je that does not directly follow a NULL check of %rdi (test %rdi,%rdi / cmp $0,%rdi)".into());
        }
        return Ok(());
    }
    use iced_x86::FlowControl as F;
    match ins.flow_control() {
        F::Next => {
            Err("not a flag-only instruction (test r,r / cmp r,r / cmp r,imm / endbr64)".into())
        }
        _ => Err("a branch, call or return: a path could leave before the probe".into()),
    }
}

/// Rule 5 (and the "flags only" part of rule 2), from the decoder's register and memory use:
/// no register (%rdi above all) and no memory written.
fn writes_nothing(ins: &Instruction) -> Result<(), String> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(ins);
    for used in info.used_registers() {
        if !matches!(
            used.access(),
            OpAccess::Read | OpAccess::CondRead | OpAccess::None | OpAccess::NoMemAccess
        ) {
            let r = used.register();
            return Err(if r.full_register() == Register::RDI {
                "it writes %rdi, the pointer being freed".into()
            } else {
                format!("it writes {}", format!("{r:?}").to_lowercase())
            });
        }
    }
    if info
        .used_memory()
        .iter()
        .any(|m| m.access() != OpAccess::NoMemAccess)
    {
        return Err("it accesses memory".into());
    }
    Ok(())
}

/// The target of a direct (relative) branch or call, as an offset from the function's start.
pub(super) fn branch_target(ins: &Instruction) -> Option<u64> {
    (0..ins.op_count())
        .any(|i| {
            matches!(
                ins.op_kind(i),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        })
        .then(|| ins.near_branch_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of filler (`mov %rdi,%rax` x n, then `ret`) so the function has some size.
    fn with_tail(head: &[u8], filler: usize) -> Vec<u8> {
        let mut v = head.to_vec();
        for _ in 0..filler {
            v.extend_from_slice(&[0x48, 0x89, 0xf8]);
        }
        v.push(0xc3);
        v
    }

    fn place(code: &[u8]) -> Placement {
        let p = place_free_probe(code, code.len() as u64);
        eprintln!(
            "{:02x?} -> +{} ({})",
            &code[..code.len().min(16)],
            p.offset,
            p.reason
        );
        p
    }

    /// `test %rdi,%rdi; je +0x20; push %rbp; ...` with the je landing on the final `ret`.
    fn glibc_like() -> Vec<u8> {
        // 0: 48 85 ff  3: 0f 84 rel32  9: 55  10: filler x n  end: ret
        let filler = 10;
        let ret_at = 10 + 3 * filler as i32;
        let rel = ret_at - 9;
        let mut head = vec![0x48, 0x85, 0xff, 0x0f, 0x84];
        head.extend_from_slice(&rel.to_le_bytes());
        head.push(0x55);
        with_tail(&head, filler)
    }

    #[test]
    fn glibc_prologue_moves_to_push() {
        let p = place(&glibc_like());
        assert_eq!(p.offset, 9, "{}", p.reason);
        assert_eq!(p.reason, "skips test/je null check; push emulated");
    }

    #[test]
    fn short_je_and_cmp_zero() {
        // cmp $0,%rdi; je +N; push %rbx
        let mut head = vec![0x48, 0x83, 0xff, 0x00, 0x74, 0x00, 0x53];
        let code = with_tail(&head, 4);
        head[5] = (code.len() - 1 - 6) as u8; // je → the ret
        let code = with_tail(&head, 4);
        assert_eq!(place(&code).offset, 6);
    }

    #[test]
    fn push_first_stays() {
        let p = place(&with_tail(&[0x55, 0x48, 0x85, 0xff], 2));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("already emulated"), "{}", p.reason);
        // push %r12 (41 54) too.
        assert_eq!(place(&with_tail(&[0x41, 0x54], 2)).offset, 0);
    }

    #[test]
    fn endbr64_then_push() {
        let p = place(&with_tail(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 2));
        assert_eq!(p.offset, 4, "{}", p.reason);
        // endbr64; push %r15 (41 57)
        assert_eq!(
            place(&with_tail(&[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x57], 2)).offset,
            4
        );
        // endbr64; nop
        assert_eq!(
            place(&with_tail(&[0xf3, 0x0f, 0x1e, 0xfa, 0x90, 0x55], 2)).offset,
            4
        );
    }

    #[test]
    fn jne_after_null_check_stays() {
        // test %rdi,%rdi; jne +1; push %rbp
        let p = place(&with_tail(&[0x48, 0x85, 0xff, 0x75, 0x01, 0x55], 2));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("other than je"), "{}", p.reason);
    }

    #[test]
    fn writing_the_pointer_stays() {
        // mov %rsi,%rdi; push %rbp
        let p = place(&with_tail(&[0x48, 0x89, 0xf7, 0x55], 2));
        assert_eq!(p.offset, 0);
        assert!(
            p.reason.contains("mov at +0: it writes %rdi"),
            "{}",
            p.reason
        );
        // lea -0x10(%rdi),%rdi; push %rbp
        let p = place(&with_tail(&[0x48, 0x8d, 0x7f, 0xf0, 0x55], 2));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("writes %rdi"), "{}", p.reason);
        // test %rdi,%rdi; je; xor %edi,%edi; push %rbp (a 32-bit write of the pointer register)
        let p = place(&with_tail(
            &[0x48, 0x85, 0xff, 0x74, 0x09, 0x31, 0xff, 0x55],
            2,
        ));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("writes %rdi"), "{}", p.reason);
    }

    #[test]
    fn null_check_of_another_register_stays() {
        // test %rsi,%rsi; je +1; push %rbp
        let p = place(&with_tail(&[0x48, 0x85, 0xf6, 0x74, 0x01, 0x55], 2));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("NULL check of %rdi"), "{}", p.reason);
        // test %edi,%edi (32 bits only) is not a pointer check either.
        assert_eq!(
            place(&with_tail(&[0x85, 0xff, 0x74, 0x01, 0x55], 2)).offset,
            0
        );
        // je after an endbr64, not after the test.
        assert_eq!(
            place(&with_tail(
                &[0x48, 0x85, 0xff, 0xf3, 0x0f, 0x1e, 0xfa, 0x74, 0x01, 0x55],
                2
            ))
            .offset,
            0
        );
    }

    #[test]
    fn branch_back_into_skipped_range_stays() {
        // 0: test %rdi,%rdi  3: je → 14  5: push %rbp  6: mov x2  12: jmp → 5 (the probe itself)
        let code = [
            0x48, 0x85, 0xff, 0x74, 0x09, 0x55, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf8, 0xeb, 0xf7,
            0xc3,
        ];
        let p = place(&code);
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("targets +5"), "{}", p.reason);
        // ... → 3 (the je)
        let mut code2 = code;
        code2[13] = 0xf5;
        assert_eq!(place(&code2).offset, 0);
        // ... → 0 (the entry: fine, the entry is not skipped) — the probe moves.
        let mut code3 = code;
        code3[13] = 0xf2;
        assert_eq!(place(&code3).offset, 5);
        // A call into the range counts too.
        let call = [
            0x48, 0x85, 0xff, 0x74, 0x06, 0x55, 0xe8, 0xf8, 0xff, 0xff, 0xff, 0xc3,
        ];
        assert_eq!(place(&call).offset, 0);
    }

    #[test]
    fn undecodable_or_truncated_stays() {
        // Truncated: the je's rel32 is cut.
        let p = place(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0x10]);
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("undecodable"), "{}", p.reason);
        // Fewer bytes than the symbol's size.
        let g = glibc_like();
        let p = place_free_probe(&g[..20], g.len() as u64);
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("could be read"), "{}", p.reason);
        // Invalid opcode (0x06 is invalid in 64-bit mode) later in the body.
        let mut bad = glibc_like();
        let n = bad.len();
        bad[n - 2] = 0x06;
        bad[n - 3] = 0x06;
        bad[n - 4] = 0x06;
        assert_eq!(place(&bad).offset, 0);
        // No size, too large, empty.
        assert_eq!(place_free_probe(&g, 0).offset, 0);
        assert_eq!(place_free_probe(&g, MAX_FUNC_BYTES + 1).offset, 0);
        assert_eq!(place_free_probe(&[], 0).offset, 0);
    }

    #[test]
    fn other_cases_stay() {
        // A call first (emulated).
        assert_eq!(place(&with_tail(&[0xe8, 0, 0, 0, 0, 0x55], 1)).offset, 0);
        // sub $8,%rsp first (writes rsp).
        assert_eq!(
            place(&with_tail(&[0x48, 0x83, 0xec, 0x08, 0x55], 1)).offset,
            0
        );
        // A memory compare: cmp $0,(%rdi).
        assert_eq!(
            place(&with_tail(&[0x48, 0x83, 0x3f, 0x00, 0x55], 1)).offset,
            0
        );
        // Too many skipped instructions: 5 x test %rax,%rax then push.
        let mut many = Vec::new();
        for _ in 0..5 {
            many.extend_from_slice(&[0x48, 0x85, 0xc0]);
        }
        many.push(0x55);
        let p = place(&with_tail(&many, 1));
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("first 4 instructions"), "{}", p.reason);
        // 4 are fine.
        assert_eq!(place(&with_tail(&many[3..], 1)).offset, 12);
        // A 2-byte REX push other than 0x41 (40 55) is not emulated; multi-byte nop neither.
        assert_eq!(
            place(&with_tail(&[0x48, 0x85, 0xc0, 0x40, 0x55], 1)).offset,
            0
        );
        assert_eq!(
            place(&with_tail(&[0x48, 0x85, 0xc0, 0x66, 0x90], 1)).offset,
            0
        );
        // No emulated instruction at all.
        assert_eq!(place(&[0x48, 0x85, 0xff, 0xc3]).offset, 0);
    }

    /// The C library of this machine: free must move to the first push after its NULL check.
    #[test]
    fn real_libc_free() {
        let Some(libc) = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib64/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file()) else {
            eprintln!("no glibc found: skipped");
            return;
        };
        let info = crate::attach::elf::scan_allocator_symbols(libc).expect("scan libc");
        let free = info
            .symbols
            .iter()
            .find(|s| s.name == "free")
            .expect("libc defines free");
        let code = read_code(libc, free.file_offset, code_len(free.size)).expect("read free");
        let p = place_free_probe(&code, free.size);
        eprintln!(
            "{}: {} at file offset {:#x}, {} bytes; first bytes {:02x?}\n  → +{} ({})",
            libc.display(),
            free.symbol,
            free.file_offset,
            free.size,
            &code[..code.len().min(16)],
            p.offset,
            p.reason
        );
        let insns = decode_all(&code).expect("free decodes");
        if insns[0].mnemonic() == Mnemonic::Push {
            assert_eq!(p.offset, 0, "free starts with a push: nothing to move");
            return;
        }
        // The expected place: just after the test/je NULL check, on the first push.
        let je = insns
            .iter()
            .position(|i| i.code() == Code::Je_rel8_64 || i.code() == Code::Je_rel32_64)
            .expect("a je in free");
        assert!(
            is_null_check_of_rdi(&insns[je - 1]),
            "the je follows a NULL check of %rdi"
        );
        let push = &insns[je + 1];
        assert!(
            is_emulated_push(insn_bytes(&code, push)),
            "a push follows the null check"
        );
        assert_eq!(p.offset, push.ip(), "{}", p.reason);
        assert!(p.offset > 0);
    }
}
