//! VMCS access: the [`VmcsAccess`] trait (raw access by encoding, typed access on top).

use crate::error::VmFail;
use crate::field::{Access, Field, ReadWrite, Width};

/// Access to one VMCS: hardware (VMREAD/VMWRITE on the current VMCS) or a software model.
///
/// Implementations answer like hardware: an encoding the processor does not support fails with
/// [`VmInstructionError::UnsupportedVmcsComponent`](crate::error::VmInstructionError) (12), a
/// write to a read-only field with
/// [`VmInstructionError::VmwriteReadOnlyComponent`](crate::error::VmInstructionError) (13).
pub trait VmcsAccess {
    /// Reads a field by raw encoding (VMREAD). Narrow fields are returned zero-extended.
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail>;

    /// Writes a field by raw encoding (VMWRITE). Bits above the field's width are ignored by
    /// hardware.
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    /// Reads a typed field.
    #[inline(always)]
    fn read<W: Width, A: Access>(&self, field: Field<W, A>) -> Result<W::Value, VmFail> {
        self.read_raw(field.encoding()).map(W::from_raw)
    }

    /// Writes a typed read-write field.
    #[inline(always)]
    fn write<W: Width>(
        &mut self,
        field: Field<W, ReadWrite>,
        value: W::Value,
    ) -> Result<(), VmFail> {
        self.write_raw(field.encoding(), W::to_raw(value))
    }
}
