//! The FRED-state controls: capability report, adjustment and the write of field 0x2044,
//! on the capability MSRs recorded from Bochs (upstream FRED build and Debian 3.1).

use super::tests::{SKYLAKE_X, WILDCAT_LAKE, minimal};
use super::*;
use crate::caps::{FredControlSupport, RecordedMsrs, VmxCapabilities, msr};
use crate::error::VmInstructionError;
use crate::vmcs::SoftVmcs;
use crate::vmcs::test_support::FailingWrite;
use std::vec::Vec;

/// Debian testing's Bochs 3.1 `wildcat_lake` (built without FRED): BASIC, EXIT and ENTRY as
/// recorded; the TRUE exit/entry MSRs are not recorded and are modelled the way the recorded
/// pairs differ (allowed-0 bit 2 cleared); EXIT_CTLS2 is not recorded (absent).
const DEBIAN_WILDCAT_LAKE: &[(u32, u64)] = &[
    (msr::IA32_VMX_BASIC, 0x01D8_1000_0000_0004),
    (msr::IA32_VMX_PINBASED_CTLS, 0x0000_00FF_0000_0016),
    (msr::IA32_VMX_PROCBASED_CTLS, 0xFFFB_FFFE_0401_E172),
    (msr::IA32_VMX_EXIT_CTLS, 0xF87F_FFFF_0003_6DFF),
    (msr::IA32_VMX_ENTRY_CTLS, 0x0058_FFFF_0000_11FF),
    (msr::IA32_VMX_MISC, 0x6004_01E0),
    (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
    (msr::IA32_VMX_CR0_FIXED1, 0xFFFF_FFFF),
    (msr::IA32_VMX_CR4_FIXED0, 0x2000),
    (msr::IA32_VMX_CR4_FIXED1, 0x0037_27FF),
    (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_00FF_0000_0016),
    (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xFFFB_FFFE_0400_6172),
    (msr::IA32_VMX_TRUE_EXIT_CTLS, 0xF87F_FFFF_0003_6DFB),
    (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0058_FFFF_0000_11FB),
];

/// Upstream wildcat_lake with the FRED controls offered: ENTRY allowed-1 bit 23 added and
/// EXIT_CTLS2 = `exit_ctls2` (a processor that virtualizes FRED; no emulator here has it).
fn wildcat_offering(exit_ctls2: u64) -> VmxCapabilities {
    let mut msrs: Vec<(u32, u64)> = WILDCAT_LAKE.to_vec();
    for (number, value) in &mut msrs {
        match *number {
            msr::IA32_VMX_ENTRY_CTLS | msr::IA32_VMX_TRUE_ENTRY_CTLS => *value |= 1 << (32 + 23),
            msr::IA32_VMX_EXIT_CTLS2 => *value = exit_ctls2,
            _ => {}
        }
    }
    VmxCapabilities::read(&RecordedMsrs(&msrs)).unwrap()
}

fn caps(msrs: &[(u32, u64)]) -> VmxCapabilities {
    VmxCapabilities::read(&RecordedMsrs(msrs)).unwrap()
}

#[test]
fn capability_report_on_recorded_bochs() {
    // Bochs 2.7 skylake: nothing (exit allowed-1 bit 31 is 0, so EXIT_CTLS2 is not read).
    assert_eq!(caps(SKYLAKE_X).fred_controls(), FredControlSupport::default());
    // Upstream Bochs wildcat_lake: exit bit 31 allowed, EXIT_CTLS2 offers nothing, entry
    // bit 23 not allowed (ENTRY allowed-1 0x0000FFFF).
    let upstream = caps(WILDCAT_LAKE).fred_controls();
    assert_eq!(
        upstream,
        FredControlSupport {
            load_guest_on_entry: false,
            secondary_exit_controls: true,
            save_guest_on_exit: false,
            load_host_on_exit: false,
        }
    );
    assert!(!upstream.complete());
    // Debian 3.1 wildcat_lake: exit bit 31 allowed-1 but EXIT_CTLS2 absent; entry allowed-1
    // 0x0058FFFF has bits 19, 20, 22 but not 23.
    let debian = caps(DEBIAN_WILDCAT_LAKE).fred_controls();
    assert_eq!(debian, FredControlSupport::default());
}

#[test]
fn capability_report_each_bit_both_sides() {
    assert!(wildcat_offering(0b11).fred_controls().complete());
    let save_only = wildcat_offering(0b01).fred_controls();
    assert!(save_only.save_guest_on_exit && !save_only.load_host_on_exit);
    assert!(!save_only.complete());
    let load_only = wildcat_offering(0b10).fred_controls();
    assert!(!load_only.save_guest_on_exit && load_only.load_host_on_exit);
    assert!(!load_only.complete());
    // Other EXIT_CTLS2 bits do not count as FRED.
    let other = wildcat_offering(!0b11).fred_controls();
    assert!(!other.save_guest_on_exit && !other.load_host_on_exit);
    let entry_only = FredControlSupport { load_guest_on_entry: true, ..Default::default() };
    assert!(!entry_only.complete());
    let all = FredControlSupport {
        load_guest_on_entry: true,
        secondary_exit_controls: true,
        save_guest_on_exit: true,
        load_host_on_exit: true,
    };
    assert!(all.complete());
    assert!(!FredControlSupport { load_guest_on_entry: false, ..all }.complete());
    assert!(!FredControlSupport { save_guest_on_exit: false, ..all }.complete());
    assert!(!FredControlSupport { load_host_on_exit: false, ..all }.complete());
    let no_secondary = FredControlSupport {
        load_guest_on_entry: true,
        secondary_exit_controls: false,
        save_guest_on_exit: true,
        load_host_on_exit: true,
    };
    assert!(!no_secondary.complete());
}

#[test]
fn with_fred_state_adds_exactly_the_three_controls() {
    let request = minimal().with_fred_state();
    assert_eq!(request.entry, EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_FRED);
    assert_eq!(request.secondary_exit.bits(), 0b11);
    assert_eq!(request.exit, minimal().exit, "bit 31 is added by adjust, not here");
    assert_eq!((request.pin, request.primary), (minimal().pin, minimal().primary));
    // Already present: unchanged.
    assert_eq!(request.with_fred_state(), request);
}

#[test]
fn adjust_produces_field_0x2044_where_offered() {
    let adjusted = adjust(&wildcat_offering(0b11), &minimal().with_fred_state()).unwrap();
    assert_eq!(adjusted.entry.bits(), 0x13FB | (1 << 23));
    assert_eq!(adjusted.exit.bits(), 0x0003_6FFB | (1 << 31));
    assert_eq!(adjusted.secondary_exit.bits(), 0b11);
    assert!(adjusted.fred_state());
    // Without the request nothing FRED is set.
    let plain = adjust(&wildcat_offering(0b11), &minimal()).unwrap();
    assert!(!plain.fred_state());
    assert_eq!(plain.exit.bits() & (1 << 31), 0);
    assert!(plain.secondary_exit.is_empty());
}

#[test]
fn adjust_never_requests_what_the_msrs_do_not_allow() {
    let request = minimal().with_fred_state();
    let cannot = |set, bit| Err(ControlError::CannotSet { set, bit });
    // Upstream Bochs: EXIT_CTLS2 offers nothing: save FRED (bit 0) is the first refused.
    assert_eq!(adjust(&caps(WILDCAT_LAKE), &request), cannot(ControlSet::SecondaryExit, 0));
    // Debian 3.1: EXIT_CTLS2 absent.
    assert_eq!(adjust(&caps(DEBIAN_WILDCAT_LAKE), &request), cannot(ControlSet::SecondaryExit, 0));
    // Skylake: the activation bit itself.
    assert_eq!(adjust(&caps(SKYLAKE_X), &request), cannot(ControlSet::Exit, 31));
    // One of the two secondary bits missing.
    assert_eq!(adjust(&wildcat_offering(0b01), &request), cannot(ControlSet::SecondaryExit, 1));
    assert_eq!(adjust(&wildcat_offering(0b10), &request), cannot(ControlSet::SecondaryExit, 0));
    // Secondary exit controls fine, entry bit 23 not offered (upstream ENTRY MSR).
    let mut msrs: Vec<(u32, u64)> = WILDCAT_LAKE.to_vec();
    for (number, value) in &mut msrs {
        if *number == msr::IA32_VMX_EXIT_CTLS2 {
            *value = 0b11;
        }
    }
    assert_eq!(adjust(&caps(&msrs), &request), cannot(ControlSet::Entry, 23));
}

#[test]
fn fred_state_needs_every_bit() {
    let full = adjust(&wildcat_offering(0b11), &minimal().with_fred_state()).unwrap();
    assert!(full.fred_state());
    let no_entry = AdjustedControls { entry: full.entry - EntryControls::LOAD_FRED, ..full };
    assert!(!no_entry.fred_state());
    let no_activation =
        AdjustedControls { exit: full.exit - ExitControls::ACTIVATE_SECONDARY_CONTROLS, ..full };
    assert!(!no_activation.fred_state());
    for missing in [SecondaryExitControls::SAVE_FRED, SecondaryExitControls::LOAD_FRED] {
        let partial = AdjustedControls { secondary_exit: full.secondary_exit - missing, ..full };
        assert!(!partial.fred_state(), "{missing:?}");
    }
}

#[test]
fn write_puts_each_control_in_its_field_and_0x2044_only_when_activated() {
    let full = adjust(&wildcat_offering(0b11), &minimal().with_fred_state()).unwrap();
    let mut vmcs = SoftVmcs::new();
    vmcs.write(field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, 0xDEAD).unwrap();
    full.write(&mut vmcs).unwrap();
    assert_eq!(vmcs.read(field::PIN_BASED_VM_EXECUTION_CONTROLS).unwrap(), full.pin.bits());
    assert_eq!(
        vmcs.read(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap(),
        full.primary.bits()
    );
    assert_eq!(vmcs.read(field::PRIMARY_VM_EXIT_CONTROLS).unwrap(), full.exit.bits());
    assert_eq!(vmcs.read(field::SECONDARY_VM_EXIT_CONTROLS).unwrap(), 0b11);
    assert_eq!(vmcs.read(field::VM_ENTRY_CONTROLS).unwrap(), full.entry.bits());
    // Secondary processor-based controls not activated: the field is not written.
    assert_eq!(vmcs.read(field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap(), 0xDEAD);
    let encodings: Vec<u32> = full.fields().iter().flatten().map(|(e, _)| *e).collect();
    assert_eq!(encodings, [0x4000, 0x4002, 0x400C, 0x2044, 0x4012]);

    // A processor without field 0x2044 (no secondary exit controls): the plain controls are
    // written without it.
    let plain = adjust(&caps(SKYLAKE_X), &minimal()).unwrap();
    let mut old = SoftVmcs::with_supported(|info| info.field_encoding().raw() & !1 != 0x2044);
    plain.write(&mut old).unwrap();
    assert_eq!(old.read(field::PRIMARY_VM_EXIT_CONTROLS).unwrap(), 0x0003_6FFB);
    let encodings: Vec<u32> = plain.fields().iter().flatten().map(|(e, _)| *e).collect();
    assert_eq!(encodings, [0x4000, 0x4002, 0x400C, 0x4012]);
}

#[test]
fn write_with_activated_optional_sets() {
    let controls = AdjustedControls {
        pin: PinBasedControls::empty(),
        primary: PrimaryControls::ACTIVATE_SECONDARY_CONTROLS
            | PrimaryControls::ACTIVATE_TERTIARY_CONTROLS,
        secondary: SecondaryControls::ENABLE_EPT,
        tertiary: TertiaryControls::IPI_VIRTUALIZATION,
        exit: ExitControls::empty(),
        secondary_exit: SecondaryExitControls::LOAD_FRED,
        entry: EntryControls::empty(),
    };
    let mut vmcs = SoftVmcs::new();
    vmcs.write(field::SECONDARY_VM_EXIT_CONTROLS, 0x77).unwrap();
    controls.write(&mut vmcs).unwrap();
    assert_eq!(vmcs.read(field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap(), 2);
    assert_eq!(vmcs.read(field::TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap(), 1 << 4);
    assert_eq!(vmcs.read(field::SECONDARY_VM_EXIT_CONTROLS).unwrap(), 0x77, "exit bit 31 clear");
}

#[test]
fn a_failed_write_leaves_the_vmcs_as_it_was() {
    let full = adjust(&wildcat_offering(0b11), &minimal().with_fred_state()).unwrap();
    // No field 0x2044: the read before writing fails, nothing is written.
    let mut vmcs = SoftVmcs::with_supported(|info| info.field_encoding().raw() & !1 != 0x2044);
    vmcs.write(field::PRIMARY_VM_EXIT_CONTROLS, 0x1234).unwrap();
    assert_eq!(
        full.write(&mut vmcs),
        Err(VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent))
    );
    assert_eq!(vmcs.read(field::PRIMARY_VM_EXIT_CONTROLS).unwrap(), 0x1234);
    assert_eq!(vmcs.read(field::PIN_BASED_VM_EXECUTION_CONTROLS).unwrap(), 0);

    let mut inner = SoftVmcs::new();
    for (encoding, value) in [(0x4000, 1), (0x4002, 2), (0x400C, 3), (0x2044, 4), (0x4012, 5)] {
        inner.write_raw(encoding, value).unwrap();
    }
    let before = inner.clone();
    let mut vmcs = FailingWrite { inner, fail_at: 0x4012 };
    assert!(full.write(&mut vmcs).is_err());
    for encoding in [0x4000, 0x4002, 0x400C, 0x2044, 0x4012] {
        assert_eq!(
            vmcs.inner.read_raw(encoding).unwrap(),
            before.read_raw(encoding).unwrap(),
            "{encoding:#x}"
        );
    }
}
