//! VMX: capabilities, instructions, VMCS fields, exit reasons, EPT.
pub mod caps;
