//! The host re-delivery strategies the scenarios switch between, as one [`Redeliver`]: the
//! direct call (IDT or FRED frame) and the self-NMI (unblocked with IRET or ERETS).

use crate::{apic, host};
use hvkit_nmi_reinject::{
    FredDirectCall, FredEretsToSelf, IdtDirectCall, IdtEntry, IretToSelf, IrqDelivery,
    NmiUnblocker, PollingApic, Redeliver, RedeliveryError, SelfNmi,
};
use hvkit_vmx_core::nmi_source::NmiSourceBitmap;

/// Which strategy re-delivers host events.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    DirectCall,
    SelfNmi,
}

/// The return that unblocks NMIs after a self-NMI: IRET on an IDT host, ERETS on a FRED host.
enum Unblocker {
    Iret(IretToSelf),
    Erets(FredEretsToSelf),
}

impl NmiUnblocker for Unblocker {
    fn unblock_nmis(&mut self) {
        match self {
            Self::Iret(iret) => iret.unblock_nmis(),
            Self::Erets(erets) => erets.unblock_nmis(),
        }
    }
}

type HandlerTable = fn(u8) -> Option<IdtEntry>;

/// Every strategy, and which one is in use.
pub struct Strategies {
    current: Strategy,
    /// Which strategy object runs, decided when the strategy or the host mode changes: one
    /// compare on the exit path.
    route: Route,
    direct: IdtDirectCall<HandlerTable>,
    fred_direct: FredDirectCall,
    self_nmi: HostSelfNmi,
    fred: bool,
}

fn timer_handler(vector: u8) -> Option<IdtEntry> {
    // SAFETY: the host timer entry saves every register it uses, runs on the current stack
    // (no IST) and ends with IRETQ: the direct-call contract.
    (vector == host::TIMER_VECTOR).then(|| unsafe { IdtEntry::from_address(host::timer_entry()) })
}

type HostSelfNmi = SelfNmi<'static, PollingApic<apic::ThisApic>, Unblocker, fn()>;

/// The self-NMI strategy through this CPU's APIC, counting on the host NMI handler's counter.
fn self_nmi(unblocker: Unblocker) -> HostSelfNmi {
    let sender = PollingApic { apic: apic::ThisApic, max_polls: 1000 };
    let spin: fn() = core::hint::spin_loop;
    SelfNmi::new(sender, unblocker, spin, &host::HOST_NMI_HANDLED, 1_000_000)
}

/// The strategy object that re-delivers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    IdtDirect,
    FredDirect,
    SelfNmi,
}

impl Strategies {
    /// Uses `strategy` from now on.
    pub fn select(&mut self, strategy: Strategy) {
        self.current = strategy;
        self.route = match (strategy, self.fred) {
            (Strategy::DirectCall, false) => Route::IdtDirect,
            (Strategy::DirectCall, true) => Route::FredDirect,
            (Strategy::SelfNmi, _) => Route::SelfNmi,
        };
    }

    /// The IDT strategies, direct call first.
    pub fn new() -> Self {
        // SAFETY: the host NMI entry is a non-IST gate that preserves every register and ends
        // with IRETQ: the direct-call contract.
        let nmi_entry = unsafe { IdtEntry::from_address(host::nmi_entry()) };
        // SAFETY: re-delivery runs with interrupts disabled at CPL 0.
        let direct = unsafe { IdtDirectCall::new(nmi_entry, timer_handler as HandlerTable) };
        let red_zone = u64::from(crate::fred_host::FRED_RED_ZONE_UNITS) * 64;
        // SAFETY: used only after `use_fred` (CR4.FRED = 1, CPL 0, the red zone configured in
        // IA32_FRED_CONFIG); the dispatcher leaves RIP/RSP/CS/SS alone.
        let fred_direct =
            unsafe { FredDirectCall::new(crate::fred_host::fred_dispatcher(), red_zone) };
        // SAFETY: IDT host, interrupts disabled, host NMI handler installed.
        let unblocker = Unblocker::Iret(unsafe { IretToSelf::new() });
        Self {
            current: Strategy::DirectCall,
            route: Route::IdtDirect,
            direct,
            fred_direct,
            self_nmi: self_nmi(unblocker),
            fred: false,
        }
    }

    /// The host switched to FRED: the FRED strategies from now on.
    pub fn use_fred(&mut self) {
        let red_zone = u64::from(crate::fred_host::FRED_RED_ZONE_UNITS) * 64;
        // SAFETY: the host is now in FRED mode (CR4.FRED = 1, CPL 0) with this red zone.
        self.self_nmi = self_nmi(Unblocker::Erets(unsafe { FredEretsToSelf::new(red_zone) }));
        self.fred = true;
        self.select(self.current);
    }

    /// The name the report uses.
    pub fn name(&self) -> &'static str {
        match (self.current, self.fred) {
            (Strategy::DirectCall, false) => "direct-call",
            (Strategy::SelfNmi, false) => "self-nmi",
            (Strategy::DirectCall, true) => "fred-direct-call",
            (Strategy::SelfNmi, true) => "fred-self-nmi",
        }
    }

    pub fn fred(&self) -> bool {
        self.fred
    }

    /// The IDT direct call (the micro-benchmark calls it on its own).
    pub fn direct(&mut self) -> &mut IdtDirectCall<HandlerTable> {
        &mut self.direct
    }

    /// Keeps waiting for a self-NMI left in flight (up to 100 more bounded waits, Xen waited
    /// about a second in all); `false` if it never ran.
    pub fn settle(&mut self) -> bool {
        (0..100).any(|_| self.self_nmi.poll_in_flight().is_ok())
    }
}

impl Redeliver for Strategies {
    #[inline(always)]
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        match self.route {
            Route::IdtDirect => self.direct.redeliver_nmi(),
            Route::FredDirect => self.fred_direct.redeliver_nmi(),
            Route::SelfNmi => self.self_nmi.redeliver_nmi(),
        }
    }

    #[inline(always)]
    fn redeliver_nmi_with_sources(
        &mut self,
        sources: NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        match self.route {
            Route::IdtDirect => self.direct.redeliver_nmi_with_sources(sources),
            Route::FredDirect => self.fred_direct.redeliver_nmi_with_sources(sources),
            Route::SelfNmi => self.self_nmi.redeliver_nmi_with_sources(sources),
        }
    }

    #[inline(always)]
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        match self.route {
            Route::IdtDirect => self.direct.redeliver_irq(vector),
            Route::FredDirect => self.fred_direct.redeliver_irq(vector),
            Route::SelfNmi => self.self_nmi.redeliver_irq(vector),
        }
    }
}
