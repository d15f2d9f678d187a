//! Stack unwinding without frame pointers, userspace half: turning an object's `.eh_frame` CFI
//! into the compact [`memprof_common::unwind::UnwindRow`] tables the kernel side walks.

pub mod loader;
pub mod table;
