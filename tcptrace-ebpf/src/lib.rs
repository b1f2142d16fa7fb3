//! Empty library target: it lets `tcptrace` name this crate as a build dependency, so cargo
//! rebuilds the userspace binary when the kernel program changes. The program is `main.rs`.
#![no_std]
