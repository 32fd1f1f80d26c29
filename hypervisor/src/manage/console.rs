//! The serial console's input on CPU 0: hv-mgmt's [`ConsoleFilter`] decides
//! where each byte goes (the focused guest, the Ctrl-A keys, the Ctrl-A :
//! prompt); commands run here, between CPU 0's time slices, and their output
//! goes to the console. While the prompt is open guest output waits in its
//! queues, so the prompt and the command's output are not torn apart.
use crate::sched;
use crate::vm::Vm;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use mgmt::console::{ConsoleFilter, Route};
use spin::Mutex;

/// Which guest gets the keys typed on the hypervisor console.
static SELECTED: AtomicUsize = AtomicUsize::new(0);
static FILTER: Mutex<Option<ConsoleFilter>> = Mutex::new(None);

/// The text a console line produces: the command's output, or the error.
pub fn run_line(line: &str) -> String {
    use alloc::format;
    match mgmt::command::parse(line) {
        Ok(cmd) => match mgmt::ops::execute(&mut super::CoreOps, &cmd) {
            Ok(outcome) => mgmt::render::text(&outcome),
            Err(e) => format!("{e}\r\n"),
        },
        Err(mgmt::command::ParseError::Empty) => String::new(),
        Err(e) => format!("{e}\r\n"),
    }
}

/// Routes the bytes typed on the hypervisor console (CPU 0 only).
pub fn poll() {
    while let Some(b) = crate::console::try_read_byte() {
        let vms: Vec<Arc<Vm>> = sched::vms();
        if vms.is_empty() {
            continue;
        }
        let mut echo = Vec::new();
        let route = {
            let mut f = FILTER.lock();
            f.get_or_insert_with(ConsoleFilter::new).feed(b, &mut echo)
        };
        if !echo.is_empty() {
            crate::console::prompt_raw(&echo);
        }
        match route {
            Route::Guest(b) => to_guest(&vms, b),
            Route::Nothing => {}
            Route::Focus(n) => focus(&vms, usize::from(n) - 1),
            Route::ListGuests => list_guests(&vms),
            Route::KeyHelp => crate::println!(
                "hv: console: Ctrl-A then 1-9 selects a guest, l lists them, : opens the command prompt, Ctrl-A sends Ctrl-A"
            ),
            Route::PromptOpened => crate::console::hold_guests(true),
            Route::PromptCancelled => crate::console::hold_guests(false),
            Route::Command(line) => {
                let out = run_line(&line);
                crate::console::prompt_raw(out.as_bytes());
                crate::console::hold_guests(false);
            }
        }
    }
}

fn to_guest(vms: &[Arc<Vm>], b: u8) {
    if let Some(vm) = vms.get(SELECTED.load(Ordering::Acquire)) {
        if !vm.ended() {
            // From the first key on, the guest with the keyboard streams its
            // output unbuffered (prompts and echo show at once); until then
            // every guest's output goes out in whole lines.
            if !crate::console::is_focused(vm.console) {
                crate::console::set_focus(vm.console);
            }
            vm.console_input(b);
        }
    }
}

fn focus(vms: &[Arc<Vm>], i: usize) {
    match vms.get(i) {
        Some(vm) => {
            SELECTED.store(i, Ordering::Release);
            crate::console::set_focus(vm.console);
            crate::println!(
                "hv: console: input goes to vm {} (Ctrl-A l lists the guests)",
                vm.name
            );
        }
        None => crate::println!("hv: console: no guest {}; Ctrl-A l lists the guests", i + 1),
    }
}

fn list_guests(vms: &[Arc<Vm>]) {
    let sel = SELECTED.load(Ordering::Acquire);
    for (i, vm) in vms.iter().enumerate() {
        let state = if vm.ended() { "ended" } else { "running" };
        let mark = if i == sel { " <- console input" } else { "" };
        crate::println!(
            "hv: console: Ctrl-A {}: vm {} ({state}){mark}",
            i + 1,
            vm.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::run_line;

    #[test]
    fn console_lines_give_the_commands_output_or_the_error() {
        // No VMs in the host test's scheduler.
        assert_eq!(
            run_line("frobnicate"),
            "unknown command `frobnicate`; `help` lists the commands\r\n"
        );
        assert_eq!(
            run_line("lsit"),
            "unknown command `lsit`; did you mean `list`?\r\n"
        );
        assert_eq!(run_line("info nosuch"), "no VM `nosuch`\r\n");
        assert_eq!(run_line("pause nosuch"), "no VM `nosuch`\r\n");
        assert_eq!(run_line("   "), "");
        assert!(run_line("list").starts_with("VM "), "{}", run_line("list"));
        assert!(run_line("help").contains("rollback VM NAME"));
    }
}
