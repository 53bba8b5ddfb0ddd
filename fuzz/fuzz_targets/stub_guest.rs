#![no_main]
//! See vgpu_stub::fuzz::guest.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_stub::fuzz::guest(data));
