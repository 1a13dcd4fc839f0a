#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hvkit_fuzz_harness::exit_sequence(data);
});
