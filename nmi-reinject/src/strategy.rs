//! The [`Redeliver`] trait (host-side re-delivery of the NMI or interrupt a VM exit consumed)
//! and its implementations.

use crate::error::{RedeliveryError, Unsupported, apic_error};
use crate::idt::IdtEntry;
use core::sync::atomic::{AtomicU64, Ordering};
use hvkit_apic::{Delay, LocalApic};

/// How an acknowledged interrupt was re-delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IrqDelivery {
    /// The host handler ran (direct call); it sent the EOI as it does for any interrupt.
    Handled,
    /// The interrupt was EOI'd and re-queued in the local APIC as a self-IPI: the host handler
    /// runs exactly once when the host next enables interrupts (self-NMI strategy).
    Requeued,
}

/// Re-delivers host events that a VM exit consumed.
///
/// Contract:
/// - `redeliver_nmi` returns `Ok(())` only after the host NMI handler has run exactly once for
///   this NMI and NMIs are unblocked again.
/// - `redeliver_irq` returns `Ok(Handled)` after the host handler for `vector` ran once, or
///   `Ok(Requeued)` when the vector is guaranteed to be dispatched once when interrupts are
///   enabled.
/// - On `Err`, [`RedeliveryError::state`] says whether anything happened: `NotDelivered` (the
///   event is still owed, nothing was half-done) or `InFlight` (handed to the hardware; must not
///   be sent again).
pub trait Redeliver {
    /// Re-delivers the NMI that caused the VM exit.
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError>;
    /// Re-delivers the NMI that caused the VM exit together with its NMI sources (CPUID.(7,1):
    /// EAX\[20\] NMI-source reporting: the bitmap the exit qualification of the NMI exit holds).
    ///
    /// What each strategy does with the sources:
    /// - [`FredDirectCall`] puts the bitmap in the FRED frame's event data, where the CPU would
    ///   have put it: the host handler sees the NMI's real sources.
    /// - [`NmiSourceSlot`] (wrapping an IDT strategy) stores it in a per-CPU slot the host NMI
    ///   entry reads: IDT delivery has no event data.
    /// - Every other strategy (the default) **loses** them: [`SelfNmi`] sends a new NMI whose
    ///   only source is the one its IPI names (none: the host handler sees "unknown source",
    ///   bit 0), and [`IdtDirectCall`] alone has nowhere to put them.
    #[inline(always)]
    fn redeliver_nmi_with_sources(
        &mut self,
        sources: hvkit_vmx_core::nmi_source::NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        let _lost = sources;
        self.redeliver_nmi()
    }
    /// Re-delivers the external interrupt `vector` acknowledged on exit.
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError>;
}

/// Any strategy with a hook that runs after each successful interrupt re-delivery, for hosts
/// that must do work once an interrupt was dispatched from an interrupts-off context (for
/// example re-arming deferred timers whose expiry the handler could not program with
/// interrupts off).
///
/// The hook gets the vector and how it was re-delivered ([`IrqDelivery::Handled`]: the handler
/// has run; [`IrqDelivery::Requeued`]: it runs when the host next enables interrupts). It is
/// not called when re-delivery fails, and NMIs pass straight through. Costs nothing for
/// strategies that are not wrapped.
#[derive(Debug, Clone, Copy)]
pub struct AfterIrqHook<R: Redeliver, F: FnMut(u8, IrqDelivery)> {
    /// The wrapped strategy.
    pub strategy: R,
    hook: F,
}

impl<R: Redeliver, F: FnMut(u8, IrqDelivery)> AfterIrqHook<R, F> {
    /// `strategy`, with `hook` run after each interrupt it re-delivers.
    pub const fn new(strategy: R, hook: F) -> Self {
        Self { strategy, hook }
    }
}

impl<R: Redeliver, F: FnMut(u8, IrqDelivery)> Redeliver for AfterIrqHook<R, F> {
    #[inline(always)]
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.strategy.redeliver_nmi()
    }

    #[inline(always)]
    fn redeliver_nmi_with_sources(
        &mut self,
        sources: hvkit_vmx_core::nmi_source::NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        self.strategy.redeliver_nmi_with_sources(sources)
    }

    #[inline]
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        let delivery = self.strategy.redeliver_irq(vector)?;
        (self.hook)(vector, delivery);
        Ok(delivery)
    }
}

/// A strategy for IDT hosts that keeps the NMI sources of a re-delivered NMI in a per-CPU slot
/// before re-delivering it, since an IDT frame has no event data: the host NMI entry reads the
/// slot with [`NmiSourceSlot::take`] (0 when the NMI did not come through a VM exit).
///
/// The slot is per CPU (one `NmiSourceSlot` per logical processor, reached from that
/// processor's NMI entry); it is atomic because an NMI handler may read it at any time.
#[derive(Debug)]
pub struct NmiSourceSlot<R: Redeliver> {
    /// The wrapped strategy (usually [`IdtDirectCall`]).
    pub strategy: R,
    slot: &'static core::sync::atomic::AtomicU16,
}

impl<R: Redeliver> NmiSourceSlot<R> {
    /// `strategy`, storing NMI sources in `slot` (this CPU's).
    pub const fn new(strategy: R, slot: &'static core::sync::atomic::AtomicU16) -> Self {
        Self { strategy, slot }
    }

    /// For the host NMI entry: the sources of the NMI being handled, if it was re-delivered
    /// after a VM exit, and 0 otherwise; the slot is left empty.
    pub fn take(
        slot: &core::sync::atomic::AtomicU16,
    ) -> hvkit_vmx_core::nmi_source::NmiSourceBitmap {
        hvkit_vmx_core::nmi_source::NmiSourceBitmap::from_raw(slot.swap(0, Ordering::AcqRel))
    }
}

impl<R: Redeliver> Redeliver for NmiSourceSlot<R> {
    #[inline(always)]
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.strategy.redeliver_nmi()
    }

    #[inline]
    fn redeliver_nmi_with_sources(
        &mut self,
        sources: hvkit_vmx_core::nmi_source::NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        self.slot.store(sources.raw(), Ordering::Release);
        let result = self.strategy.redeliver_nmi();
        if result.is_err() {
            // Not delivered (or left in flight): the handler that runs later must not see
            // sources that belong to no NMI it handles now.
            self.slot.store(0, Ordering::Release);
        }
        result
    }

    #[inline(always)]
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.strategy.redeliver_irq(vector)
    }
}

/// Host interrupt entries by vector, for [`IdtDirectCall`].
pub trait HandlerTable {
    /// The entry for `vector`, if any (see [`IdtEntry`] for what an entry must do).
    fn handler(&self, vector: u8) -> Option<IdtEntry>;
}

impl HandlerTable for [Option<IdtEntry>; 256] {
    fn handler(&self, vector: u8) -> Option<IdtEntry> {
        self.get(usize::from(vector)).copied().flatten()
    }
}

impl<F: Fn(u8) -> Option<IdtEntry>> HandlerTable for F {
    fn handler(&self, vector: u8) -> Option<IdtEntry> {
        self(vector)
    }
}

/// Direct call on IDT hosts: the IRET frame the CPU would have pushed, then a call into the
/// handler, which returns with IRETQ (unblocking NMIs). This is what Linux KVM does.
///
/// Every entry it calls meets the direct-call contract documented on [`IdtEntry`] (frame,
/// stack, registers). The NMI entry must be a dedicated entry that is safe on the current
/// stack, **not** the IDT's NMI gate if that gate uses an IST stack: called directly, an IST
/// handler would run on the wrong stack (a real bug fixed in Linux, commit a217a6593cec).
/// [`idt_entry_stub!`](crate::idt_entry_stub) builds such entries around Rust handlers.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "read by the x86_64-only delivery assembly")
)]
#[derive(Debug, Clone, Copy)]
pub struct IdtDirectCall<T: HandlerTable> {
    nmi_entry: IdtEntry,
    handlers: T,
    /// CS and SS of the host, read at construction for the IRET frame.
    cs: u64,
    ss: u64,
}

impl<T: HandlerTable> IdtDirectCall<T> {
    /// A strategy calling `nmi_entry` for NMIs and `handlers` for interrupt vectors. Reads the
    /// current CS and SS selectors for the IRET frames it builds: construct it in the context
    /// (code and stack segments) re-delivery runs in.
    ///
    /// # Safety
    ///
    /// Re-delivery is called with interrupts disabled at CPL 0 (the entries themselves are
    /// vouched for by the [`IdtEntry`] values).
    pub unsafe fn new(nmi_entry: IdtEntry, handlers: T) -> Self {
        #[cfg(target_arch = "x86_64")]
        let (cs, ss) = crate::idt::current_selectors();
        #[cfg(not(target_arch = "x86_64"))]
        let (cs, ss) = (0, 0);
        Self { nmi_entry, handlers, cs, ss }
    }
}

#[cfg(target_arch = "x86_64")]
impl<T: HandlerTable> Redeliver for IdtDirectCall<T> {
    #[inline]
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        // SAFETY: the constructor's contract covers the entry.
        unsafe { crate::idt::call_with_iret_frame(self.nmi_entry.address(), self.cs, self.ss) };
        Ok(())
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        if vector < 32 {
            return Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector }));
        }
        let handler = self
            .handlers
            .handler(vector)
            .ok_or(RedeliveryError::Unsupported(Unsupported::NoHandler { vector }))?;
        // SAFETY: the constructor's contract covers the handlers.
        unsafe { crate::idt::call_with_iret_frame(handler.address(), self.cs, self.ss) };
        Ok(IrqDelivery::Handled)
    }
}

/// Direct call on FRED hosts: hvkit-fred's software delivery builds the FRED frame (NMI bit set
/// for NMIs) and returns with ERETS.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "read by the x86_64-only delivery assembly")
)]
#[derive(Debug, Clone, Copy)]
pub struct FredDirectCall {
    dispatcher: hvkit_fred::Dispatcher,
    red_zone_bytes: u64,
}

impl FredDirectCall {
    /// A strategy delivering to `dispatcher` (the same function the host's FRED entry stubs
    /// call), skipping `red_zone_bytes` (the red zone configured in IA32_FRED_CONFIG).
    ///
    /// # Safety
    ///
    /// The host runs with CR4.FRED = 1 at CPL 0; the conditions of
    /// [`hvkit_fred::deliver::deliver`] hold.
    pub const unsafe fn new(dispatcher: hvkit_fred::Dispatcher, red_zone_bytes: u64) -> Self {
        Self { dispatcher, red_zone_bytes }
    }
}

#[cfg(target_arch = "x86_64")]
impl Redeliver for FredDirectCall {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        // No sources known: event data 0, as `deliver` gives.
        self.redeliver_nmi_with_sources(hvkit_vmx_core::nmi_source::NmiSourceBitmap::from_raw(0))
    }

    fn redeliver_nmi_with_sources(
        &mut self,
        sources: hvkit_vmx_core::nmi_source::NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        // SAFETY: the constructor's contract; the event data slot takes any value.
        unsafe {
            hvkit_fred::deliver::deliver_with_event_data(
                hvkit_fred::deliver::SoftwareEvent::Nmi,
                sources.event_data(),
                self.red_zone_bytes,
                self.dispatcher,
            )
        };
        Ok(())
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        let event = hvkit_fred::deliver::SoftwareEvent::try_new(
            hvkit_fred::EventType::ExternalInterrupt,
            vector,
        )
        .map_err(|_| RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector }))?;
        // SAFETY: the constructor's contract.
        unsafe { hvkit_fred::deliver::deliver(event, self.red_zone_bytes, self.dispatcher) };
        Ok(IrqDelivery::Handled)
    }
}

/// Unblocks NMIs without an event: IRET-to-self on IDT hosts ([`IretToSelf`]), NMI-marked
/// ERETS-to-self on FRED hosts ([`FredEretsToSelf`]), or a test double.
pub trait NmiUnblocker {
    /// Executes the return that unblocks NMIs; a pending NMI is taken right after it.
    fn unblock_nmis(&mut self);
}

/// IRETQ to the next instruction, which unblocks NMIs on IDT hosts.
#[derive(Debug, Clone, Copy)]
pub struct IretToSelf {
    _cpl0: (),
}

impl IretToSelf {
    /// # Safety
    ///
    /// IDT host (no FRED), interrupts disabled; any NMI pending at the IRETQ will be taken at
    /// once by the host's NMI handler, which must be ready.
    pub const unsafe fn new() -> Self {
        Self { _cpl0: () }
    }
}

#[cfg(target_arch = "x86_64")]
impl NmiUnblocker for IretToSelf {
    fn unblock_nmis(&mut self) {
        // SAFETY: the constructor's contract; the IRET returns to the next instruction with the
        // same stack, segments and flags.
        unsafe { crate::idt::iret_to_self() }
    }
}

/// ERETS-to-self with the NMI bit set, which unblocks NMIs on FRED hosts.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "read by the x86_64-only delivery assembly")
)]
#[derive(Debug, Clone, Copy)]
pub struct FredEretsToSelf {
    red_zone_bytes: u64,
}

impl FredEretsToSelf {
    /// # Safety
    ///
    /// FRED host (CR4.FRED = 1, CPL 0), interrupts disabled; `red_zone_bytes` as configured.
    pub const unsafe fn new(red_zone_bytes: u64) -> Self {
        Self { red_zone_bytes }
    }
}

#[cfg(target_arch = "x86_64")]
extern "C" fn no_op_dispatcher(_: &mut hvkit_fred::Frame, _: &mut hvkit_fred::SavedRegisters) {}

#[cfg(target_arch = "x86_64")]
impl NmiUnblocker for FredEretsToSelf {
    fn unblock_nmis(&mut self) {
        // SAFETY: the constructor's contract; the dispatcher does nothing, so the ERETS of the
        // NMI-marked frame is all that happens.
        unsafe {
            hvkit_fred::deliver::deliver(
                hvkit_fred::deliver::SoftwareEvent::Nmi,
                self.red_zone_bytes,
                no_op_dispatcher,
            )
        }
    }
}

/// The local APIC operations the self-NMI strategy uses: self-NMI, fixed self-IPI, the TMR
/// bit of a vector, and EOI.
pub trait LocalApicPort {
    /// Sends an NMI to this processor (physical destination = own APIC ID).
    fn send_self_nmi(&mut self) -> Result<(), hvkit_apic::IpiError>;
    /// Sends a fixed, edge-triggered self-IPI with `vector`.
    fn send_self_ipi(&mut self, vector: u8) -> Result<(), hvkit_apic::IpiError>;
    /// `true` when `vector` was accepted level-triggered (TMR bit set).
    fn is_level_triggered(&self, vector: u8) -> bool;
    /// Signals end of interrupt.
    fn eoi(&mut self);
}

/// A [`LocalApic`] as a [`LocalApicPort`] that polls the ICR delivery status at most
/// `max_polls` times per send (xAPIC only: the x2APIC ICR has no delivery-status bit, SDM Vol.
/// 3A "ICR Operation in x2APIC Mode").
#[derive(Debug)]
pub struct PollingApic<A: LocalApic> {
    /// The APIC.
    pub apic: A,
    /// Delivery-status polls per send (xAPIC only).
    pub max_polls: u32,
}

impl<A: LocalApic> LocalApicPort for PollingApic<A> {
    fn send_self_nmi(&mut self) -> Result<(), hvkit_apic::IpiError> {
        self.apic.send_self_nmi(self.max_polls, &mut || core::hint::spin_loop())
    }

    fn send_self_ipi(&mut self, vector: u8) -> Result<(), hvkit_apic::IpiError> {
        self.apic.send_self_ipi(vector, self.max_polls, &mut || core::hint::spin_loop())
    }

    fn is_level_triggered(&self, vector: u8) -> bool {
        self.apic.is_level_triggered(vector)
    }

    fn eoi(&mut self) {
        self.apic.eoi();
    }
}

/// Self-NMI re-delivery (what Xen did): send an NMI to the own APIC, unblock NMIs, and wait —
/// with a bound — until the host NMI handler has counted it.
///
/// Hazards this type handles (SDM Vol. 3A "Handling Multiple NMIs"; a VM exit caused by an NMI
/// leaves NMIs blocked until the next IRET, SDM Vol. 3C chapter "VM Exits"): delivery is asynchronous, so `Ok` is
/// returned only after `handled` moved; the wait is bounded and a timeout says the NMI is still
/// in flight (do not re-enter the guest: it would take NMI exits in a loop). Hazards it cannot
/// remove: NMIs that arrive meanwhile may merge with or overtake the re-sent one (NMIs may be
/// handled out of order, as on bare metal); an IRET executed by an interrupt handler before the
/// unblock would unblock NMIs early, so call it first, with interrupts disabled.
///
/// **Merging (a count this strategy loses, by design).** A processor holds at most one NMI pending
/// while NMIs are blocked (SDM Vol. 3A "Handling Multiple NMIs"; two NMIs that arrive while one is
/// blocked are one). The VM exit of an NMI leaves NMIs blocked, so a second host NMI that arrives
/// between that exit and the unblock (another CPU's IPI, a watchdog) is latched; the self-NMI this
/// strategy sends then finds the latch full and merges with it: the host handler runs once for two
/// NMIs. The handled-counter still moves, so `Ok` is returned and nothing detects the merge from
/// inside the strategy. A host whose NMI handler must see every NMI (NMI-based profiling, counted
/// backtrace requests) should use a direct call ([`IdtDirectCall`], [`FredDirectCall`]): it runs
/// the handler for the exit's NMI before the unblock, and the latched one is delivered after it,
/// twice in all. Handlers that poll all their NMI sources on each invocation (the usual design,
/// since NMIs also merge on bare metal) lose nothing. The example hypervisor's `multiple-nmi`
/// scenario shows both: two NMIs sent to a CPU in its guest are handled twice with the direct call
/// and once (`merged=1`) with this strategy.
///
/// Interrupts: the vector is re-sent as a fixed self-IPI and then EOI'd ([`IrqDelivery::Requeued`]):
/// the host takes it when it enables interrupts, after any higher-priority pending ones (the
/// original order is not kept). Level-triggered interrupts are refused: EOI would drop the level.
///
/// After a timeout ([`RedeliveryError::NmiNotHandled`], state `InFlight`) the NMI was sent and
/// NMIs unblocked, so it must not be sent again: keep waiting with
/// [`poll_in_flight`](Self::poll_in_flight) (as often as the host's policy allows, Xen
/// waited 1000 ms in all) before entering the guest. [`in_flight`](Self::in_flight) shows the
/// handled-counter value the wait is for the counter to move from.
#[derive(Debug)]
pub struct SelfNmi<'counter, S: LocalApicPort, U: NmiUnblocker, D: Delay> {
    apic: S,
    unblocker: U,
    delay: D,
    handled: &'counter AtomicU64,
    max_polls: u32,
    /// The counter's value before the send of an NMI that timed out and is still in flight.
    in_flight: Option<u64>,
}

impl<'counter, S: LocalApicPort, U: NmiUnblocker, D: Delay> SelfNmi<'counter, S, U, D> {
    /// A strategy: `handled` is the counter the host NMI handler increments once per NMI;
    /// at most `max_polls` reads of it are made, with `delay` between them.
    pub const fn new(
        apic: S,
        unblocker: U,
        delay: D,
        handled: &'counter AtomicU64,
        max_polls: u32,
    ) -> Self {
        Self { apic, unblocker, delay, handled, max_polls, in_flight: None }
    }

    /// The handled-counter value from before the send of the NMI still in flight (the last
    /// [`redeliver_nmi`](Redeliver::redeliver_nmi) timed out and no
    /// [`poll_in_flight`](Self::poll_in_flight) has seen the counter move since), or `None`.
    /// The NMI has been handled once the counter differs from it.
    pub const fn in_flight(&self) -> Option<u64> {
        self.in_flight
    }

    /// Keeps waiting for the NMI in flight: up to the strategy's bound of polls, with its delay
    /// between them, without sending anything or unblocking NMIs again. `Ok` when the handler
    /// has run (or nothing was in flight); on another timeout the NMI stays in flight.
    pub fn poll_in_flight(&mut self) -> Result<(), RedeliveryError> {
        let Some(baseline) = self.in_flight else {
            return Ok(());
        };
        self.wait_for_handler(baseline)
    }

    /// Polls until `handled` moves away from `baseline`; records `baseline` as in flight on a
    /// timeout and clears it on success.
    fn wait_for_handler(&mut self, baseline: u64) -> Result<(), RedeliveryError> {
        for _ in 0..self.max_polls {
            if self.handled.load(Ordering::SeqCst) != baseline {
                self.in_flight = None;
                return Ok(());
            }
            self.delay.delay();
        }
        self.in_flight = Some(baseline);
        Err(RedeliveryError::NmiNotHandled { polls: self.max_polls })
    }

    /// The local APIC port (e.g. to reach the APIC).
    pub fn apic_mut(&mut self) -> &mut S {
        &mut self.apic
    }
}

impl<S: LocalApicPort, U: NmiUnblocker, D: Delay> Redeliver for SelfNmi<'_, S, U, D> {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        let before = self.handled.load(Ordering::SeqCst);
        self.apic.send_self_nmi().map_err(apic_error)?;
        self.unblocker.unblock_nmis();
        self.wait_for_handler(before)
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        if vector < 32 {
            return Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector }));
        }
        if self.apic.is_level_triggered(vector) {
            return Err(RedeliveryError::Unsupported(Unsupported::LevelTriggered { vector }));
        }
        // Re-queue first: the new request waits in the IRR behind the in-service copy, so a
        // failed send leaves the interrupt exactly as it was (in service, no EOI sent).
        self.apic.send_self_ipi(vector).map_err(apic_error)?;
        self.apic.eoi();
        Ok(IrqDelivery::Requeued)
    }
}
