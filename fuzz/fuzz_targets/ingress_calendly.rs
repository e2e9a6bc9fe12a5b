#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mxhook::fuzzing::ingress_calendly(data);
});
