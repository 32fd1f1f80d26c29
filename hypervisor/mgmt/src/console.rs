//! The serial console's input side as pure state machines: which byte goes to the focused
//! guest, which to the hypervisor's prompt, and what is echoed.
//!
//! Keys (issue 13 item 4; Ctrl-A digit / l are the console's existing guest switch):
//! - ordinary bytes go to the focused guest's UART input;
//! - Ctrl-A 1..9 focuses guest N, Ctrl-A l lists the guests, Ctrl-A Ctrl-A sends one Ctrl-A
//!   to the guest, Ctrl-A : opens the command prompt; any other byte after Ctrl-A is dropped
//!   and the console shows the key help;
//! - at the prompt: printable bytes are edited into a line (bounded), Backspace/DEL erase one,
//!   Ctrl-U erases the line, Ctrl-C cancels the prompt, Enter (CR or LF) submits the
//!   line as a command. The prompt then closes and input goes to the guest again.

use alloc::string::String;
use alloc::vec::Vec;

/// The command prefix key, Ctrl-A.
pub const PREFIX: u8 = 0x01;
/// What the prompt shows.
pub const PROMPT: &[u8] = b"\r\nhv> ";
/// Longest command line, in bytes (longer input is refused with a bell).
pub const MAX_LINE: usize = 128;

const BELL: u8 = 0x07;
const CTRL_C: u8 = 0x03;
const CTRL_U: u8 = 0x15;
const BACKSPACE: u8 = 0x08;
const DEL: u8 = 0x7f;
const ESC: u8 = 0x1b;

/// What a line editor does with one byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Still editing (echo, if any, was written).
    Editing,
    /// Enter: the finished line.
    Submit(String),
    /// Ctrl-C: the line is dropped.
    Cancel,
}

/// A bounded single-line editor; echo bytes go to `echo` (a terminal at 115200 8N1).
#[derive(Clone, Debug, Default)]
pub struct LineEditor {
    line: String,
    esc: Esc,
}

/// Where the editor is in a terminal escape sequence (arrow keys send `ESC [ A` etc.; they
/// are swallowed whole so that no part of them lands in the line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Esc {
    #[default]
    None,
    /// After ESC.
    Start,
    /// In `ESC [` or `ESC O`: parameter bytes until a final byte 0x40..=0x7e.
    Sequence,
}

impl LineEditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The line so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Feeds one byte; echo (and erase sequences) go to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Edit {
        match (self.esc, byte) {
            (Esc::None, ESC) => {
                self.esc = Esc::Start;
                return Edit::Editing;
            }
            (Esc::Start, b'[' | b'O') => {
                self.esc = Esc::Sequence;
                return Edit::Editing;
            }
            (Esc::Start, _) => {
                // ESC and one byte (Alt-key): both dropped
                self.esc = Esc::None;
                return Edit::Editing;
            }
            (Esc::Sequence, 0x40..=0x7e) => {
                self.esc = Esc::None;
                return Edit::Editing;
            }
            (Esc::Sequence, 0x20..=0x3f) => return Edit::Editing,
            // anything else ends the sequence and counts as itself
            (Esc::Sequence, _) => self.esc = Esc::None,
            (Esc::None, _) => {}
        }
        match byte {
            b'\r' | b'\n' => {
                echo.extend_from_slice(b"\r\n");
                Edit::Submit(core::mem::take(&mut self.line))
            }
            CTRL_C => {
                echo.extend_from_slice(b"^C\r\n");
                self.line.clear();
                Edit::Cancel
            }
            BACKSPACE | DEL => {
                if self.line.pop().is_some() {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                Edit::Editing
            }
            CTRL_U => {
                for _ in 0..self.line.len() {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                self.line.clear();
                Edit::Editing
            }
            b' '..=b'~' if self.line.len() < MAX_LINE => {
                self.line.push(char::from(byte));
                echo.push(byte);
                Edit::Editing
            }
            b' '..=b'~' => {
                echo.push(BELL);
                Edit::Editing
            }
            // other control bytes and non-ASCII: not part of the language
            _ => Edit::Editing,
        }
    }
}

/// What the console does with one input byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Give this byte to the focused guest's UART.
    Guest(u8),
    /// Consumed (a prefix key, or editing at the prompt).
    Nothing,
    /// Ctrl-A N: focus guest N (1..9).
    Focus(u8),
    /// Ctrl-A l: list the guests.
    ListGuests,
    /// Ctrl-A then an unbound key: show the key help.
    KeyHelp,
    /// The prompt was just opened (its text is in the echo).
    PromptOpened,
    /// The prompt was cancelled.
    PromptCancelled,
    /// Enter at the prompt: run this line (see [`crate::command::parse`]).
    Command(String),
}

#[derive(Clone, Debug, Default)]
enum Mode {
    #[default]
    Guest,
    Prefix,
    Prompt(LineEditor),
}

/// The console input filter.
#[derive(Clone, Debug, Default)]
pub struct ConsoleFilter {
    mode: Mode,
}

impl ConsoleFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the prompt is open (guest output should then be held back or kept short).
    pub fn prompt_open(&self) -> bool {
        matches!(self.mode, Mode::Prompt(_))
    }

    /// Feeds one byte from the serial line; console echo goes to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Route {
        match &mut self.mode {
            Mode::Guest if byte == PREFIX => {
                self.mode = Mode::Prefix;
                Route::Nothing
            }
            Mode::Guest => Route::Guest(byte),
            Mode::Prefix => {
                self.mode = Mode::Guest;
                match byte {
                    PREFIX => Route::Guest(PREFIX),
                    b'1'..=b'9' => Route::Focus(byte.wrapping_sub(b'0')),
                    b'l' => Route::ListGuests,
                    b':' => {
                        self.mode = Mode::Prompt(LineEditor::new());
                        echo.extend_from_slice(PROMPT);
                        Route::PromptOpened
                    }
                    _ => Route::KeyHelp,
                }
            }
            Mode::Prompt(editor) => match editor.feed(byte, echo) {
                Edit::Editing => Route::Nothing,
                Edit::Submit(line) => {
                    self.mode = Mode::Guest;
                    Route::Command(line)
                }
                Edit::Cancel => {
                    self.mode = Mode::Guest;
                    Route::PromptCancelled
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(f: &mut ConsoleFilter, bytes: &[u8]) -> (Vec<Route>, Vec<u8>) {
        let mut echo = Vec::new();
        let routes = bytes.iter().map(|&b| f.feed(b, &mut echo)).collect();
        (routes, echo)
    }

    #[test]
    fn editor_edits_and_submits() {
        let mut e = LineEditor::new();
        let mut echo = Vec::new();
        for &b in b"lsx" {
            assert_eq!(e.feed(b, &mut echo), Edit::Editing);
        }
        assert_eq!(e.feed(DEL, &mut echo), Edit::Editing);
        assert_eq!(e.feed(BACKSPACE, &mut echo), Edit::Editing);
        assert_eq!(e.feed(b'i', &mut echo), Edit::Editing);
        assert_eq!(e.line(), "li");
        assert_eq!(echo, b"lsx\x08 \x08\x08 \x08i");
        echo.clear();
        assert_eq!(e.feed(0x02, &mut echo), Edit::Editing); // other control: ignored
        assert_eq!(e.feed(0xc3, &mut echo), Edit::Editing); // non-ASCII: ignored
        assert!(echo.is_empty());
        e.feed(b's', &mut echo);
        e.feed(b't', &mut echo);
        assert_eq!(e.feed(b'\r', &mut echo), Edit::Submit("list".into()));
        assert_eq!(e.line(), "");
        assert_eq!(echo, b"st\r\n");
    }

    #[test]
    fn editor_backspace_on_empty_line_echoes_nothing() {
        let mut e = LineEditor::new();
        let mut echo = Vec::new();
        e.feed(DEL, &mut echo);
        assert!(echo.is_empty());
    }

    #[test]
    fn editor_ctrl_u_and_ctrl_c() {
        let mut e = LineEditor::new();
        let mut echo = Vec::new();
        for &b in b"abc" {
            e.feed(b, &mut echo);
        }
        echo.clear();
        assert_eq!(e.feed(CTRL_U, &mut echo), Edit::Editing);
        assert_eq!(e.line(), "");
        assert_eq!(echo, b"\x08 \x08".repeat(3));
        e.feed(b'x', &mut echo);
        assert_eq!(e.feed(CTRL_C, &mut echo), Edit::Cancel);
        assert_eq!(e.line(), "");
    }

    #[test]
    fn editor_swallows_escape_sequences() {
        let mut e = LineEditor::new();
        let mut echo = Vec::new();
        // "li", Up, Left, Delete (ESC [ 3 ~), Alt-x, "st"
        for &b in b"li\x1b[A\x1bOD\x1b[3~\x1bxst" {
            assert_eq!(e.feed(b, &mut echo), Edit::Editing);
        }
        assert_eq!(e.line(), "list");
        assert_eq!(echo, b"list");
        // a control byte inside a sequence ends it and acts
        e.feed(ESC, &mut echo);
        e.feed(b'[', &mut echo);
        assert_eq!(e.feed(CTRL_C, &mut echo), Edit::Cancel);
    }

    #[test]
    fn editor_is_bounded() {
        let mut e = LineEditor::new();
        let mut echo = Vec::new();
        for _ in 0..MAX_LINE + 5 {
            e.feed(b'a', &mut echo);
        }
        assert_eq!(e.line().len(), MAX_LINE);
        assert_eq!(echo.len(), MAX_LINE + 5);
        assert_eq!(echo.iter().filter(|&&b| b == BELL).count(), 5);
        assert_eq!(e.feed(b'\n', &mut echo), Edit::Submit("a".repeat(MAX_LINE)));
    }

    #[test]
    fn ordinary_bytes_go_to_the_guest() {
        let mut f = ConsoleFilter::new();
        let (routes, echo) = feed_all(&mut f, b"ls\r\x03:");
        assert_eq!(
            routes,
            [b'l', b's', b'\r', 0x03, b':'].map(Route::Guest).to_vec()
        );
        assert!(echo.is_empty()); // the guest echoes its own input
    }

    #[test]
    fn prefix_keys() {
        let mut f = ConsoleFilter::new();
        let (routes, _) = feed_all(&mut f, b"\x012\x01l\x01\x01\x01zq");
        assert_eq!(
            routes,
            [
                Route::Nothing,
                Route::Focus(2),
                Route::Nothing,
                Route::ListGuests,
                Route::Nothing,
                Route::Guest(PREFIX),
                Route::Nothing,
                Route::KeyHelp,
                Route::Guest(b'q'),
            ]
        );
    }

    #[test]
    fn prompt_takes_a_command_then_input_goes_back_to_the_guest() {
        let mut f = ConsoleFilter::new();
        let (routes, echo) = feed_all(&mut f, b"a\x01:info  x\x7f1\rb");
        assert_eq!(routes.first(), Some(&Route::Guest(b'a')));
        assert_eq!(routes.get(2), Some(&Route::PromptOpened));
        assert_eq!(
            routes.get(routes.len() - 2),
            Some(&Route::Command("info  1".into()))
        );
        assert_eq!(routes.last(), Some(&Route::Guest(b'b')));
        assert!(routes[3..routes.len() - 2]
            .iter()
            .all(|r| *r == Route::Nothing));
        assert_eq!(echo, b"\r\nhv> info  x\x08 \x081\r\n");
        assert!(!f.prompt_open());
    }

    #[test]
    fn prompt_ctrl_c_cancels_and_prefix_is_literal_there() {
        let mut f = ConsoleFilter::new();
        let (routes, _) = feed_all(&mut f, b"\x01:li\x01\x03x");
        assert_eq!(routes.get(1), Some(&Route::PromptOpened));
        // Ctrl-A at the prompt is just an ignored control byte
        assert_eq!(routes.get(4), Some(&Route::Nothing));
        assert!(f.prompt_open() || routes.get(5) == Some(&Route::PromptCancelled));
        assert_eq!(routes.get(5), Some(&Route::PromptCancelled));
        assert_eq!(routes.get(6), Some(&Route::Guest(b'x')));
    }
}
