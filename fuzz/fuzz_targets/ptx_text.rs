#![no_main]
//! See vgpu_host::fuzz::ptx_text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_host::fuzz::ptx_text(data));
