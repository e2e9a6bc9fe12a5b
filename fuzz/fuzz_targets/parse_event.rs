#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mxhook::fuzzing::parse_event(data);
});
