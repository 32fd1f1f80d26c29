//! x86-64 and VMX/EPT vocabulary. Knows nothing about VMs.
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod cpuid;
pub mod desc;
pub mod msr;
pub mod regs;
pub mod vmx;
