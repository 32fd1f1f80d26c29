//! The management console and API of ferrovisor (issue 13 items 4 and 5), as pure logic:
//! the console's command language ([`command`]), the console input filter and line editor
//! ([`console`]), the operations the core implements ([`ops::Ops`]) with their text and JSON
//! renderings ([`render`]), and a sans-IO HTTP/1.1 server for the JSON API ([`http`]).
//! Nothing here touches hardware or the core's globals; the core drives it with bytes.
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

pub mod client;
pub mod command;
pub mod console;
pub mod fake;
pub mod http;
pub mod ops;
pub mod render;
