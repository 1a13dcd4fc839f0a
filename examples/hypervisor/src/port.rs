//! Port I/O, the serial console, and leaving the emulator.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O at CPL 0 to the legacy devices this kernel owns.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a dword to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

const COM1: u16 = 0x3F8;

/// Sets COM1 to 115200 8N1.
pub fn serial_init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xC7);
    outb(COM1 + 4, 0x0B);
}

fn serial_byte(byte: u8) {
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, byte);
}

/// The serial console.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                serial_byte(b'\r');
            }
            serial_byte(byte);
        }
        Ok(())
    }
}

/// Owner of the serial console (the owner's GS base + 1; 0 = free): one line at a time across
/// CPUs.
static SERIAL_OWNER: AtomicU64 = AtomicU64::new(0);

/// Spins before a CPU takes the console anyway (a CPU that died holding it must not silence
/// the others' final lines).
const SERIAL_LOCK_SPINS: u32 = 50_000_000;

/// Holds the serial console until dropped.
pub struct SerialGuard {
    owned: bool,
}

/// Takes the serial console for one line. A CPU that already holds it (a handler printing
/// while the code it interrupted prints) goes ahead without waiting.
pub fn lock() -> SerialGuard {
    // The GS base names the CPU (it is 0 only on the bootstrap processor before its per-CPU
    // state is installed).
    // SAFETY: CPL 0; IA32_GS_BASE exists on every 64-bit processor.
    let me = unsafe { x86::msr::rdmsr(0xC000_0101) } + 1;
    if SERIAL_OWNER.load(Ordering::Acquire) == me {
        return SerialGuard { owned: false };
    }
    for _ in 0..SERIAL_LOCK_SPINS {
        if SERIAL_OWNER.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return SerialGuard { owned: true };
        }
        core::hint::spin_loop();
    }
    SERIAL_OWNER.store(me, Ordering::Release);
    SerialGuard { owned: true }
}

impl Drop for SerialGuard {
    fn drop(&mut self) {
        if self.owned {
            SERIAL_OWNER.store(0, Ordering::Release);
        }
    }
}

/// Prints to the serial console (one whole line under the console lock).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _guard = $crate::port::lock();
        let _ = writeln!($crate::port::Serial, $($arg)*);
    }};
}

/// Exit statuses (also printed as `HVKIT EXIT status=<n>`).
pub mod status {
    /// Every scenario passed.
    pub const PASS: u32 = 0;
    /// A scenario failed.
    pub const FAIL: u32 = 1;
    /// No usable VMX (QEMU TCG, firmware-disabled VMX, ...).
    pub const NO_VMX: u32 = 3;
    /// Panic or unexpected exception.
    pub const PANIC: u32 = 4;
}

/// Prints the final line and leaves the emulator: QEMU's isa-debug-exit (port 0xF4), Bochs'
/// iodebug port (0x8A00: enable, then return to the debugger, whose rc file says `quit`), and,
/// for a Bochs without the debugger's iodebug, the "Shutdown" sequence on port 0x8900 (Bochs then
/// exits with status 1; the real status is the line printed first).
pub fn exit(status: u32) -> ! {
    println!("HVKIT EXIT status={status}");
    outl(0xF4, status);
    outw(0x8A00, 0x8A00);
    outw(0x8A00, 0x8AE0);
    for byte in *b"Shutdown" {
        outb(0x8900, byte);
    }
    loop {
        // SAFETY: halting with interrupts off ends this CPU's work.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
