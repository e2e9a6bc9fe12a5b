#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mxhook::fuzzing::smtp_data(data);
});
