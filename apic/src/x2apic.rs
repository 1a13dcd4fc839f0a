//! x2APIC mode: registers are MSRs 0x800-0x8FF.

use crate::ModeError;
use crate::detect::{ApicBase, ApicState, CpuidFeatures};
use crate::hw::{ApicMsr, MsrAccess};
use crate::icr::{Ipi, IpiError, Mode};
use crate::local_apic::{Delay, LocalApic};
use crate::register as reg;
use core::marker::PhantomData;

/// A local APIC in x2APIC mode. Not `Send`/`Sync`: it drives this processor's APIC.
///
/// x2APIC has no delivery-status bit: an ICR write returns when the IPI is sent, and nothing
/// here ever waits.
#[derive(Debug)]
pub struct X2Apic<M: MsrAccess> {
    msrs: M,
    _per_cpu: PhantomData<*mut ()>,
}

impl<M: MsrAccess> X2Apic<M> {
    /// A handle, after checking that IA32_APIC_BASE says x2APIC mode is on.
    pub fn new(msrs: M) -> Result<Self, ModeError> {
        match ApicBase(msrs.read_apic_base()).state() {
            ApicState::Enabled(Mode::X2Apic) => Ok(Self { msrs, _per_cpu: PhantomData }),
            found => Err(ModeError::NotInMode { expected: Mode::X2Apic, found }),
        }
    }

    /// Switches an enabled xAPIC to x2APIC mode (when CPUID offers it) and returns the handle.
    pub fn enable(mut msrs: M, cpuid: CpuidFeatures) -> Result<Self, ModeError> {
        if !cpuid.x2apic {
            return Err(ModeError::X2ApicUnsupported);
        }
        let base = ApicBase(msrs.read_apic_base());
        match base.state() {
            ApicState::Enabled(_) => {}
            found => return Err(ModeError::NotInMode { expected: Mode::XApic, found }),
        }
        // SAFETY: the value keeps the base address and only sets the enable bits: xAPIC (or
        // enabled x2APIC) to x2APIC is a valid transition (SDM Vol. 3A "x2APIC State
        // Transitions"), and the xAPIC page is not moved.
        unsafe { msrs.write_apic_base(base.x2apic_enabling_value()) };
        Self::new(msrs)
    }

    /// The MSR backend.
    pub fn msrs(&self) -> &M {
        &self.msrs
    }

    /// Gives the MSR backend back.
    pub fn into_msrs(self) -> M {
        self.msrs
    }

    /// Arms the TSC-deadline timer: LVT timer in TSC-deadline mode with `vector`, then
    /// IA32_TSC_DEADLINE = `deadline` (a fence orders the two writes, as the SDM asks for
    /// x2APIC MSR writes, which are not serializing).
    pub fn start_tsc_deadline_timer(
        &mut self,
        vector: u8,
        deadline: u64,
        cpuid: CpuidFeatures,
    ) -> Result<(), ModeError> {
        if !cpuid.tsc_deadline {
            return Err(ModeError::TscDeadlineUnsupported);
        }
        let entry =
            crate::lvt::LvtEntry::fixed(vector).with_timer_mode(crate::lvt::TimerMode::TscDeadline);
        self.write(reg::LVT_TIMER, entry.raw());
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.msrs.write_msr(ApicMsr::TSC_DEADLINE, deadline);
        Ok(())
    }
}

impl<M: MsrAccess> LocalApic for X2Apic<M> {
    const MODE: Mode = Mode::X2Apic;

    fn read(&self, offset: u32) -> u32 {
        self.msrs.read_msr(ApicMsr::x2apic_register(offset)) as u32
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.msrs.write_msr(ApicMsr::x2apic_register(offset), u64::from(value));
    }

    fn id(&self) -> u32 {
        self.read(reg::ID)
    }

    fn send_ipi(
        &mut self,
        ipi: &Ipi,
        _max_polls: u32,
        _delay: &mut impl Delay,
    ) -> Result<(), IpiError> {
        let icr = ipi.encode(Mode::X2Apic)?;
        self.msrs.write_msr(ApicMsr::ICR, icr);
        Ok(())
    }

    fn send_self_ipi(
        &mut self,
        vector: u8,
        _max_polls: u32,
        _delay: &mut impl Delay,
    ) -> Result<(), IpiError> {
        if vector < 16 {
            return Err(IpiError::ReservedVector { vector });
        }
        self.msrs.write_msr(ApicMsr::SELF_IPI, u64::from(vector));
        Ok(())
    }
}
