#![no_std]
// This crate is built for the BPF target by memprof's build.rs (aya-build); the library target
// exists only so that the workspace can depend on it for rebuild tracking.
