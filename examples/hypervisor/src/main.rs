//! hvkit example hypervisor: boots from GRUB (Multiboot2), enables VMX, runs a guest and proves,
//! with counters, that host NMIs and interrupts taken while the guest runs are re-delivered
//! exactly once (hvkit-nmi-reinject), and that guest events survive exits during delivery.
#![no_std]
#![no_main]

mod apic;
mod boot;
mod cpu;
mod entry_diff;
mod fred_host;
mod guest;
mod host;
mod hostside;
mod memory;
mod percpu;
mod port;
mod report;
mod scenarios;
mod smp;
mod smpvmx;
mod strategies;
mod vcpu;
mod vmx;

use hvkit_nmi_reinject::{GuestEventQueue, InjectionContext};
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::vmcs::{GuestRegisters, VmxRoot};
use port::status;
use vcpu::Vcpu;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("HVKIT panic: {info}");
    port::exit(status::PANIC)
}

#[unsafe(no_mangle)]
extern "C" fn kernel_main() -> ! {
    port::serial_init();
    // Mask the 8259 PICs: only the local APIC delivers interrupts here.
    port::outb(0x21, 0xFF);
    port::outb(0xA1, 0xFF);
    let bsp = percpu::install(0);
    println!("HVKIT boot magic={:#x}", boot::magic());
    host::init();
    let apic_id = match apic::init() {
        Ok(id) => id,
        Err(error) => {
            println!("HVKIT error: local APIC: {error}");
            port::exit(status::PANIC)
        }
    };
    bsp.online.store(true, core::sync::atomic::Ordering::SeqCst);
    println!("HVKIT apic id={apic_id} mode=xAPIC base={:#x}", apic::base_address());
    let cpus = smp::start_application_processors();
    println!("HVKIT smp cpus={cpus}");
    smp::report_cpus();
    hostside::run();
    if let Err(reason) = vmx::detect() {
        hostside::run_x2apic();
        println!("HVKIT NOVMX reason=\"{reason}\"");
        println!("HVKIT VMX-NOT-RUN scenarios=\"{VMX_SCENARIOS}\" reason=\"{reason}\"");
        report::finish_with(status::NO_VMX)
    }
    let (vmx, mut root) = match vmx::enable() {
        Ok(enabled) => enabled,
        Err(reason) => {
            println!("HVKIT NOVMX reason=\"{reason}\"");
            port::exit(status::NO_VMX)
        }
    };
    guest::init();
    let eptp = vmx::build_ept(guest::area());
    // SAFETY: `vmx` lives until the end of the run: this function never returns.
    unsafe { smpvmx::set_context(&vmx, eptp) };
    entry_diff::run(&mut root, &vmx, guest::stack_top(), guest::idt(), eptp);
    let registers = GuestRegisters {
        rdi: apic::base_address(),
        rsi: u64::from(apic_id),
        ..GuestRegisters::default()
    };
    // vcpu.rs relies on it (ACKNOWLEDGE_ON_EXIT); `adjust` already refused a CPU without it.
    if !vmx.controls.acknowledges_interrupt_on_exit() {
        println!("HVKIT error: the adjusted controls lack acknowledge interrupt on exit");
        port::exit(status::FAIL)
    }
    let mut vcpu = match new_vcpu(&mut root, &vmx, eptp, registers) {
        Ok(vcpu) => vcpu,
        Err(fail) => {
            println!("HVKIT error: VMCS setup: {fail}");
            port::exit(status::FAIL)
        }
    };
    let stop = vcpu.run(&mut root, &mut scenarios::Scenarios::new(&vmx));
    println!("HVKIT error: the vCPU stopped: {stop}");
    port::exit(status::FAIL)
}

/// The scenarios that need VMX (named in the report when they cannot run).
const VMX_SCENARIOS: &str = "entry-checks,round-trips,timer-irq,fred-timer-irq,host-nmi,virtual-nmi-window,idt-vectoring,nmi-unblocking-iret,stress,exception-reflection,fred,fred-host-nmi,fred-eretu,fred-msr-isolation,nmi-source,guest-cross-nmi,multiple-nmi,pending-nmi,guest-cross-ipi,storm-smp";

/// The bootstrap processor's VMX scenarios are done (its host is in FRED mode if the CPU has
/// FRED): every AP in VMX operation with its own guest, CPU 0 sending to them from its host
/// and taking the storm's IPIs (through FRED delivery on a FRED host), still in xAPIC mode;
/// then the host-side and the AP guest scenarios again in x2APIC mode (the bootstrap
/// processor's guest sends itself NMIs through the xAPIC page, so x2APIC comes last).
fn after_vmx_scenarios() {
    smpvmx::run();
    hostside::run_x2apic();
    smpvmx::run_x2apic();
}

/// Makes the example's one vCPU: takes the VMCS region into use on this CPU (VMCLEAR), makes
/// it current and writes the complete host and guest state.
fn new_vcpu(
    root: &mut VmxRoot,
    vmx: &vmx::Vmx,
    eptp: u64,
    registers: GuestRegisters,
) -> Result<Vcpu, VmFail> {
    let mut vmcs = root.adopt(vmx::guest_vmcs(vmx))?;
    let mut active = root.activate(&mut vmcs)?;
    let guest_rip = guest::main as *const () as u64;
    vmx::setup_vmcs(&mut active, vmx, guest_rip, guest::stack_top() - 8, guest::idt(), eptp)?;
    Ok(Vcpu {
        vmcs,
        registers,
        queue: GuestEventQueue::new(),
        // The guest does not use FRED, so no event data travels with its events.
        context: InjectionContext::from_capabilities(&vmx.caps, &vmx.controls, false),
        nmi_sources: hvkit_vmx_core::nmi_source::supported(hvkit_fred::config::cpuid_7_1_eax()),
        exit_options: hvkit_vmx_core::exit::ExitInfoOptions::from_capabilities(&vmx.caps),
    })
}
