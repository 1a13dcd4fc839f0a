//! Port I/O, the serial console, and leaving the emulator.

use core::fmt::{self, Write};

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

/// Prints to the serial console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
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
