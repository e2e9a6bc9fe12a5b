#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mxhook::fuzzing::proxy_header(data);
});
