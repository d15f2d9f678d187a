//! memprof's kernel side: probes on the allocator functions and the mmap family of syscalls.
//!
//! Each program is a thin wrapper around a `try_*` function; the logic lives in [`alloc`],
//! [`free`] and [`mmap`], the maps in [`maps`] and the target filter in [`scope`]. Stacks are
//! walked by [`unwind`], which hands interpreter loops to the runtime walkers ([`runtime`],
//! [`python`], [`v8`]).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod free;
mod maps;
mod mmap;
mod process;
mod python;
mod rss;
mod runtime;
mod scope;
mod unwind;
mod v8;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
