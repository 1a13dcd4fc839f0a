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
mod port;
mod report;
mod scenarios;
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
    println!("HVKIT boot magic={:#x}", boot::magic());
    host::init();
    if let Err(reason) = vmx::detect() {
        println!("HVKIT NOVMX reason=\"{reason}\"");
        port::exit(status::NO_VMX)
    }
    let apic_id = match apic::init() {
        Ok(id) => id,
        Err(error) => {
            println!("HVKIT error: local APIC: {error}");
            port::exit(status::PANIC)
        }
    };
    println!("HVKIT apic id={apic_id} mode=xAPIC base={:#x}", apic::base_address());
    let (vmx, mut root) = match vmx::enable() {
        Ok(enabled) => enabled,
        Err(reason) => {
            println!("HVKIT NOVMX reason=\"{reason}\"");
            port::exit(status::NO_VMX)
        }
    };
    guest::init();
    let eptp = vmx::build_ept(guest::area());
    entry_diff::run(&mut root, &vmx, guest::stack_top(), guest::idt(), eptp);
    let registers = GuestRegisters {
        rdi: apic::base_address(),
        rsi: u64::from(apic_id),
        ..GuestRegisters::default()
    };
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
    })
}
