//! V8's room (issue 11): naming the JavaScript frames of a Node process from V8's own memory,
//! with no flag on the target. This is the userspace foundation; it is not wired into the run
//! path yet (the kernel-side walker and `run/` come separately). The design, with what was
//! measured on five node binaries (Node 18–24), is in `DESIGN.md` beside this file.
//!
//! - [`elf`]: finding V8 in an ELF object (`node`, `libnode.so`): its `v8dbg_*` postmortem
//!   metadata, its version and `Bytecodes::kBytecodeSizes`.
//! - [`layout`]: every offset and type id the readers need, from that metadata plus the
//!   per-version fallbacks measured for issue 11 (V8 10.2 to 13.x).
//! - [`heap`]: reading V8 heap objects out of a live process (tagged pointers, maps, the
//!   SharedFunctionInfo → name / Script → file and line ends chain), [`strings`] for V8's string
//!   representations and [`positions`] for source position tables (interpreted frames' lines).
//!
//! The approach is the OpenTelemetry eBPF profiler's V8 unwinder
//! (`open-telemetry/opentelemetry-ebpf-profiler`, `interpreter/nodev8/v8.go`); each place an
//! idea was taken from it says so. The code is memprof's own.
//!
//! Everything read from the target is untrusted: the process keeps running, objects move
//! (compaction) and die. Every read is bounded and every pointer is type-checked through its
//! map before it is followed; garbage gives errors, never panics.

pub mod elf;
pub mod heap;
pub mod layout;
pub mod positions;
pub mod strings;

pub use elf::{V8Elf, V8Version};
pub use heap::{HeapError, JsFunctionName, Memory, NameFrom, Script, name_sfi};
pub use layout::{Layout, Unsupported};
