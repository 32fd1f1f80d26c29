//! VMX: capabilities, instructions, VMCS fields, exit reasons, EPT.
pub mod caps;
pub mod ept;
pub mod exit;
pub mod instr;
pub mod vmcs;
