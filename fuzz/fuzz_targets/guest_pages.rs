#![no_main]
//! See vgpu_host::fuzz::guest_pages.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_host::fuzz::guest_pages(data));
