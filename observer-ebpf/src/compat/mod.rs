//! The programs for kernels without BTF: without struct offsets, nothing can be read from
//! the kernel's own objects, so paths, argv and addresses come from the caller's memory,
//! read around the syscall (as a tracer without BTF must). The loader attaches these
//! instead of the kernel-view programs, and userspace marks every edge they could not make
//! exact (`pathResolved: false`, `pathFromCaller`, `addressFromCaller`).

pub mod connect;
pub mod exec;
pub mod open;
