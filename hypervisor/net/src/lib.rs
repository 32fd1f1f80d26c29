//! The hypervisor's network protocol clients, sans-IO: each is a state
//! machine that is given the bytes received and the time, and hands back the
//! bytes to send, its completions and its events. None of them owns a
//! socket, a timer or a thread; this crate has no `unsafe` and no `std`.
//!
//! # How the core will drive the NBD client ([`nbd::Client`])
//! - **Transport**: one smoltcp TCP socket per NBD disk, on the hypervisor's
//!   own endpoint (issue 12 item 3). When [`nbd::Client::should_connect`]
//!   says so, the core opens the socket and calls
//!   [`nbd::Client::connected`] once it is established; a reset, a closed
//!   peer or a failed connect is [`nbd::Client::disconnected`]. Bytes the
//!   socket received go to [`nbd::Client::receive`]; what
//!   [`nbd::Client::transmit`] returns is written into the socket's send
//!   buffer as far as it has room, and [`nbd::Client::sent`] says how much
//!   went. After [`nbd::Client::wants_close`] the socket is aborted.
//! - **The disk**: [`nbd_disk::NbdDisk`] wraps a negotiated client as
//!   virtio-blk's `AsyncBlockBackend` (hv-devices): the guest's notify exit
//!   only submits (the request bytes go into the client's send buffer) and
//!   returns; the chain stays with the device.
//! - **When**: from the idle loop of the CPU that owns the NIC, and after an
//!   exit that submitted block requests: the core polls the NIC and
//!   smoltcp, calls [`nbd::Client::poll`], moves bytes both ways, then
//!   `VirtioPci::complete` of that guest's disk, which takes the finished
//!   requests and writes the used ring and raises the interrupt (delivered
//!   to the guest's vCPU like any other device interrupt). No exit waits for
//!   the server. Before the guest starts, the core runs this loop until the
//!   client is ready, as the export's size is the disk's capacity.
//! - **Clock**: every call that can time out takes `now`, monotonic
//!   milliseconds from the core's TSC-based clock. A request unanswered
//!   for [`nbd::Config::deadline_ms`] completes with
//!   [`nbd::Error::TimedOut`] (the guest sees an I/O error); a connection
//!   that goes down is retried after [`nbd::Config::retry_ms`], doubling up to
//!   [`nbd::Config::retry_max_ms`].
//! - **Console**: [`nbd::Client::next_event`] returns what deserves a
//!   console line (connected, connection lost and why, a refused export,
//!   requests timed out); the events implement `Display`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;

pub mod nbd;
pub mod nbd_disk;
