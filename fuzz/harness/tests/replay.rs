//! Replays the committed seed corpus of every fuzz target on stable, so a regression shows up
//! without nightly or libFuzzer.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn exit_decode() {
    replay("exit_decode", hvkit_fuzz_harness::exit_decode);
}

#[test]
fn exit_handling() {
    replay("exit_handling", hvkit_fuzz_harness::exit_handling);
}

#[test]
fn entry_check() {
    replay("entry_check", hvkit_fuzz_harness::entry_check);
}

#[test]
fn apic_ipi() {
    replay("apic_ipi", hvkit_fuzz_harness::apic_ipi);
}

#[test]
fn fred_frame() {
    replay("fred_frame", hvkit_fuzz_harness::fred_frame);
}

#[test]
fn exit_sequence() {
    replay("exit_sequence", hvkit_fuzz_harness::exit_sequence);
}

#[test]
fn event_model() {
    replay("event_model", hvkit_fuzz_harness::event_model);
}

/// Random inputs on stable too (a cheap stand-in for a fuzzer run where libFuzzer is absent).
#[test]
fn pseudo_random_inputs() {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut buffer = vec![0u8; 512];
    for _ in 0..20_000 {
        for byte in buffer.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let length = (state % 512) as usize;
        let data = &buffer[..length];
        hvkit_fuzz_harness::exit_decode(data);
        hvkit_fuzz_harness::entry_check(data);
        hvkit_fuzz_harness::exit_handling(data);
        hvkit_fuzz_harness::apic_ipi(data);
        hvkit_fuzz_harness::fred_frame(data);
        hvkit_fuzz_harness::event_model(data);
    }
    // The exit sequence costs more per input: fewer of them.
    for _ in 0..4_000 {
        for byte in buffer.iter_mut().take(200) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let length = (state % 200) as usize;
        hvkit_fuzz_harness::exit_sequence(&buffer[..length]);
    }
}
