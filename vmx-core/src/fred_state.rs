//! The FRED state a VMCS holds: IA32_FRED_CONFIG, RSP1-3, STKLVLS and SSP1-3 for the guest
//! (loaded by VM-entry control bit 23, saved by secondary VM-exit control bit 0) and for the
//! host (loaded by secondary VM-exit control bit 1). SDM Vol. 3D Appendix B.2 lists the
//! fields; IA32_FRED_RSP0 and SSP0 (IA32_PL0_SSP) have none.
//!
//! The values come in a [`FredMsrState`]: the caller reads the MSRs (on hardware with
//! [`FredMsrState::read`] and a [`FredMsrSource`]), and [`FredMsrState::write_guest`] /
//! [`FredMsrState::write_host`] put them in the VMCS. Nothing here executes RDMSR except the
//! x86_64-only [`HardwareFredMsrs`] source.
//!
//! ```
//! use hvkit_vmx_core::fred_state::{FredMsr, FredMsrSource, FredMsrState};
//! use hvkit_vmx_core::{field, vmcs::{SoftVmcs, VmcsAccess}};
//!
//! // A recorded host: entry page at 0xFFFF_8000_0010_0000, red zone 1, stacks 64-aligned.
//! struct Recorded;
//! impl FredMsrSource for Recorded {
//!     fn read_fred_msr(&self, msr: FredMsr) -> u64 {
//!         match msr {
//!             FredMsr::Config => 0xFFFF_8000_0010_0040,
//!             FredMsr::Rsp1 => 0xFFFF_8000_0020_0000,
//!             _ => 0,
//!         }
//!     }
//! }
//! let host = FredMsrState::read(&Recorded);
//! let mut vmcs = SoftVmcs::new();
//! host.write_host(&mut vmcs)?;
//! assert_eq!(vmcs.read(field::HOST_IA32_FRED_CONFIG)?, 0xFFFF_8000_0010_0040);
//! assert_eq!(FredMsrState::read_host(&vmcs)?, host);
//! # Ok::<(), hvkit_vmx_core::VmFail>(())
//! ```
#![deny(unsafe_code)]

use crate::error::VmFail;
use crate::field::{self, Field, ReadWrite, U64};
use crate::vmcs::VmcsAccess;

/// The FRED MSRs that have VMCS fields (SDM Vol. 4 "Model-Specific Registers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FredMsr {
    /// IA32_FRED_CONFIG (0x1D4).
    Config,
    /// IA32_FRED_RSP1 (0x1CD).
    Rsp1,
    /// IA32_FRED_RSP2 (0x1CE).
    Rsp2,
    /// IA32_FRED_RSP3 (0x1CF).
    Rsp3,
    /// IA32_FRED_STKLVLS (0x1D0).
    StackLevels,
    /// IA32_FRED_SSP1 (0x1D1).
    Ssp1,
    /// IA32_FRED_SSP2 (0x1D2).
    Ssp2,
    /// IA32_FRED_SSP3 (0x1D3).
    Ssp3,
}

impl FredMsr {
    /// Every MSR, in VMCS field order.
    pub const ALL: [Self; 8] = [
        Self::Config,
        Self::Rsp1,
        Self::Rsp2,
        Self::Rsp3,
        Self::StackLevels,
        Self::Ssp1,
        Self::Ssp2,
        Self::Ssp3,
    ];

    /// The MSR number.
    pub const fn number(self) -> u32 {
        match self {
            Self::Rsp1 => 0x1CD,
            Self::Rsp2 => 0x1CE,
            Self::Rsp3 => 0x1CF,
            Self::StackLevels => 0x1D0,
            Self::Ssp1 => 0x1D1,
            Self::Ssp2 => 0x1D2,
            Self::Ssp3 => 0x1D3,
            Self::Config => 0x1D4,
        }
    }

    /// The guest-state VMCS field.
    pub const fn guest_field(self) -> Field<U64, ReadWrite> {
        match self {
            Self::Config => field::GUEST_IA32_FRED_CONFIG,
            Self::Rsp1 => field::GUEST_IA32_FRED_RSP1,
            Self::Rsp2 => field::GUEST_IA32_FRED_RSP2,
            Self::Rsp3 => field::GUEST_IA32_FRED_RSP3,
            Self::StackLevels => field::GUEST_IA32_FRED_STKLVLS,
            Self::Ssp1 => field::GUEST_IA32_FRED_SSP1,
            Self::Ssp2 => field::GUEST_IA32_FRED_SSP2,
            Self::Ssp3 => field::GUEST_IA32_FRED_SSP3,
        }
    }

    /// The host-state VMCS field.
    pub const fn host_field(self) -> Field<U64, ReadWrite> {
        match self {
            Self::Config => field::HOST_IA32_FRED_CONFIG,
            Self::Rsp1 => field::HOST_IA32_FRED_RSP1,
            Self::Rsp2 => field::HOST_IA32_FRED_RSP2,
            Self::Rsp3 => field::HOST_IA32_FRED_RSP3,
            Self::StackLevels => field::HOST_IA32_FRED_STKLVLS,
            Self::Ssp1 => field::HOST_IA32_FRED_SSP1,
            Self::Ssp2 => field::HOST_IA32_FRED_SSP2,
            Self::Ssp3 => field::HOST_IA32_FRED_SSP3,
        }
    }

    /// The SDM name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Config => "IA32_FRED_CONFIG",
            Self::Rsp1 => "IA32_FRED_RSP1",
            Self::Rsp2 => "IA32_FRED_RSP2",
            Self::Rsp3 => "IA32_FRED_RSP3",
            Self::StackLevels => "IA32_FRED_STKLVLS",
            Self::Ssp1 => "IA32_FRED_SSP1",
            Self::Ssp2 => "IA32_FRED_SSP2",
            Self::Ssp3 => "IA32_FRED_SSP3",
        }
    }
}

/// Where [`FredMsrState::read`] gets the values: the hardware ([`HardwareFredMsrs`]), a
/// recording, or a test double.
pub trait FredMsrSource {
    /// The current value of `msr`.
    fn read_fred_msr(&self, msr: FredMsr) -> u64;
}

/// RDMSR of the eight FRED MSRs on this processor.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct HardwareFredMsrs {
    _cpl0_with_fred: (),
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, reason = "an unsafe constructor states the caller's obligations")]
impl HardwareFredMsrs {
    /// Access to this processor's FRED MSRs.
    ///
    /// # Safety
    ///
    /// The caller runs at CPL 0 on a processor that enumerates FRED (CPUID.(EAX=7,ECX=1):EAX\[17\]),
    /// so that RDMSR of 0x1CD-0x1D4 does not raise #GP.
    pub const unsafe fn new() -> Self {
        Self { _cpl0_with_fred: () }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, reason = "the one RDMSR of this module, behind the constructor's contract")]
impl FredMsrSource for HardwareFredMsrs {
    fn read_fred_msr(&self, msr: FredMsr) -> u64 {
        // SAFETY: CPL 0 and FRED support are the constructor's contract; `FredMsr` only names
        // the FRED MSRs 0x1CD-0x1D4, which exist wherever FRED is enumerated. RDMSR has no
        // side effects.
        unsafe { x86::msr::rdmsr(msr.number()) }
    }
}

/// The values of the FRED MSRs that have VMCS fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FredMsrState {
    /// IA32_FRED_CONFIG.
    pub config: u64,
    /// IA32_FRED_RSP1.
    pub rsp1: u64,
    /// IA32_FRED_RSP2.
    pub rsp2: u64,
    /// IA32_FRED_RSP3.
    pub rsp3: u64,
    /// IA32_FRED_STKLVLS.
    pub stack_levels: u64,
    /// IA32_FRED_SSP1.
    pub ssp1: u64,
    /// IA32_FRED_SSP2.
    pub ssp2: u64,
    /// IA32_FRED_SSP3.
    pub ssp3: u64,
}

impl FredMsrState {
    /// Reads every value from `source`.
    pub fn read(source: &impl FredMsrSource) -> Self {
        let mut state = Self::default();
        for msr in FredMsr::ALL {
            *state.slot(msr) = source.read_fred_msr(msr);
        }
        state
    }

    /// The value for `msr`.
    pub const fn get(&self, msr: FredMsr) -> u64 {
        match msr {
            FredMsr::Config => self.config,
            FredMsr::Rsp1 => self.rsp1,
            FredMsr::Rsp2 => self.rsp2,
            FredMsr::Rsp3 => self.rsp3,
            FredMsr::StackLevels => self.stack_levels,
            FredMsr::Ssp1 => self.ssp1,
            FredMsr::Ssp2 => self.ssp2,
            FredMsr::Ssp3 => self.ssp3,
        }
    }

    /// Sets the value for `msr`.
    pub fn set(&mut self, msr: FredMsr, value: u64) {
        *self.slot(msr) = value;
    }

    fn slot(&mut self, msr: FredMsr) -> &mut u64 {
        match msr {
            FredMsr::Config => &mut self.config,
            FredMsr::Rsp1 => &mut self.rsp1,
            FredMsr::Rsp2 => &mut self.rsp2,
            FredMsr::Rsp3 => &mut self.rsp3,
            FredMsr::StackLevels => &mut self.stack_levels,
            FredMsr::Ssp1 => &mut self.ssp1,
            FredMsr::Ssp2 => &mut self.ssp2,
            FredMsr::Ssp3 => &mut self.ssp3,
        }
    }

    /// Writes the eight guest FRED fields (0x281A-0x2828). On a failure (a processor without
    /// the fields answers VM-instruction error 12) the VMCS is left as it was: every field is
    /// read before the first write, and fields already written are restored.
    pub fn write_guest(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        self.write_fields(vmcs, FredMsr::guest_field)
    }

    /// Writes the eight host FRED fields (0x2C08-0x2C16), with the same all-or-nothing
    /// behaviour as [`write_guest`](Self::write_guest).
    pub fn write_host(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        self.write_fields(vmcs, FredMsr::host_field)
    }

    /// Reads the guest FRED fields (after a VM exit with "save FRED" they hold the guest's MSRs).
    pub fn read_guest(vmcs: &impl VmcsAccess) -> Result<Self, VmFail> {
        Self::read_fields(vmcs, FredMsr::guest_field)
    }

    /// Reads the host FRED fields.
    pub fn read_host(vmcs: &impl VmcsAccess) -> Result<Self, VmFail> {
        Self::read_fields(vmcs, FredMsr::host_field)
    }

    fn read_fields(
        vmcs: &impl VmcsAccess,
        field_of: fn(FredMsr) -> Field<U64, ReadWrite>,
    ) -> Result<Self, VmFail> {
        let mut state = Self::default();
        for msr in FredMsr::ALL {
            *state.slot(msr) = vmcs.read(field_of(msr))?;
        }
        Ok(state)
    }

    fn write_fields(
        &self,
        vmcs: &mut impl VmcsAccess,
        field_of: fn(FredMsr) -> Field<U64, ReadWrite>,
    ) -> Result<(), VmFail> {
        let previous = Self::read_fields(vmcs, field_of)?;
        for (done, msr) in FredMsr::ALL.into_iter().enumerate() {
            if let Err(fail) = vmcs.write(field_of(msr), self.get(msr)) {
                for restored in FredMsr::ALL.into_iter().take(done) {
                    // Best effort: the field was writable a moment ago.
                    let _ = vmcs.write(field_of(restored), previous.get(restored));
                }
                return Err(fail);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::VmInstructionError;
    use crate::vmcs::SoftVmcs;

    /// Distinct values per MSR so a swapped field shows.
    fn distinct() -> FredMsrState {
        FredMsrState {
            config: 0xFFFF_8000_0010_0040,
            rsp1: 0x1000_0040,
            rsp2: 0x2000_0080,
            rsp3: 0x3000_00C0,
            stack_levels: 0x0000_0000_0000_000C,
            ssp1: 0x4000_0008,
            ssp2: 0x5000_0010,
            ssp3: 0x6000_0018,
        }
    }

    #[test]
    fn msr_numbers_match_the_sdm() {
        let numbers: [u32; 8] = FredMsr::ALL.map(FredMsr::number);
        assert_eq!(numbers, [0x1D4, 0x1CD, 0x1CE, 0x1CF, 0x1D0, 0x1D1, 0x1D2, 0x1D3]);
        assert_eq!(FredMsr::StackLevels.name(), "IA32_FRED_STKLVLS");
    }

    #[test]
    fn each_msr_goes_to_its_own_guest_and_host_field() {
        let guest: [u32; 8] = FredMsr::ALL.map(|msr| msr.guest_field().encoding());
        assert_eq!(guest, [0x281A, 0x281C, 0x281E, 0x2820, 0x2822, 0x2824, 0x2826, 0x2828]);
        let host: [u32; 8] = FredMsr::ALL.map(|msr| msr.host_field().encoding());
        assert_eq!(host, [0x2C08, 0x2C0A, 0x2C0C, 0x2C0E, 0x2C10, 0x2C12, 0x2C14, 0x2C16]);
    }

    #[test]
    fn read_takes_each_value_from_its_msr() {
        struct ByNumber;
        impl FredMsrSource for ByNumber {
            fn read_fred_msr(&self, msr: FredMsr) -> u64 {
                u64::from(msr.number()) << 8
            }
        }
        let state = FredMsrState::read(&ByNumber);
        for msr in FredMsr::ALL {
            assert_eq!(state.get(msr), u64::from(msr.number()) << 8, "{msr:?}");
        }
    }

    #[test]
    fn guest_and_host_round_trip_without_touching_the_other_side() {
        let mut vmcs = SoftVmcs::new();
        let state = distinct();
        state.write_guest(&mut vmcs).unwrap();
        assert_eq!(FredMsrState::read_guest(&vmcs).unwrap(), state);
        assert_eq!(FredMsrState::read_host(&vmcs).unwrap(), FredMsrState::default());
        assert_eq!(vmcs.read(field::GUEST_IA32_FRED_SSP3).unwrap(), 0x6000_0018);
        let host = FredMsrState { config: 1, ..state };
        host.write_host(&mut vmcs).unwrap();
        assert_eq!(FredMsrState::read_host(&vmcs).unwrap(), host);
        assert_eq!(FredMsrState::read_guest(&vmcs).unwrap(), state);
        assert_eq!(vmcs.read(field::HOST_IA32_FRED_CONFIG).unwrap(), 1);
    }

    #[test]
    fn without_fred_fields_nothing_is_written() {
        // A processor without FRED: the FRED fields are unsupported (error 12); the other
        // side's fields must not change either.
        let mut vmcs = SoftVmcs::with_supported(|info| {
            !(0x281A..=0x2829).contains(&info.field_encoding().raw())
        });
        assert_eq!(
            distinct().write_guest(&mut vmcs),
            Err(VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent))
        );
        distinct().write_host(&mut vmcs).unwrap();
        assert_eq!(FredMsrState::read_host(&vmcs).unwrap(), distinct());
    }

    #[test]
    fn a_failing_write_restores_the_fields_already_written() {
        use crate::vmcs::test_support::FailingWrite;
        let old = FredMsrState { config: 7, rsp1: 0x40, ..FredMsrState::default() };
        let mut inner = SoftVmcs::new();
        old.write_host(&mut inner).unwrap();
        let mut vmcs = FailingWrite { inner, fail_at: field::HOST_IA32_FRED_SSP1.encoding() };
        assert!(distinct().write_host(&mut vmcs).is_err());
        assert_eq!(FredMsrState::read_host(&vmcs.inner).unwrap(), old);
    }
}
