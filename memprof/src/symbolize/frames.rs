//! Frames built from what blazesym answers, or from what it could not name.

use blazesym::symbolize::{CodeInfo, Symbolized};

use super::UNMAPPED_MODULE;
use crate::report::Frame;

pub(super) fn module_base(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

pub(super) fn unknown_frame(module: &str, offset: u64) -> Frame {
    Frame {
        function: format!("{}+{:#x}", module_base(module), offset),
        file: None,
        line: None,
        module: module.to_string(),
        offset,
        inlined: false,
    }
}

/// A frame for an address in no mapping (kept for CFI-unwound stacks only).
pub(super) fn unmapped_frame(addr: u64) -> Frame {
    Frame {
        function: format!("{addr:#x}"),
        file: None,
        line: None,
        module: UNMAPPED_MODULE.to_string(),
        offset: addr,
        inlined: false,
    }
}

fn code_location(ci: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match ci {
        Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
        None => (None, None),
    }
}

/// One address → its frames, outermost function first, then the functions inlined into it.
pub(super) fn to_frames(module: &str, offset: u64, s: &Symbolized<'_>) -> Option<Vec<Frame>> {
    let Symbolized::Sym(sym) = s else { return None };
    let (file, line) = code_location(sym.code_info.as_deref());
    let mut frames = vec![Frame {
        function: sym.name.to_string(),
        file,
        line,
        module: module.to_string(),
        offset,
        inlined: false,
    }];
    for f in sym.inlined.iter() {
        let (file, line) = code_location(f.code_info.as_ref());
        frames.push(Frame {
            function: f.name.to_string(),
            file,
            line,
            module: module.to_string(),
            offset,
            inlined: true,
        });
    }
    Some(frames)
}
