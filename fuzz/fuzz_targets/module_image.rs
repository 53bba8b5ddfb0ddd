#![no_main]
//! See vgpu_host::fuzz::module_image.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_host::fuzz::module_image(data));
