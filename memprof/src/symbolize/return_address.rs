//! Whether an address on a stack is a return address: a call instruction ends just before it.

/// `b` = the 7 bytes before a return address: does a call instruction end there?
pub(super) fn looks_like_call_before(b: &[u8; 7]) -> bool {
    // call rel32: E8 + 4 bytes.
    if b[2] == 0xE8 {
        return true;
    }
    // call r/m64: [REX] FF /2 with ModRM reg field 2, 2..7 bytes long.
    (2..=7).any(|len| {
        let i = 7 - len;
        let (op, modrm) = if b[i] & 0xF0 == 0x40 && len >= 3 { (b[i + 1], b[i + 2]) } else { (b[i], b[i + 1]) };
        op == 0xFF && (modrm >> 3) & 7 == 2
    })
}

#[cfg(test)]
mod tests {
    use super::looks_like_call_before;

    #[test]
    fn recognises_calls() {
        // call rel32
        assert!(looks_like_call_before(&[0x90, 0x90, 0xE8, 1, 2, 3, 4]));
        // call *%rax (ff d0)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0, 0xFF, 0xD0]));
        // call *0x10(%rbx) (ff 53 10)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0xFF, 0x53, 0x10]));
        // call *%r11 (41 ff d3)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0x41, 0xFF, 0xD3]));
        // push/mov/ret: not a call
        assert!(!looks_like_call_before(&[0x48, 0x89, 0xe5, 0x55, 0x48, 0x89, 0xc3]));
        // jmp *%rax (ff e0): /4, not /2
        assert!(!looks_like_call_before(&[0, 0, 0, 0, 0, 0xFF, 0xE0]));
    }
}
