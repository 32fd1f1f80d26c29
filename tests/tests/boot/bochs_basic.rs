//! One Bochs boot with two CPUs (VT-x and EPT emulated) running the first test guests.

use integration_tests::Scenario;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `api_token` in basic.toml.
const TOKEN: &str = "bochs-basic-api-token-0123";

#[test]
fn bochs_vmx_root_two_cpus_and_first_guests() {
    // The management API: slirp forwards a free port of this host to the endpoint's API port;
    // the requests go out once the endpoint has its address.
    let api_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port");
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let record = answers.clone();
    // The management console, typed on COM1 while the guests run: Ctrl-A : opens the prompt.
    let mut boot = Scenario::bochs("bochs_basic", "basic.toml")
        .cpus(2)
        .timeout_secs(600)
        .with_nic()
        .forward_port(api_port, 8080)
        .call_after("hv: endpoint: 10.0.2.15/24 via dhcp", move || {
            let got = api_requests(api_port);
            record.lock().unwrap().extend(got);
        })
        .send_after(
            "[ticker] ticker: tick 40",
            b"\x01:list\r\x01:info ticker\r\x01:frobnicate\r\x01:info nosuch\r\x01:stop ../x\r\x01:pause ticker\r",
        )
        // Paused for a while (under Bochs here an emulated second takes a minute or more):
        // its rates fall to 0, then it runs on where it was.
        .send_after_delay(
            "hv: vm ticker: paused by the operator",
            Duration::from_secs(60),
            b"\x01:info ticker\r\x01:pause ticker\r\x01:resume ticker\r",
        )
        .send_after_delay(
            "hv: vm ticker: resumed by the operator",
            Duration::from_secs(10),
            b"\x01:restart ticker\r",
        )
        // After the restart it counts from 1 again (the first `tick 3` after this line).
        .send_after("vm ticker: started (restart)", b"")
        // It is the last guest running by then: the machine powers off once it is stopped.
        .send_after(
            "[ticker] ticker: tick 3",
            b"\x01:resume ticker\r\x01:stop ticker\r",
        )
        .boot();
    boot.line("hv: ferrovisor 0.1.0 starting")
        .line_starting("cpu0: entered VMX root operation")
        .line_starting("cpu1: entered VMX root operation");

    boot.line_starting("vm hello: started")
        .line("[hello] hello from a ferrovisor guest")
        .line("vm hello: exited code=0");
    boot.line("[cpuid] cpuid: tsc frequency: ok")
        .line("[cpuid] cpuid: PASS")
        .line("vm cpuid: exited code=0");
    // Guest memory copies end exactly at the end of RAM (hypercall checks
    // one byte further and ranges wrapping 2^64 get EFAULT).
    boot.line("[hypercall] hypercall: console write from the top of ram works")
        .line("[hypercall] hypercall: console write one byte past the end of ram: ok")
        .line("[hypercall] hypercall: console write wrapping past 2^64: ok")
        .line("[hypercall] hypercall: PASS")
        .line("vm hypercall: exited code=0");
    boot.line("[memtest] memtest: PASS")
        .line("vm memtest: exited code=0");

    // Reaching outside its own memory stops a guest; nothing else is harmed.
    boot.line_starting_containing("vm escape-high: stopped: ", "EPT violation")
        .line_starting_containing("vm escape-hole: stopped: ", "EPT violation")
        .no_line_containing("LEAKED")
        .line("[witness] witness: done")
        .line("vm witness: exited code=0");

    // Restart policy: two restarts, then the final exit is reported.
    boot.line("vm again: restarting (1 of at most 2)")
        .line("vm again: restarting (2 of at most 2)")
        .line("vm again: exited code=0");
    // Bad input: refused with the defect named, before the guest starts.
    boot.line_starting_containing("vm bad-image: not started: ", "bad ELF64 image")
        .no_line_containing("vm bad-image: started");

    // Console floods hold no CPU: the worker beside three flooders finishes its fixed work
    // while they still flood, and their full queues drop the oldest lines, counted.
    boot.line("[worker] conflood: worker done 60 units")
        .line("vm worker: exited code=0")
        .line_before(
            "[worker] conflood: worker done 60 units",
            "[flood1] conflood: done 1000 writes",
        )
        .line_before(
            "[worker] conflood: worker done 60 units",
            "[flood2] conflood: done 1000 writes",
        )
        .line("vm flood1: exited code=0")
        .line("vm flood2: exited code=0")
        .line_starting_containing("[flood1] ... (", " bytes dropped)")
        .line_starting_containing("[flood3] ... (", " bytes dropped)")
        .line("[flood3] conflood: done 20 writes")
        .line("vm flood3: exited code=0")
        .no_line_containing("conflood: FAIL")
        .line_starting_containing("vm flood1: longest exit ", " TSC ticks (reason ")
        .line_starting_containing("vm worker: longest exit ", " TSC ticks (reason ");
    // Whole lines only: no guest's line is cut into by another's.
    let cut: Vec<String> = boot
        .result
        .lines()
        .filter(|l| l.starts_with("[flood") && l.contains("conflood: flood "))
        .filter(|l| !(l.len() == "[floodN] ".len() + 63 && l.ends_with("...")))
        .map(str::to_string)
        .collect();
    assert!(
        cut.is_empty(),
        "flood lines cut or mixed: {:?}",
        &cut[..cut.len().min(5)]
    );

    // The machine's e1000 is found on the host's PCI bus, driven by the hypervisor (link up,
    // the MAC Bochs was given) and its endpoint gets slirp's DHCP address; the guests' PCI bus
    // doesn't show it.
    boot.line_starting_containing("hv: pci: ", " 8086:100e class 02.00.00 (uplink NIC)")
        .line_starting_containing(
            "hv: nic: ",
            " e1000 (Intel 8254x) mac 52:54:00:12:34:56, link up",
        )
        .line("hv: endpoint: 10.0.2.15/24 via dhcp (52:54:00:12:34:56)")
        .no_line_containing("no uplink")
        .no_line_containing("dhcp lease lost")
        .no_line_containing("hv: nic: link down")
        .line_starting_containing("hv: nic: rx ", ", missed 0, crc errors 0")
        .no_line_containing("hv: nic: rx 0 frames")
        .no_line_containing(", tx 0 frames")
        .line("[pcihide] pcihide: PASS")
        .line("vm pcihide: exited code=0")
        .no_line_containing("pcihide: FAIL");

    management_console(&mut boot);
    let answers = answers.lock().unwrap().clone();
    management_api(&mut boot, &answers);

    boot.line_starting("hv: summary:")
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}

/// The Ctrl-A : prompt's commands and what they printed (see the script above).
fn management_console(boot: &mut integration_tests::Boot) {
    boot.line("hv> list")
        .line("hv> info ticker")
        .line("hv> frobnicate")
        .line("unknown command `frobnicate`; `help` lists the commands")
        .line("no VM `nosuch`")
        .line("bad name `../x`: may not contain `/` (only A-Z a-z 0-9 _ - .); usage: stop VM");
    // `list`: a table of every VM with its state, vCPUs and memory; the ticker runs, the
    // guests that already exited are stopped.
    let list = boot.lines_between("hv> list", "hv> ");
    let header = list.first().cloned().unwrap_or_default();
    let cols: Vec<&str> = header.split_whitespace().collect();
    boot.expect(
        cols == ["VM", "STATE", "VCPUS", "MEM(MiB)", "EXITS/S", "CPU"],
        &format!("list header: {header:?}"),
    );
    let row = |name: &str| {
        list.iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let ticker = row("ticker");
    boot.expect(
        ticker.get(1..4) == Some(&["running".into(), "1".into(), "16".into()][..]),
        &format!("list row of ticker: {ticker:?} in {list:?}"),
    );
    let hello = row("hello");
    boot.expect(
        hello.get(1).map(String::as_str) == Some("stopped"),
        &format!("list row of hello: {hello:?}"),
    );
    // `info ticker`: its vCPU ran on a CPU, and its UART output shows as port I/O exits.
    let info = boot.lines_between("hv> info ticker", "hv> ");
    let exits: Vec<(String, u64)> = info
        .iter()
        .skip_while(|l| !l.starts_with("EXIT REASON"))
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect();
    boot.expect(
        exits.iter().any(|(r, n)| r == "io_instruction" && *n > 0),
        &format!("info ticker: no io_instruction exits per second in {info:?}"),
    );
    boot.expect(
        info.iter().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 2 && w[0] == "0" && w[1].starts_with("cpu")
        }),
        &format!("info ticker: vCPU 0 ran on no CPU: {info:?}"),
    );
    // `pause`: the ticker stops (no exits in the last sampling interval), a second pause is
    // refused; `resume`: it goes on counting, no tick left out.
    boot.line("vm ticker: paused")
        .line("VM `ticker` is paused")
        .line("vm ticker: resumed");
    let paused = boot.lines_between("hv> pause ticker", "hv> resume ticker");
    let row = paused
        .iter()
        .find(|l| l.starts_with("ticker "))
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    boot.expect(
        row.get(1).map(String::as_str) == Some("paused")
            && row.get(4).map(String::as_str) == Some("0"),
        &format!("info ticker while paused: {paused:?}"),
    );
    let ticks: Vec<u64> = boot
        .result
        .lines()
        .filter_map(|l| l.strip_prefix("[ticker] ticker: tick ")?.parse().ok())
        .collect();
    // The first run, up to the restart's tick 1: 1, 2, 3, ... without a gap.
    let restart_at = ticks
        .iter()
        .skip(1)
        .position(|&t| t == 1)
        .map_or(ticks.len(), |i| i + 1);
    let first_run = &ticks[..restart_at];
    boot.expect(
        first_run.len() > 50 && first_run.iter().zip(1..).all(|(&t, n)| t == n),
        &format!("ticks before the restart not 1, 2, 3, ...: {first_run:?}"),
    );
    // `restart`: a cold restart (it counts from 1 again) outside the restart budget; `resume`
    // of a running VM is refused; `stop`: it ends as if powered off.
    boot.line("hv: vm ticker: restarted by the operator")
        .line("vm ticker: restarting (operator)")
        .line("VM `ticker` is running")
        .line("hv: vm ticker: stopped by the operator")
        .line_times("[ticker] ticker: tick 1", 2)
        .line("vm ticker: stopped: stopped by the operator")
        .no_line_containing("ticker: done");
}

/// One API request as sent and what came back: (request, status, head, body), or why none.
type Answer = (String, Result<(u16, String, String), String>);

/// Sends `request` as it is and reads the answer until the hypervisor closes the connection
/// (every request here asks it to, or is refused, which closes it too).
fn exchange(port: u16, request: &str) -> Result<(u16, String, String), String> {
    let mut last = String::new();
    // slirp takes the connection at once and drops it if the machine's side isn't up: retry.
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        // Bounded: the console is not read while this waits.
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        if let Err(e) = s.read_to_end(&mut buf) {
            last = format!("reading: {e}");
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("no status in {head:?}"))?;
            return Ok((status, head.to_string(), body.to_string()));
        }
        last = format!("no complete answer: {text:?} {last}");
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last)
}

fn api_requests(port: u16) -> Vec<Answer> {
    let h = "Host: 10.0.2.15:8080\r\nConnection: close\r\n";
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let requests = [
        format!("GET /vms HTTP/1.1\r\n{h}\r\n"),
        format!("GET /vms HTTP/1.1\r\n{h}Authorization: Bearer wrong-token-wrong-token\r\n\r\n"),
        format!("GET /vms HTTP/1.1\r\n{h}{auth}\r\n"),
        format!("GET /vms/ticker HTTP/1.1\r\n{h}{auth}\r\n"),
        format!("PUT /vms/nosuch/stop HTTP/1.1\r\n{h}{auth}\r\n"),
        format!("GET /vms HTTP/1.1\r\n{h}{auth}Content-Length: lots\r\n\r\n"),
    ];
    requests
        .into_iter()
        .map(|r| {
            let a = exchange(port, &r);
            (r, a)
        })
        .collect()
}

/// What the API answered (see [`api_requests`]).
fn management_api(boot: &mut integration_tests::Boot, answers: &[Answer]) {
    boot.line("hv: api: http on tcp port 8080 of the endpoint (bearer token from the manifest)");
    boot.expect(answers.len() == 6, &format!("API answers: {answers:?}"));
    let get = |i: usize| match answers.get(i) {
        Some((_, Ok(a))) => a.clone(),
        other => (0, String::new(), format!("{other:?}")),
    };
    // No token, a wrong token: 401 and nothing else.
    for i in [0, 1] {
        let (status, head, body) = get(i);
        boot.expect(
            status == 401 && head.contains("WWW-Authenticate: Bearer"),
            &format!("request {i} without a valid token: {status} {head:?} {body:?}"),
        );
        boot.expect(
            !body.contains("ticker"),
            &format!("401 body says more: {body:?}"),
        );
    }
    // With the token: every VM as JSON, in the API's own types (unknown fields refused).
    let (status, _, body) = get(2);
    let vms: Result<Vec<mgmt::ops::VmSummary>, _> = serde_json::from_str(&body);
    boot.expect(status == 200, &format!("GET /vms: {status} {body:?}"));
    match vms {
        Ok(vms) => {
            let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
            boot.expect(
                names.contains(&"ticker") && names.contains(&"hello") && names.len() >= 10,
                &format!("GET /vms names: {names:?}"),
            );
            let ticker = vms.iter().find(|v| v.name == "ticker");
            boot.expect(
                ticker.is_some_and(|t| t.vcpus == 1 && t.memory_mib == 16),
                &format!("GET /vms ticker: {ticker:?}"),
            );
        }
        Err(e) => {
            boot.expect(
                false,
                &format!("GET /vms body is not a VM list: {e}: {body:?}"),
            );
        }
    }
    let (status, _, body) = get(3);
    let info: Result<mgmt::ops::VmInfo, _> = serde_json::from_str(&body);
    boot.expect(
        status == 200 && info.as_ref().is_ok_and(|i| i.vcpu_list.len() == 1),
        &format!("GET /vms/ticker: {status} {body:?} {info:?}"),
    );
    let (status, _, body) = get(4);
    boot.expect(
        status == 404 && body == "{\"error\":\"no VM `nosuch`\"}",
        &format!("PUT /vms/nosuch/stop: {status} {body:?}"),
    );
    // Malformed: 400 with the reason.
    let (status, _, body) = get(5);
    boot.expect(
        status == 400 && body.starts_with("{\"error\":") && body.contains("Content-Length"),
        &format!("bad Content-Length: {status} {body:?}"),
    );
}
