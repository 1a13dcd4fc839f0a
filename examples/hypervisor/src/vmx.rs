//! VMX bring-up: detection with a message per missing prerequisite, VMXON, VMCS, EPT.

use crate::host;
use crate::memory::HwCell;
use crate::println;
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::caps::{FeatureControl, HardwareMsrs, VmxCapabilities, VmxonReadiness, msr};
use hvkit_vmx_core::controls::{
    self, AdjustedControls, ControlRequest, EntryControls, ExitControls, PinBasedControls,
    PrimaryControls, SecondaryControls,
};
use hvkit_vmx_core::exception_bitmap::ExceptionBitmap;
use hvkit_vmx_core::field;
use hvkit_vmx_core::fred_state::{FredMsrState, HardwareFredMsrs};
use hvkit_vmx_core::region::{VmcsRegion, VmxonRegion};
use hvkit_vmx_core::vmcs::{ActiveVmcs, ClearVmcs, VmcsAccess, VmxRoot};

static VMXON_REGION: HwCell<VmxonRegion> = HwCell::new(VmxonRegion::new(0));
static VMCS_REGION: HwCell<VmcsRegion> = HwCell::new(VmcsRegion::new(0));
/// Set once [`guest_vmcs`] has handed out [`VMCS_REGION`].
static VMCS_TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Set by [`enable`] when the controls enable EPT; [`invept_all`] does nothing while clear.
static EPT_IN_USE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// 4-level EPT: PML4, one PDPT (4 GiB), 4 PDs of 2 MiB pages, and one PT for the guest area.
#[repr(C, align(4096))]
struct Ept {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; 4],
    pt: [u64; 512],
}

static EPT: HwCell<Ept> =
    HwCell::new(Ept { pml4: [0; 512], pdpt: [0; 512], pd: [[0; 512]; 4], pt: [0; 512] });

const EPT_RWX: u64 = 0x7;
const EPT_WB: u64 = 6 << 3;
const EPT_LARGE: u64 = 1 << 7;

/// Why VMX cannot be used here.
pub fn detect() -> Result<(), &'static str> {
    // SAFETY: CPUID has no side effects.
    #[allow(unused_unsafe, reason = "__cpuid is unsafe on older compilers")]
    let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
    if leaf1.ecx & (1 << 5) == 0 {
        return Err(
            "CPUID.1:ECX.VMX[bit 5] = 0: this CPU (or emulator) offers no VMX; QEMU's TCG does not emulate VMX, use Bochs or KVM with nested VMX",
        );
    }
    Ok(())
}

/// CR0, CR3 and CR4 as raw values.
fn control_registers() -> (u64, u64, u64) {
    // SAFETY: CPL 0 (this kernel runs only there); reading control registers has no side
    // effects.
    unsafe {
        use x86::controlregs::{cr0, cr3, cr4};
        (cr0().bits() as u64, cr3(), cr4().bits() as u64)
    }
}

/// Capabilities read once.
pub struct Vmx {
    /// The capability MSRs.
    pub caps: VmxCapabilities,
    /// The controls written to the VMCS.
    pub controls: AdjustedControls,
    /// Whether EPT is in use.
    pub ept: bool,
    /// The CPU enumerates FRED (CPUID.(7,1):EAX\[17\]), so the FRED MSRs exist.
    pub fred_cpu: bool,
}

/// Whether the VMCS FRED-state controls are requested: `Ok` with why they are, `Err` with why
/// not. They are requested only when the CPU has FRED and offers all of them: VM-entry control
/// 23 "load FRED", primary VM-exit control 31 with IA32_VMX_EXIT_CTLS2 (0x493) bits 0 "save
/// FRED" and 1 "load FRED" (SDM Vol. 3D A.4.2, A.5).
fn fred_vmcs_controls(
    caps: &VmxCapabilities,
    fred_cpu: bool,
) -> Result<&'static str, &'static str> {
    let offered = caps.fred_controls();
    if !fred_cpu {
        Err("CPU has no FRED (CPUID.(7,1):EAX[17]=0)")
    } else if !offered.load_guest_on_entry {
        Err("IA32_VMX_ENTRY_CTLS does not allow VM-entry control 23 (load FRED)")
    } else if !offered.secondary_exit_controls {
        Err("no secondary VM-exit controls (exit control 31 not allowed or no IA32_VMX_EXIT_CTLS2)")
    } else if !(offered.save_guest_on_exit && offered.load_host_on_exit) {
        Err("IA32_VMX_EXIT_CTLS2 does not allow bits 0 (save FRED) and 1 (load FRED)")
    } else {
        Ok("entry control 23 and secondary exit controls 0-1 offered")
    }
}

/// Makes IA32_FEATURE_CONTROL allow VMXON outside SMX on this CPU (enabling and locking it when
/// firmware left it unlocked), or says why it cannot (SDM Vol. 3C 24.7 "Enabling and Entering
/// VMX Operation").
pub fn enable_feature_control() -> Result<(), &'static str> {
    // SAFETY: CPL 0; IA32_FEATURE_CONTROL exists on every CPU with VMX (the caller checked
    // CPUID.1:ECX.VMX on this CPU model).
    let feature = FeatureControl(unsafe { x86::msr::rdmsr(msr::IA32_FEATURE_CONTROL) });
    match feature.vmxon_readiness() {
        VmxonReadiness::Ready => Ok(()),
        VmxonReadiness::NeedsEnabling => {
            // SAFETY: CPL 0; the MSR is unlocked (NeedsEnabling), so the write is allowed, and
            // it only enables VMX outside SMX and locks the MSR.
            unsafe { x86::msr::wrmsr(msr::IA32_FEATURE_CONTROL, feature.enabling_value()) };
            Ok(())
        }
        VmxonReadiness::DisabledByFirmware => {
            Err("IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled (firmware setting)")
        }
    }
}

/// Enables VMX: feature control, fixed bits, VMXON, controls. Prints each step. Returns the
/// capabilities and this CPU's VMX root token.
pub fn enable() -> Result<(Vmx, VmxRoot), &'static str> {
    enable_feature_control()?;
    // SAFETY: VMX exists (detect), CPL 0.
    let msrs = unsafe { HardwareMsrs::new() };
    let caps =
        VmxCapabilities::read(&msrs).map_err(|_| "a required VMX capability MSR is missing")?;
    println!(
        "HVKIT caps basic={:#x} revision={:#x} pin={:#x} proc={:#x} exit={:#x} entry={:#x} misc={:#x} secondary={}",
        caps.basic.0,
        caps.basic.revision_id(),
        caps.default_pin,
        caps.default_primary,
        caps.default_exit,
        caps.default_entry,
        caps.misc.0,
        caps.secondary_controls().is_some()
    );
    let (cr0, _, cr4) = control_registers();
    let cr4 = caps.cr4.adjust(cr4 | (1 << 13));
    caps.cr0.check(cr0).map_err(|_| "CR0 does not satisfy IA32_VMX_CR0_FIXED0/1")?;
    // SAFETY: CPL 0; CR4 adjusted to the VMX fixed bits (sets VMXE), every other bit as it was.
    unsafe { crate::cpu::write_cr4(|_| cr4) };

    let revision = caps.basic.revision_id();
    // SAFETY: the bootstrap processor's region, written once before its VMXON (the APs have
    // their own); nothing else refers to it.
    let vmxon = unsafe {
        VMXON_REGION.get().write(VmxonRegion::new(revision));
        VMXON_REGION.address()
    };
    // SAFETY: CR0/CR4 fixed bits hold, feature control allows VMXON, the region is identity-mapped.
    let root = unsafe { VmxRoot::enable(vmxon) }.map_err(|_| "VMXON failed")?;

    let ept_possible = caps
        .secondary_controls()
        .is_some_and(|allowed| allowed.allows(SecondaryControls::ENABLE_EPT))
        && caps.ept_vpid.is_some_and(|ept| {
            ept.contains(
                hvkit_vmx_core::caps::EptVpidCapabilities::PAGE_WALK_4
                    | hvkit_vmx_core::caps::EptVpidCapabilities::MEMORY_TYPE_WB
                    | hvkit_vmx_core::caps::EptVpidCapabilities::PAGE_2M,
            )
        });
    let request = ControlRequest {
        pin: PinBasedControls::EXTERNAL_INTERRUPT_EXITING
            | PinBasedControls::NMI_EXITING
            | PinBasedControls::VIRTUAL_NMIS,
        primary: PrimaryControls::empty(),
        secondary: if ept_possible {
            SecondaryControls::ENABLE_EPT
        } else {
            SecondaryControls::empty()
        },
        exit: ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
        entry: EntryControls::IA32E_MODE_GUEST,
        ..ControlRequest::default()
    };
    let fred_cpu = hvkit_fred::config::fred_supported(hvkit_fred::config::cpuid_7_1_eax());
    let fred_choice = fred_vmcs_controls(&caps, fred_cpu);
    let request = if fred_choice.is_ok() { request.with_fred_state() } else { request };
    let controls = controls::adjust(&caps, &request)
        .map_err(|_| "a required VM-execution control is not supported")?;
    match fred_choice {
        Ok(reason) => println!("HVKIT fred vmcs-controls=on reason=\"{reason}\""),
        Err(reason) if fred_cpu => println!(
            "HVKIT fred vmcs-controls=off reason=\"{reason}\" guard=\"every RDMSR/WRMSR exits (no MSR bitmap); the FRED MSRs 0x1CC-0x1D4 are emulated from a per-guest shadow; guest CR4.FRED is owned by the host (CR4 guest/host mask)\""
        ),
        Err(reason) => println!("HVKIT fred vmcs-controls=off reason=\"{reason}\""),
    }
    println!(
        "HVKIT controls pin={:#x} primary={:#x} secondary={:#x} exit={:#x} entry={:#x} ept={}",
        controls.pin.bits(),
        controls.primary.bits(),
        controls.secondary.bits(),
        controls.exit.bits(),
        controls.entry.bits(),
        ept_possible
    );
    EPT_IN_USE.store(ept_possible, core::sync::atomic::Ordering::SeqCst);
    Ok((Vmx { caps, controls, ept: ept_possible, fred_cpu }, root))
}

/// The guest's VMCS region, handed out once (a second call ends the run).
pub fn guest_vmcs(vmx: &Vmx) -> ClearVmcs {
    if VMCS_TAKEN.swap(true, core::sync::atomic::Ordering::SeqCst) {
        crate::port::exit(crate::port::status::PANIC)
    }
    // SAFETY: the bootstrap processor's region; the flag above makes this the only use.
    let address = unsafe {
        VMCS_REGION.get().write(VmcsRegion::new(vmx.caps.basic.revision_id()));
        VMCS_REGION.address()
    };
    // SAFETY: 1. a 4 KiB-aligned, identity-mapped VMCS region with this CPU's revision id;
    // 2. a static that only the processor uses from here on; 3. handed out once (the flag);
    // 4. never made current before.
    unsafe { ClearVmcs::new(address) }
}

/// Builds the identity EPT; returns the EPTP. The 2 MiB region at `area` uses 4 KiB pages.
pub fn build_ept(area: u64) -> u64 {
    let area_index = (area >> 21) as usize;
    // SAFETY: built once by the bootstrap processor before any guest runs (the APs' guests
    // share it later); the processors only read it after VM entry.
    unsafe {
        let ept = &mut *EPT.get();
        ept.pml4[0] = core::ptr::addr_of!(ept.pdpt) as u64 | EPT_RWX;
        for (index, pd) in ept.pd.iter_mut().enumerate() {
            ept.pdpt[index] = pd.as_ptr() as u64 | EPT_RWX;
            for (entry, slot) in pd.iter_mut().enumerate() {
                let address = ((index * 512 + entry) as u64) << 21;
                *slot = address | EPT_RWX | EPT_WB | EPT_LARGE;
            }
        }
        for (entry, slot) in ept.pt.iter_mut().enumerate() {
            *slot = (area + ((entry as u64) << 12)) | EPT_RWX | EPT_WB;
        }
        ept.pd[area_index / 512][area_index % 512] = core::ptr::addr_of!(ept.pt) as u64 | EPT_RWX;
        core::ptr::addr_of!(ept.pml4) as u64 | (3 << 3) | 6
    }
}

/// Sets the EPT permissions of the 4 KiB page at `address` inside the guest area.
pub fn set_page_access(area: u64, address: u64, rwx: u64) {
    let index = ((address - area) >> 12) as usize & 511;
    // SAFETY: only the bootstrap processor changes the EPT (one entry of its guest area's page
    // table), during its own guest's scenarios, which run after the APs' guests have stopped;
    // the caller invalidates with INVEPT.
    unsafe {
        let ept = &mut *EPT.get();
        ept.pt[index] = (ept.pt[index] & !7) | (rwx & 7);
    }
}

/// Invalidates EPT-derived translations (all contexts). Does nothing when EPT is not in use:
/// INVEPT raises #UD on a CPU without EPT (Intel SDM Vol. 3C, "INVEPT—Invalidate Translations
/// Derived from EPT", exceptions).
pub fn invept_all() {
    if !EPT_IN_USE.load(core::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let descriptor = hvkit_vmx_core::instr::InveptDescriptor::new(0);
    // SAFETY: VMX root, EPT in use.
    let _ = unsafe {
        hvkit_vmx_core::instr::invept(hvkit_vmx_core::instr::InveptType::AllContext, &descriptor)
    };
}

/// Host and guest state of the VMCS.
pub fn setup_vmcs(
    vmcs: &mut ActiveVmcs<'_>,
    vmx: &Vmx,
    guest_rip: u64,
    guest_rsp: u64,
    guest_idt: u64,
    eptp: u64,
) -> Result<(), VmFail> {
    // Pin, primary, secondary (when activated), exit, secondary exit (0x2044, when exit
    // control 31 is set: the FRED controls) and entry controls.
    vmx.controls.write(vmcs)?;
    // #DB and #AC always exit (a guest could otherwise hang the host with them).
    vmcs.write(field::EXCEPTION_BITMAP, ExceptionBitmap::new().raw())?;
    vmcs.write(field::CR3_TARGET_COUNT, 0)?;
    vmcs.write(field::VM_EXIT_MSR_STORE_COUNT, 0)?;
    vmcs.write(field::VM_EXIT_MSR_LOAD_COUNT, 0)?;
    vmcs.write(field::VM_ENTRY_MSR_LOAD_COUNT, 0)?;
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0)?;
    vmcs.write(field::VMCS_LINK_POINTER, u64::MAX)?;
    if vmx.ept {
        vmcs.write(field::EPT_POINTER, eptp)?;
    }

    let (cr0, cr3, cr4) = control_registers();
    let gdtr = host::gdtr();
    let idtr = host::idtr();
    let tss = host::tss_base();
    vmcs.write(field::HOST_CR0, cr0)?;
    vmcs.write(field::HOST_CR3, cr3)?;
    vmcs.write(field::HOST_CR4, cr4)?;
    vmcs.write(field::HOST_CS_SELECTOR, 0x08)?;
    for selector in [
        field::HOST_SS_SELECTOR,
        field::HOST_DS_SELECTOR,
        field::HOST_ES_SELECTOR,
        field::HOST_FS_SELECTOR,
        field::HOST_GS_SELECTOR,
    ] {
        vmcs.write(selector, 0x10)?;
    }
    // This CPU's TSS descriptor, and its per-CPU GS base (the host handlers count through it).
    vmcs.write(field::HOST_TR_SELECTOR, host::tr_selector())?;
    vmcs.write(field::HOST_FS_BASE, 0)?;
    vmcs.write(field::HOST_GS_BASE, crate::percpu::gs_base())?;
    vmcs.write(field::HOST_TR_BASE, tss)?;
    vmcs.write(field::HOST_GDTR_BASE, gdtr.base)?;
    vmcs.write(field::HOST_IDTR_BASE, idtr.base)?;
    vmcs.write(field::HOST_IA32_SYSENTER_CS, 0)?;
    vmcs.write(field::HOST_IA32_SYSENTER_ESP, 0)?;
    vmcs.write(field::HOST_IA32_SYSENTER_EIP, 0)?;

    vmcs.write(field::GUEST_CR0, cr0)?;
    vmcs.write(field::GUEST_CR3, cr3)?;
    vmcs.write(field::GUEST_CR4, cr4)?;
    vmcs.write(field::CR0_READ_SHADOW, cr0)?;
    vmcs.write(field::CR4_READ_SHADOW, cr4 & !(1 << 13))?;
    vmcs.write(field::GUEST_DR7, 0x400)?;
    vmcs.write(field::GUEST_RSP, guest_rsp)?;
    vmcs.write(field::GUEST_RIP, guest_rip)?;
    // IF = 1 from the start: real hardware takes a pending host interrupt at VM entry whatever the
    // guest's IF, but Bochs 2.7 does not while the guest has IF = 0 (shared/RIG.md).
    vmcs.write(field::GUEST_RFLAGS, 0x202)?;
    vmcs.write(field::GUEST_CS_SELECTOR, 0x08)?;
    vmcs.write(field::GUEST_CS_BASE, 0)?;
    vmcs.write(field::GUEST_CS_LIMIT, 0xFFFF_FFFF)?;
    vmcs.write(field::GUEST_CS_ACCESS_RIGHTS, 0xA09B)?;
    for (selector, base, limit, rights) in [
        (
            field::GUEST_SS_SELECTOR,
            field::GUEST_SS_BASE,
            field::GUEST_SS_LIMIT,
            field::GUEST_SS_ACCESS_RIGHTS,
        ),
        (
            field::GUEST_DS_SELECTOR,
            field::GUEST_DS_BASE,
            field::GUEST_DS_LIMIT,
            field::GUEST_DS_ACCESS_RIGHTS,
        ),
        (
            field::GUEST_ES_SELECTOR,
            field::GUEST_ES_BASE,
            field::GUEST_ES_LIMIT,
            field::GUEST_ES_ACCESS_RIGHTS,
        ),
        (
            field::GUEST_FS_SELECTOR,
            field::GUEST_FS_BASE,
            field::GUEST_FS_LIMIT,
            field::GUEST_FS_ACCESS_RIGHTS,
        ),
        (
            field::GUEST_GS_SELECTOR,
            field::GUEST_GS_BASE,
            field::GUEST_GS_LIMIT,
            field::GUEST_GS_ACCESS_RIGHTS,
        ),
    ] {
        vmcs.write(selector, 0x10)?;
        vmcs.write(base, 0)?;
        vmcs.write(limit, 0xFFFF_FFFF)?;
        vmcs.write(rights, 0xC093)?;
    }
    vmcs.write(field::GUEST_LDTR_SELECTOR, 0)?;
    vmcs.write(field::GUEST_LDTR_BASE, 0)?;
    vmcs.write(field::GUEST_LDTR_LIMIT, 0)?;
    vmcs.write(field::GUEST_LDTR_ACCESS_RIGHTS, 0x1_0000)?;
    vmcs.write(field::GUEST_TR_SELECTOR, 0x18)?;
    vmcs.write(field::GUEST_TR_BASE, tss)?;
    vmcs.write(field::GUEST_TR_LIMIT, 103)?;
    vmcs.write(field::GUEST_TR_ACCESS_RIGHTS, 0x8B)?;
    vmcs.write(field::GUEST_GDTR_BASE, gdtr.base)?;
    vmcs.write(field::GUEST_GDTR_LIMIT, u32::from(gdtr.limit))?;
    vmcs.write(field::GUEST_IDTR_BASE, guest_idt)?;
    vmcs.write(field::GUEST_IDTR_LIMIT, 256 * 16 - 1)?;
    vmcs.write(field::GUEST_IA32_DEBUGCTL, 0)?;
    vmcs.write(field::GUEST_IA32_SYSENTER_CS, 0)?;
    vmcs.write(field::GUEST_IA32_SYSENTER_ESP, 0)?;
    vmcs.write(field::GUEST_IA32_SYSENTER_EIP, 0)?;
    vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, 0)?;
    vmcs.write(field::GUEST_ACTIVITY_STATE, 0)?;
    vmcs.write(field::GUEST_PENDING_DEBUG_EXCEPTIONS, 0)?;
    setup_fred(vmcs, vmx)?;
    check_fred_state(vmcs, "setup");
    Ok(())
}

/// The FRED part of the VMCS. With the FRED-state controls: the guest FRED fields hold the
/// guest's MSRs (their reset value 0 at first) and the host fields this CPU's current MSRs
/// ([`refresh_host_fred`] again after the host switches to FRED). Without them, on a CPU with
/// FRED: the host owns guest CR4.FRED (bit 32 in the CR4 guest/host mask, SDM Vol. 3C 25.6.6),
/// so a guest cannot turn on FRED delivery through the host's FRED MSRs; the MSRs themselves
/// stay out of reach because every RDMSR/WRMSR exits without an MSR bitmap (SDM Vol. 3C
/// 26.1.3), and [`crate::fred_host::GuestFredMsrs`] answers them.
fn setup_fred(vmcs: &mut ActiveVmcs<'_>, vmx: &Vmx) -> Result<(), VmFail> {
    if vmx.controls.fred_state() {
        FredMsrState::default().write_guest(vmcs)?;
        refresh_host_fred(vmcs, vmx)?;
        vmcs.write(field::CR4_GUEST_HOST_MASK, 0)
    } else if vmx.fred_cpu {
        vmcs.write(field::CR4_GUEST_HOST_MASK, hvkit_vmx_core::fred_check::CR4_FRED)
    } else {
        vmcs.write(field::CR4_GUEST_HOST_MASK, 0)
    }
}

/// Writes this CPU's FRED MSRs into the host FRED fields, which VM exits load with the "load
/// FRED" secondary exit control. Does nothing without the FRED-state controls.
pub fn refresh_host_fred(vmcs: &mut ActiveVmcs<'_>, vmx: &Vmx) -> Result<(), VmFail> {
    if !vmx.controls.fred_state() {
        return Ok(());
    }
    // SAFETY: CPL 0, and the controls were requested only on a CPU that enumerates FRED.
    let msrs = unsafe { HardwareFredMsrs::new() };
    FredMsrState::read(&msrs).write_host(vmcs)
}

/// Runs the FRED VM-entry checks (hvkit-vmx-core `fred_check`) on the current host and guest
/// state and prints the result; a violation ends the run (the entry would fail).
pub fn check_fred_state(vmcs: &ActiveVmcs<'_>, stage: &str) {
    use hvkit_vmx_core::fred_check::{
        GuestFredState, HostFredState, LinearAddressWidth, check_guest, check_host,
    };
    let width = LinearAddressWidth::default();
    let result = HostFredState::read(vmcs)
        .map_err(|_| "VMREAD of the host state failed")
        .map(|host| check_host(&host, width))
        .and_then(|host| {
            GuestFredState::read(vmcs)
                .map_err(|_| "VMREAD of the guest state failed")
                .map(|guest| (host, check_guest(&guest, width)))
        });
    match result {
        Ok((Ok(()), Ok(()))) => println!("HVKIT fred vmcs-check stage={stage} host=ok guest=ok"),
        Ok((host, guest)) => {
            for error in [host.err(), guest.err()].into_iter().flatten() {
                println!("HVKIT error: FRED VM-entry check ({stage}): {error}");
            }
            crate::port::exit(crate::port::status::FAIL)
        }
        Err(reason) => {
            println!("HVKIT error: FRED VM-entry check ({stage}): {reason}");
            crate::port::exit(crate::port::status::FAIL)
        }
    }
}

/// Stores the TSC in `slot` from one asm block (RDTSC, SHL, OR, MOV), so the compiler cannot
/// interleave the combination of the halves with the code measured, and clobbering the
/// caller-saved registers so it does not move unrelated work (constants for later code) into
/// the measured window either: in Bochs with
/// `clock: sync=none` the TSC advances by one per instruction, so deltas are instruction counts.
#[inline(always)]
fn stamp(slot: &mut u64) {
    // SAFETY: RDTSC has no side effects; the block writes only `slot`.
    unsafe {
        core::arch::asm!("rdtsc", "shl rdx, 32", "or rax, rdx", "mov [{slot}], rax",
            slot = in(reg) slot, out("rax") _, out("rdx") _, clobber_abi("sysv64"),
            options(nostack, preserves_flags));
    }
}

/// Two TSC stamps around a measured piece of code.
#[derive(Default)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn insns(&self, overhead: u64) -> u64 {
        (self.end - self.start).saturating_sub(overhead)
    }
}

/// The count two back-to-back stamps report (subtracted from every count).
#[inline(never)]
fn stamp_overhead() -> u64 {
    let mut window = Window::default();
    stamp(&mut window.start);
    stamp(&mut window.end);
    window.end - window.start
}

// Each measured piece runs in its own function with nothing else to do, so the compiler has no
// unrelated work to schedule between the stamps.

#[inline(never)]
fn measure_typed_rip_add(vmcs: &mut ActiveVmcs<'_>, start: &mut u64, end: &mut u64) -> Option<u64> {
    stamp(start);
    let rip = vmcs.read(field::GUEST_RIP).and_then(|rip| {
        vmcs.write(field::GUEST_RIP, rip + 2)?;
        Ok(rip)
    });
    stamp(end);
    rip.ok()
}

#[inline(never)]
fn measure_exit_head(
    vmcs: &ActiveVmcs<'_>,
    exit: &hvkit_vmx_core::exit::VmExit,
    start: &mut u64,
    end: &mut u64,
) -> bool {
    stamp(start);
    let head = hvkit_vmx_core::exit::ExitHead::read(vmcs, exit);
    stamp(end);
    head.is_ok()
}

#[inline(never)]
fn measure_direct_call(
    direct: &mut impl hvkit_nmi_reinject::Redeliver,
    window: &mut Window,
) -> bool {
    stamp(&mut window.start);
    let delivered = direct.redeliver_nmi();
    // The end is the handler's own TSC read (a bare RDTSC after two pushes).
    window.end = host::HOST_NMI_TSC.load(core::sync::atomic::Ordering::SeqCst);
    delivered.is_ok()
}

/// One-off measurements for `cargo xtask bench`, printed as `HVKIT BENCH name=... insns=...`
/// lines: run during a VM exit (`exit` is its token) with nothing owed to the guest. Leaves the
/// VMCS as it found it; the direct call makes the host NMI handler run once (outside any
/// scenario's counting window).
pub fn micro_benchmarks(
    vmcs: &mut ActiveVmcs<'_>,
    exit: &hvkit_vmx_core::exit::VmExit,
    direct: &mut impl hvkit_nmi_reinject::Redeliver,
) {
    let overhead = stamp_overhead();
    // Typed GUEST_RIP += 2 through ActiveVmcs (VMREAD, add, VMWRITE, both statuses checked).
    let mut typed = Window::default();
    let rip = measure_typed_rip_add(vmcs, &mut typed.start, &mut typed.end);
    if let Some(rip) = rip {
        let _ = vmcs.write(field::GUEST_RIP, rip);
    }
    // The first phase of the exit read: exit reason + interruption information.
    let mut head = Window::default();
    let head_ok = measure_exit_head(vmcs, exit, &mut head.start, &mut head.end);
    // The direct call of the host NMI entry, up to the handler's TSC read.
    let mut direct_call = Window::default();
    let before = host::HOST_NMI_TSC.load(core::sync::atomic::Ordering::SeqCst);
    let delivered = measure_direct_call(direct, &mut direct_call);
    let delivered = delivered && direct_call.end != before;
    println!(
        "HVKIT BENCH name=typed_read_add_write insns={} ok={}",
        typed.insns(overhead),
        rip.is_some()
    );
    println!("HVKIT BENCH name=exit_head_read insns={} ok={head_ok}", head.insns(overhead));
    println!(
        "HVKIT BENCH name=direct_call_to_handler insns={} ok={delivered}",
        direct_call.insns(overhead)
    );
    println!("HVKIT BENCH name=stamp_overhead insns={overhead} ok=true");
}
