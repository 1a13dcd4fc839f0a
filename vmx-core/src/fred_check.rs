//! The FRED checks VM entry makes on the host and guest state (Intel FRED specification,
//! chapter "VMX Interactions"; SDM Vol. 3C 26.2.2, 26.3.1.1, 26.3.1.2, 26.3.1.4 and 26.3.1.5,
//! chapter 28 in editions from 2023 on).
//!
//! Run [`check_host`] and [`check_guest`] before VMLAUNCH/VMRESUME: on hardware a host-state
//! violation is VMfailValid with error 8, a guest-state one an exit with reason 33. Each
//! violation is a [`FredCheckError`] naming the [`FredRule`], the side and the register.
//!
//! | rule | side | requires | SDM |
//! |---|---|---|---|
//! | [`ConfigReservedBits`](FredRule::ConfigReservedBits) | both | IA32_FRED_CONFIG bits 11, 5:4 and 2 = 0 | 26.2.2 / 26.3.1.1 |
//! | [`StackPointerAlignment`](FredRule::StackPointerAlignment) | both | IA32_FRED_RSP1-3 bits 5:0 = 0 (64-byte aligned) | 26.2.2 / 26.3.1.1 |
//! | [`ShadowStackPointerAlignment`](FredRule::ShadowStackPointerAlignment) | both | IA32_FRED_SSP1-3 bits 2:0 = 0 (8-byte aligned) | 26.2.2 / 26.3.1.1 |
//! | [`NotCanonical`](FredRule::NotCanonical) | both | the entry page (CONFIG bits 63:12), RSP1-3 and SSP1-3 canonical | 26.2.2 / 26.3.1.1 |
//! | [`Cr4FredOutsideIa32e`](FredRule::Cr4FredOutsideIa32e) | both | CR4.FRED (bit 32) = 1 only with "host address-space size" (host) / "IA-32e mode guest" (guest) | 26.2.2 / 26.3.1.1 |
//! | [`SsDplOneOrTwo`](FredRule::SsDplOneOrTwo) | guest | with CR4.FRED = 1, SS.DPL is 0 or 3 | 26.3.1.2 |
//! | [`SupervisorCsNot64Bit`](FredRule::SupervisorCsNot64Bit) | guest | with CR4.FRED = 1 and SS.DPL = 0, CS.L = 1 | 26.3.1.2 |
//! | [`UserIoplNotZero`](FredRule::UserIoplNotZero) | guest | with CR4.FRED = 1 and SS.DPL = 3, RFLAGS.IOPL = 0 | 26.3.1.4 |
//! | [`UserStiBlocking`](FredRule::UserStiBlocking) | guest | with CR4.FRED = 1 and SS.DPL = 3, no blocking by STI | 26.3.1.5 |
//!
//! The MSR-value rules apply to the values VM entry (guest, VM-entry control 23) or VM exit
//! (host, secondary VM-exit control 1) would load; they are skipped when that control is 0.
//! KVM's nested checks apply them only to a 64-bit guest/host; this checker applies them
//! whenever the values are loaded (stricter: what passes here passes there).
//! Canonicality is against the processor's linear-address width ([`LinearAddressWidth`]);
//! 48 bits is the portable choice.
#![forbid(unsafe_code)]

use crate::controls::{EntryControls, ExitControls, SecondaryExitControls};
use crate::error::VmFail;
use crate::event::GuestInterruptibility;
use crate::field;
use crate::fred_state::{FredMsr, FredMsrState};
use crate::vmcs::VmcsAccess;
use core::fmt;

/// CR4.FRED (bit 32).
pub const CR4_FRED: u64 = 1 << 32;

/// IA32_FRED_CONFIG bits VM entry requires to be 0: 11, 5:4 and 2.
pub const CONFIG_RESERVED_BITS: u64 = (1 << 11) | (0b11 << 4) | (1 << 2);

/// The linear-address width canonical addresses are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinearAddressWidth {
    /// 48 bits (4-level paging): bits 63:47 equal. The portable choice.
    #[default]
    Bits48,
    /// 57 bits: the processor supports 5-level paging (CPUID.(EAX=7,ECX=0):ECX\[16\]).
    Bits57,
}

impl LinearAddressWidth {
    /// `address` is canonical: bits 63 down to the width's top bit all equal.
    pub const fn is_canonical(self, address: u64) -> bool {
        let unused = match self {
            Self::Bits48 => 16,
            Self::Bits57 => 7,
        };
        (((address << unused) as i64) >> unused) as u64 == address
    }
}

/// Which side of the VMCS a violation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FredSide {
    /// The host-state area (VMfailValid, error 8).
    Host,
    /// The guest-state area (VM-entry failure, exit reason 33).
    Guest,
}

/// The register a violation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FredRegister {
    /// One of the FRED MSR fields.
    Msr(FredMsr),
    /// CR4.
    Cr4,
    /// The guest SS access rights.
    SsAccessRights,
    /// The guest CS access rights.
    CsAccessRights,
    /// The guest RFLAGS.
    Rflags,
    /// The guest interruptibility state.
    Interruptibility,
}

sdm_rules! {
    /// One FRED VM-entry check.
    FredRule,
    /// The SDM section (guest side for the rules on both sides; the host-state counterpart is
    /// 26.2.2).
    ;
    /// IA32_FRED_CONFIG bits 11, 5:4 and 2 must be 0.
    ConfigReservedBits => "26.3.1.1", "IA32_FRED_CONFIG bits 11, 5:4 and 2 must be 0";
    /// IA32_FRED_RSP1-3 must be 64-byte aligned.
    StackPointerAlignment => "26.3.1.1", "IA32_FRED_RSP1-3 must have bits 5:0 clear (64-byte aligned)";
    /// IA32_FRED_SSP1-3 must be 8-byte aligned.
    ShadowStackPointerAlignment => "26.3.1.1", "IA32_FRED_SSP1-3 must have bits 2:0 clear (8-byte aligned)";
    /// The entry page and the stack pointers must be canonical.
    NotCanonical => "26.3.1.1",
        "the IA32_FRED_CONFIG entry page (bits 63:12), IA32_FRED_RSP1-3 and IA32_FRED_SSP1-3 must be canonical";
    /// CR4.FRED needs IA-32e mode.
    Cr4FredOutsideIa32e => "26.3.1.1",
        "CR4.FRED may be 1 only with \"IA-32e mode guest\" (guest) or \"host address-space size\" (host)";
    /// With CR4.FRED, SS.DPL must be 0 or 3.
    SsDplOneOrTwo => "26.3.1.2", "with guest CR4.FRED = 1, SS.DPL must be 0 or 3";
    /// With CR4.FRED and SS.DPL 0, CS.L must be 1.
    SupervisorCsNot64Bit => "26.3.1.2", "with guest CR4.FRED = 1 and SS.DPL = 0, CS.L must be 1";
    /// With CR4.FRED and SS.DPL 3, RFLAGS.IOPL must be 0.
    UserIoplNotZero => "26.3.1.4", "with guest CR4.FRED = 1 and SS.DPL = 3, RFLAGS.IOPL must be 0";
    /// With CR4.FRED and SS.DPL 3, no STI blocking.
    UserStiBlocking => "26.3.1.5", "with guest CR4.FRED = 1 and SS.DPL = 3, blocking by STI must be 0";
}

/// A violated FRED check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct FredCheckError {
    /// The rule.
    pub rule: FredRule,
    /// Host or guest state.
    pub side: FredSide,
    /// The register that broke it.
    pub register: FredRegister,
    /// That register's value.
    pub value: u64,
}

impl fmt::Display for FredCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            FredSide::Host => "host",
            FredSide::Guest => "guest",
        };
        let register = match self.register {
            FredRegister::Msr(msr) => msr.name(),
            FredRegister::Cr4 => "CR4",
            FredRegister::SsAccessRights => "SS access rights",
            FredRegister::CsAccessRights => "CS access rights",
            FredRegister::Rflags => "RFLAGS",
            FredRegister::Interruptibility => "interruptibility state",
        };
        let section = match self.side {
            FredSide::Host => "26.2.2",
            FredSide::Guest => self.rule.section(),
        };
        write!(
            f,
            "{side} {register} = {:#x}: {} (SDM {section}; FRED spec, VMX interactions)",
            self.value,
            self.rule.text()
        )
    }
}

impl core::error::Error for FredCheckError {}

/// The host state the FRED checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HostFredState {
    /// The "host address-space size" VM-exit control (bit 9).
    pub address_space_size: bool,
    /// The "load FRED" secondary VM-exit control (bit 1) with the activating exit control
    /// bit 31: the host FRED fields are loaded at VM exit.
    pub load_fred: bool,
    /// The host CR4 field.
    pub cr4: u64,
    /// The host FRED fields.
    pub fred: FredMsrState,
}

impl HostFredState {
    /// Reads the host state from `vmcs`. The secondary VM-exit controls and the host FRED
    /// fields are read only when the controls that make them count are set (a processor
    /// without them answers VM-instruction error 12).
    pub fn read(vmcs: &impl VmcsAccess) -> Result<Self, VmFail> {
        let exit = ExitControls::from_bits_retain(vmcs.read(field::PRIMARY_VM_EXIT_CONTROLS)?);
        let load_fred = exit.contains(ExitControls::ACTIVATE_SECONDARY_CONTROLS)
            && SecondaryExitControls::from_bits_retain(
                vmcs.read(field::SECONDARY_VM_EXIT_CONTROLS)?,
            )
            .contains(SecondaryExitControls::LOAD_FRED);
        Ok(Self {
            address_space_size: exit.contains(ExitControls::HOST_ADDRESS_SPACE_SIZE),
            load_fred,
            cr4: vmcs.read(field::HOST_CR4)?,
            fred: if load_fred { FredMsrState::read_host(vmcs)? } else { FredMsrState::default() },
        })
    }
}

/// The guest state the FRED checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestFredState {
    /// The "IA-32e mode guest" VM-entry control (bit 9).
    pub ia32e_mode: bool,
    /// The "load FRED" VM-entry control (bit 23).
    pub load_fred: bool,
    /// The guest CR4 field.
    pub cr4: u64,
    /// The guest SS access rights (DPL in bits 6:5).
    pub ss_access_rights: u32,
    /// The guest CS access rights (L in bit 13).
    pub cs_access_rights: u32,
    /// The guest RFLAGS (IOPL in bits 13:12).
    pub rflags: u64,
    /// The guest interruptibility state.
    pub interruptibility: GuestInterruptibility,
    /// The guest FRED fields.
    pub fred: FredMsrState,
}

impl GuestFredState {
    /// Reads the guest state from `vmcs`; the guest FRED fields only when "load FRED" is set.
    pub fn read(vmcs: &impl VmcsAccess) -> Result<Self, VmFail> {
        let entry = EntryControls::from_bits_retain(vmcs.read(field::VM_ENTRY_CONTROLS)?);
        let load_fred = entry.contains(EntryControls::LOAD_FRED);
        Ok(Self {
            ia32e_mode: entry.contains(EntryControls::IA32E_MODE_GUEST),
            load_fred,
            cr4: vmcs.read(field::GUEST_CR4)?,
            ss_access_rights: vmcs.read(field::GUEST_SS_ACCESS_RIGHTS)?,
            cs_access_rights: vmcs.read(field::GUEST_CS_ACCESS_RIGHTS)?,
            rflags: vmcs.read(field::GUEST_RFLAGS)?,
            interruptibility: GuestInterruptibility::from_bits_retain(
                vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE)?,
            ),
            fred: if load_fred { FredMsrState::read_guest(vmcs)? } else { FredMsrState::default() },
        })
    }
}

/// The MSR-value rules, in [`FredMsr::ALL`] order for each rule.
fn check_values(
    fred: &FredMsrState,
    side: FredSide,
    width: LinearAddressWidth,
) -> Result<(), FredCheckError> {
    let fail = |rule, msr: FredMsr| {
        Err(FredCheckError { rule, side, register: FredRegister::Msr(msr), value: fred.get(msr) })
    };
    if fred.config & CONFIG_RESERVED_BITS != 0 {
        return fail(FredRule::ConfigReservedBits, FredMsr::Config);
    }
    for msr in [FredMsr::Rsp1, FredMsr::Rsp2, FredMsr::Rsp3] {
        if fred.get(msr) & 0x3F != 0 {
            return fail(FredRule::StackPointerAlignment, msr);
        }
    }
    for msr in [FredMsr::Ssp1, FredMsr::Ssp2, FredMsr::Ssp3] {
        if fred.get(msr) & 0x7 != 0 {
            return fail(FredRule::ShadowStackPointerAlignment, msr);
        }
    }
    if !width.is_canonical(fred.config & !0xFFF) {
        return fail(FredRule::NotCanonical, FredMsr::Config);
    }
    for msr in FredMsr::ALL {
        if msr != FredMsr::Config
            && msr != FredMsr::StackLevels
            && !width.is_canonical(fred.get(msr))
        {
            return fail(FredRule::NotCanonical, msr);
        }
    }
    Ok(())
}

/// Checks the host FRED state.
pub fn check_host(host: &HostFredState, width: LinearAddressWidth) -> Result<(), FredCheckError> {
    if host.cr4 & CR4_FRED != 0 && !host.address_space_size {
        return Err(FredCheckError {
            rule: FredRule::Cr4FredOutsideIa32e,
            side: FredSide::Host,
            register: FredRegister::Cr4,
            value: host.cr4,
        });
    }
    if host.load_fred {
        check_values(&host.fred, FredSide::Host, width)?;
    }
    Ok(())
}

/// Checks the guest FRED state.
pub fn check_guest(
    guest: &GuestFredState,
    width: LinearAddressWidth,
) -> Result<(), FredCheckError> {
    let fail = |rule, register, value| {
        Err(FredCheckError { rule, side: FredSide::Guest, register, value })
    };
    if guest.load_fred {
        check_values(&guest.fred, FredSide::Guest, width)?;
    }
    if guest.cr4 & CR4_FRED == 0 {
        return Ok(());
    }
    if !guest.ia32e_mode {
        return fail(FredRule::Cr4FredOutsideIa32e, FredRegister::Cr4, guest.cr4);
    }
    let ss = u64::from(guest.ss_access_rights);
    match (guest.ss_access_rights >> 5) & 3 {
        0 if guest.cs_access_rights & (1 << 13) == 0 => fail(
            FredRule::SupervisorCsNot64Bit,
            FredRegister::CsAccessRights,
            u64::from(guest.cs_access_rights),
        ),
        1 | 2 => fail(FredRule::SsDplOneOrTwo, FredRegister::SsAccessRights, ss),
        3 if guest.rflags & (3 << 12) != 0 => {
            fail(FredRule::UserIoplNotZero, FredRegister::Rflags, guest.rflags)
        }
        3 if guest.interruptibility.contains(GuestInterruptibility::STI) => fail(
            FredRule::UserStiBlocking,
            FredRegister::Interruptibility,
            u64::from(guest.interruptibility.bits()),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::SoftVmcs;
    use FredRule as R;

    const W48: LinearAddressWidth = LinearAddressWidth::Bits48;
    const W57: LinearAddressWidth = LinearAddressWidth::Bits57;

    fn good_values() -> FredMsrState {
        FredMsrState {
            // Entry page 0xFFFF_8000_0010_0000, red zone 1 (bit 6), level 0.
            config: 0xFFFF_8000_0010_0040,
            rsp1: 0xFFFF_8000_0020_0000,
            rsp2: 0xFFFF_8000_0030_0040,
            rsp3: 0x0000_7FFF_FFFF_FFC0,
            stack_levels: u64::MAX, // no rule on STKLVLS
            ssp1: 0xFFFF_8000_0040_0008,
            ssp2: 0x0000_0000_0050_0000,
            ssp3: 0x0000_7FFF_FFFF_FFF8,
        }
    }

    fn host(fred: FredMsrState) -> HostFredState {
        HostFredState { address_space_size: true, load_fred: true, cr4: CR4_FRED | 0x2020, fred }
    }

    fn user_guest() -> GuestFredState {
        GuestFredState {
            ia32e_mode: true,
            load_fred: true,
            cr4: CR4_FRED | 0x2020,
            ss_access_rights: 0xF3, // present, DPL 3, writable data
            cs_access_rights: 0x20FB,
            rflags: 0x202,
            interruptibility: GuestInterruptibility::empty(),
            fred: good_values(),
        }
    }

    fn host_rule(state: HostFredState) -> Option<(R, FredRegister)> {
        check_host(&state, W48).err().map(|error| (error.rule, error.register))
    }

    fn guest_rule(state: GuestFredState) -> Option<(R, FredRegister)> {
        check_guest(&state, W48).err().map(|error| (error.rule, error.register))
    }

    #[test]
    fn canonical_boundaries_for_both_widths() {
        assert!(W48.is_canonical(0x0000_7FFF_FFFF_FFFF));
        assert!(!W48.is_canonical(0x0000_8000_0000_0000));
        assert!(!W48.is_canonical(0xFFFF_7FFF_FFFF_FFFF));
        assert!(W48.is_canonical(0xFFFF_8000_0000_0000));
        assert!(W57.is_canonical(0x0000_8000_0000_0000));
        assert!(W57.is_canonical(0x00FF_FFFF_FFFF_FFFF));
        assert!(!W57.is_canonical(0x0100_0000_0000_0000));
        assert!(!W57.is_canonical(0xFEFF_FFFF_FFFF_FFFF));
        assert!(W57.is_canonical(0xFF00_0000_0000_0000));
        assert_eq!(LinearAddressWidth::default(), W48);
    }

    #[test]
    fn good_state_passes_on_both_sides() {
        assert_eq!(host_rule(host(good_values())), None);
        assert_eq!(guest_rule(user_guest()), None);
    }

    #[test]
    fn config_reserved_bits_each_and_their_neighbours() {
        for bit in [2, 4, 5, 11] {
            let fred = FredMsrState { config: good_values().config | (1 << bit), ..good_values() };
            let expected = Some((R::ConfigReservedBits, FredRegister::Msr(FredMsr::Config)));
            assert_eq!(host_rule(host(fred)), expected, "host bit {bit}");
            assert_eq!(guest_rule(GuestFredState { fred, ..user_guest() }), expected, "bit {bit}");
        }
        // Bits 0, 1, 3 and 6-10 (red zone, stack level) are not reserved.
        for bit in [0, 1, 3, 6, 7, 8, 9, 10] {
            let fred = FredMsrState { config: good_values().config | (1 << bit), ..good_values() };
            assert_eq!(host_rule(host(fred)), None, "bit {bit}");
        }
        assert_eq!(CONFIG_RESERVED_BITS, 0x834);
    }

    #[test]
    fn stack_pointer_alignment_boundaries() {
        for msr in [FredMsr::Rsp1, FredMsr::Rsp2, FredMsr::Rsp3] {
            for (low, ok) in
                [(0x00, true), (0x01, false), (0x20, false), (0x3F, false), (0x40, true)]
            {
                let mut fred = good_values();
                fred.set(msr, 0x1000_0000 | low);
                let expected = if ok {
                    None
                } else {
                    Some((R::StackPointerAlignment, FredRegister::Msr(msr)))
                };
                assert_eq!(host_rule(host(fred)), expected, "{msr:?} {low:#x}");
            }
        }
    }

    #[test]
    fn shadow_stack_pointer_alignment_boundaries() {
        for msr in [FredMsr::Ssp1, FredMsr::Ssp2, FredMsr::Ssp3] {
            for (low, ok) in
                [(0, true), (1, false), (4, false), (7, false), (8, true), (0x10, true)]
            {
                let mut fred = good_values();
                fred.set(msr, 0x1000_0000 | low);
                let expected = if ok {
                    None
                } else {
                    Some((R::ShadowStackPointerAlignment, FredRegister::Msr(msr)))
                };
                let guest = GuestFredState { fred, ..user_guest() };
                assert_eq!(guest_rule(guest), expected, "{msr:?} {low:#x}");
            }
        }
    }

    #[test]
    fn canonical_rule_covers_page_and_stacks_not_stack_levels() {
        let bad = 0x0000_8000_0000_0000;
        for msr in [
            FredMsr::Config,
            FredMsr::Rsp1,
            FredMsr::Rsp2,
            FredMsr::Rsp3,
            FredMsr::Ssp1,
            FredMsr::Ssp2,
            FredMsr::Ssp3,
        ] {
            let mut fred = good_values();
            fred.set(msr, bad);
            assert_eq!(
                host_rule(host(fred)),
                Some((R::NotCanonical, FredRegister::Msr(msr))),
                "{msr:?}"
            );
            // Canonical at 57 bits.
            assert_eq!(check_host(&host(fred), W57), Ok(()), "{msr:?} 57-bit");
            fred.set(msr, 0x0000_7FFF_FFFF_F000);
            assert_eq!(host_rule(host(fred)), None, "{msr:?} highest canonical");
        }
        // The config's low 12 bits are not part of the page: a canonical page with the
        // red-zone bits passes (the raw value would look non-canonical only via bits 11:0,
        // which cannot happen; check the page is what is tested).
        let fred = FredMsrState { config: 0x0000_7FFF_FFFF_F0C0, ..good_values() };
        assert_eq!(host_rule(host(fred)), None);
        let fred = FredMsrState { config: 0x0000_8000_0000_00C0, ..good_values() };
        assert_eq!(host_rule(host(fred)).map(|(rule, _)| rule), Some(R::NotCanonical));
    }

    #[test]
    fn values_are_not_checked_when_not_loaded() {
        let bad = FredMsrState { config: 0x834, rsp1: 1, ssp3: 1, ..FredMsrState::default() };
        assert_eq!(host_rule(HostFredState { load_fred: false, ..host(bad) }), None);
        let guest = GuestFredState { load_fred: false, fred: bad, ..user_guest() };
        assert_eq!(guest_rule(guest), None);
        assert!(host_rule(host(bad)).is_some());
    }

    #[test]
    fn cr4_fred_needs_ia32e_on_both_sides() {
        let legacy_host = HostFredState { address_space_size: false, ..host(good_values()) };
        assert_eq!(host_rule(legacy_host), Some((R::Cr4FredOutsideIa32e, FredRegister::Cr4)));
        let no_fred = HostFredState { cr4: 0x2020, ..legacy_host };
        assert_eq!(host_rule(no_fred), None);
        let legacy = GuestFredState { ia32e_mode: false, ..user_guest() };
        assert_eq!(guest_rule(legacy), Some((R::Cr4FredOutsideIa32e, FredRegister::Cr4)));
        assert_eq!(guest_rule(GuestFredState { cr4: 0x2020, ..legacy }), None);
        // CR4 bit 31 or 33 is not FRED.
        let near = GuestFredState { cr4: (1 << 31) | (1 << 33), ..legacy };
        assert_eq!(guest_rule(near), None);
    }

    #[test]
    fn ss_dpl_rules_for_fred_guests() {
        let with_dpl = |dpl: u32| GuestFredState {
            ss_access_rights: 0x93 | (dpl << 5),
            cs_access_rights: 0x209B | (dpl << 5),
            ..user_guest()
        };
        assert_eq!(guest_rule(with_dpl(0)), None);
        assert_eq!(guest_rule(with_dpl(3)), None);
        for dpl in [1, 2] {
            assert_eq!(
                guest_rule(with_dpl(dpl)),
                Some((R::SsDplOneOrTwo, FredRegister::SsAccessRights)),
                "DPL {dpl}"
            );
        }
        // DPL 0: CS.L (bit 13) must be 1.
        let compat = GuestFredState { cs_access_rights: 0x409B, ..with_dpl(0) };
        assert_eq!(
            guest_rule(compat),
            Some((R::SupervisorCsNot64Bit, FredRegister::CsAccessRights))
        );
        // DPL 3 may run 32-bit code.
        assert_eq!(guest_rule(GuestFredState { cs_access_rights: 0x40FB, ..with_dpl(3) }), None);
        // DPL 3: IOPL (bits 13:12) 0.
        for iopl in [1u64, 2, 3] {
            let guest = GuestFredState { rflags: 0x202 | (iopl << 12), ..with_dpl(3) };
            assert_eq!(guest_rule(guest), Some((R::UserIoplNotZero, FredRegister::Rflags)));
        }
        let kernel_iopl = GuestFredState { rflags: 0x3202, ..with_dpl(0) };
        assert_eq!(guest_rule(kernel_iopl), None, "IOPL is free at DPL 0");
        // DPL 3: no STI blocking; MOV-SS blocking is not this rule's business.
        let sti = GuestFredState { interruptibility: GuestInterruptibility::STI, ..with_dpl(3) };
        assert_eq!(guest_rule(sti), Some((R::UserStiBlocking, FredRegister::Interruptibility)));
        let mov_ss =
            GuestFredState { interruptibility: GuestInterruptibility::MOV_SS, ..with_dpl(3) };
        assert_eq!(guest_rule(mov_ss), None);
        let kernel_sti =
            GuestFredState { interruptibility: GuestInterruptibility::STI, ..with_dpl(0) };
        assert_eq!(guest_rule(kernel_sti), None);
        // Without CR4.FRED none of this applies.
        let idt = GuestFredState { cr4: 0x2020, ..with_dpl(1) };
        assert_eq!(guest_rule(idt), None);
    }

    #[test]
    fn reads_from_the_vmcs_only_what_counts() {
        // A processor without FRED fields or secondary exit controls.
        let mut vmcs = SoftVmcs::with_supported(|info| {
            let raw = info.field_encoding().raw();
            !(0x281A..=0x2829).contains(&raw)
                && !(0x2C08..=0x2C17).contains(&raw)
                && raw & !1 != 0x2044
        });
        vmcs.write(field::PRIMARY_VM_EXIT_CONTROLS, 1 << 9).unwrap();
        vmcs.write(field::VM_ENTRY_CONTROLS, 1 << 9).unwrap();
        vmcs.write(field::HOST_CR4, 0x2020).unwrap();
        let host = HostFredState::read(&vmcs).unwrap();
        assert!(host.address_space_size && !host.load_fred);
        assert_eq!(check_host(&host, W48), Ok(()));
        let guest = GuestFredState::read(&vmcs).unwrap();
        assert!(guest.ia32e_mode && !guest.load_fred);

        // With every field: the controls decide, the values come from their fields.
        let mut vmcs = SoftVmcs::new();
        vmcs.write(field::PRIMARY_VM_EXIT_CONTROLS, (1 << 31) | (1 << 9)).unwrap();
        vmcs.write(field::SECONDARY_VM_EXIT_CONTROLS, 0b11).unwrap();
        vmcs.write(field::VM_ENTRY_CONTROLS, (1 << 23) | (1 << 9)).unwrap();
        vmcs.write(field::HOST_CR4, CR4_FRED).unwrap();
        vmcs.write(field::GUEST_CR4, CR4_FRED).unwrap();
        vmcs.write(field::GUEST_SS_ACCESS_RIGHTS, 0xF3).unwrap();
        vmcs.write(field::GUEST_CS_ACCESS_RIGHTS, 0x20FB).unwrap();
        vmcs.write(field::GUEST_RFLAGS, 0x3202).unwrap();
        vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, 1).unwrap();
        good_values().write_host(&mut vmcs).unwrap();
        let mut guest_values = good_values();
        guest_values.rsp2 = 0x1001;
        guest_values.write_guest(&mut vmcs).unwrap();
        let host = HostFredState::read(&vmcs).unwrap();
        assert_eq!(host, self::host(good_values()).with_cr4(CR4_FRED));
        let guest = GuestFredState::read(&vmcs).unwrap();
        assert_eq!(guest.fred, guest_values);
        assert_eq!(guest.rflags, 0x3202);
        assert_eq!(guest.interruptibility, GuestInterruptibility::STI);
        assert_eq!((guest.ss_access_rights, guest.cs_access_rights), (0xF3, 0x20FB));
        assert_eq!(
            guest_rule(guest),
            Some((R::StackPointerAlignment, FredRegister::Msr(FredMsr::Rsp2)))
        );
        // Secondary exit controls without load FRED (bit 1): host values not loaded.
        vmcs.write(field::SECONDARY_VM_EXIT_CONTROLS, 0b01).unwrap();
        assert!(!HostFredState::read(&vmcs).unwrap().load_fred);
        // Load FRED without the activation bit 31: not active.
        vmcs.write(field::SECONDARY_VM_EXIT_CONTROLS, 0b10).unwrap();
        vmcs.write(field::PRIMARY_VM_EXIT_CONTROLS, 1 << 9).unwrap();
        assert!(!HostFredState::read(&vmcs).unwrap().load_fred);
    }

    impl HostFredState {
        fn with_cr4(self, cr4: u64) -> Self {
            Self { cr4, ..self }
        }
    }

    #[test]
    fn every_rule_is_explained_and_errors_name_side_and_register() {
        assert_eq!(FredRule::ALL.len(), 9);
        for rule in FredRule::ALL {
            assert!(rule.section().starts_with("26."), "{rule:?}");
            assert!(!rule.text().is_empty());
        }
        let fred = FredMsrState { rsp3: 0x1010, ..good_values() };
        let error = check_host(&host(fred), W48).unwrap_err();
        assert_eq!(error.side, FredSide::Host);
        assert_eq!(
            std::format!("{error}"),
            "host IA32_FRED_RSP3 = 0x1010: IA32_FRED_RSP1-3 must have bits 5:0 clear (64-byte \
             aligned) (SDM 26.2.2; FRED spec, VMX interactions)"
        );
        let guest = GuestFredState { ss_access_rights: 0xB3, ..user_guest() };
        let error = check_guest(&guest, W48).unwrap_err();
        assert_eq!(error.side, FredSide::Guest);
        assert_eq!(
            std::format!("{error}"),
            "guest SS access rights = 0xb3: with guest CR4.FRED = 1, SS.DPL must be 0 or 3 \
             (SDM 26.3.1.2; FRED spec, VMX interactions)"
        );
    }
}
