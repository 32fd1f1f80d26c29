//! The console's command language: one line in, a [`Command`] or a [`ParseError`] out.
//!
//! Names (VMs and snapshots): 1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9 _ - .`, starting with
//! a letter or digit. The same rule holds for the API's path segments and JSON fields, so a
//! name never needs quoting on the console or escaping in a URL.

use alloc::string::String;
use core::fmt;

/// Longest VM or snapshot name, in bytes.
pub const MAX_NAME: usize = 32;

/// A checked VM or snapshot name (see the module documentation for the syntax).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    /// The first byte is not a letter or digit.
    BadStart,
    /// A byte outside `A-Z a-z 0-9 _ - .` (the byte).
    BadByte(u8),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "is empty"),
            NameError::TooLong => write!(f, "is longer than {MAX_NAME} bytes"),
            NameError::BadStart => write!(f, "must start with a letter or digit"),
            NameError::BadByte(b) if b.is_ascii_graphic() => {
                write!(
                    f,
                    "may not contain `{}` (only A-Z a-z 0-9 _ - .)",
                    char::from(*b)
                )
            }
            NameError::BadByte(b) => {
                write!(f, "may not contain byte 0x{b:02x} (only A-Z a-z 0-9 _ - .)")
            }
        }
    }
}

impl Name {
    /// Checks `s` against the name syntax.
    pub fn parse(s: &str) -> Result<Name, NameError> {
        let bytes = s.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(NameError::Empty);
        };
        if bytes.len() > MAX_NAME {
            return Err(NameError::TooLong);
        }
        if let Some(&b) = bytes
            .iter()
            .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
        {
            return Err(NameError::BadByte(b));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        Ok(Name(String::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One console command (issue 13 item 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    List,
    Info(Name),
    Pause(Name),
    Resume(Name),
    Stop(Name),
    Restart(Name),
    /// `snapshot VM [NAME]`: without a name the core picks one.
    Snapshot {
        vm: Name,
        name: Option<Name>,
    },
    /// `snapshots [VM]`: all snapshots, or those taken of one VM.
    Snapshots(Option<Name>),
    Rollback {
        vm: Name,
        snapshot: Name,
    },
    Clone {
        snapshot: Name,
        new_vm: Name,
    },
    Delete(Name),
    /// `help [CMD]`: the command is one of [`COMMANDS`] (checked by the parser).
    Help(Option<&'static str>),
}

/// Each command's word, usage line and one-line description, in `help`'s order.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "list",
        "list",
        "all VMs with state, vCPUs, memory, exits/s and CPU share",
    ),
    (
        "info",
        "info VM",
        "one VM: state, vCPUs and where they run, memory, exits/s by reason",
    ),
    (
        "pause",
        "pause VM",
        "stop scheduling VM's vCPUs (at an instruction boundary)",
    ),
    ("resume", "resume VM", "schedule a paused VM again"),
    ("stop", "stop VM", "end VM (it does not restart)"),
    (
        "restart",
        "restart VM",
        "cold-restart VM from its manifest entry",
    ),
    (
        "snapshot",
        "snapshot VM [NAME]",
        "save VM's whole state as snapshot NAME",
    ),
    ("snapshots", "snapshots [VM]", "list snapshots (of VM)"),
    (
        "rollback",
        "rollback VM NAME",
        "restore snapshot NAME into the running VM",
    ),
    (
        "clone",
        "clone NAME NEWVM",
        "start a copy of snapshot NAME as new VM NEWVM",
    ),
    ("delete", "delete NAME", "delete snapshot NAME"),
    ("help", "help [CMD]", "this list, or one command's usage"),
];

/// The usage line of command `word` (one of [`COMMANDS`]).
pub fn usage(word: &str) -> Option<&'static str> {
    COMMANDS.iter().find(|c| c.0 == word).map(|c| c.1)
}

/// Why a line is not a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The line holds only blanks (the console just prints a new prompt).
    Empty,
    /// The first word is no command; `suggestion` is the closest one, if any is close.
    Unknown {
        word: String,
        suggestion: Option<&'static str>,
    },
    /// Too few arguments.
    Missing { usage: &'static str },
    /// Too many arguments; `extra` is the first one too many.
    Extra { usage: &'static str, extra: String },
    /// An argument is not a valid name.
    BadName {
        usage: &'static str,
        name: String,
        why: NameError,
    },
    /// `help X` for an X that is no command.
    UnknownHelp {
        word: String,
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty command"),
            ParseError::Unknown { word, suggestion } => {
                write!(f, "unknown command `{word}`")?;
                match suggestion {
                    Some(s) => write!(f, "; did you mean `{s}`?"),
                    None => write!(f, "; `help` lists the commands"),
                }
            }
            ParseError::Missing { usage } => write!(f, "missing argument; usage: {usage}"),
            ParseError::Extra { usage, extra } => {
                write!(f, "unexpected argument `{extra}`; usage: {usage}")
            }
            ParseError::BadName { usage, name, why } => {
                write!(f, "bad name `{name}`: {why}; usage: {usage}")
            }
            ParseError::UnknownHelp { word, suggestion } => {
                write!(f, "no command `{word}`")?;
                match suggestion {
                    Some(s) => write!(f, "; did you mean `{s}`?"),
                    None => write!(f, "; `help` lists the commands"),
                }
            }
        }
    }
}

/// Edit distance between two short ASCII words (bounded: words longer than 16 bytes are
/// compared on their first 16).
fn distance(a: &str, b: &str) -> usize {
    const N: usize = 17;
    let a = a.as_bytes().get(..a.len().min(N - 1)).unwrap_or_default();
    let b = b.as_bytes().get(..b.len().min(N - 1)).unwrap_or_default();
    let mut prev = [0usize; N];
    let mut cur = [0usize; N];
    for (j, p) in prev.iter_mut().enumerate() {
        *p = j;
    }
    for (i, &ca) in a.iter().enumerate() {
        if let Some(c0) = cur.first_mut() {
            *c0 = i.saturating_add(1);
        }
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(usize::MAX);
            let sub = sub.saturating_add(usize::from(ca != cb));
            let del = prev.get(j.saturating_add(1)).copied().unwrap_or(usize::MAX);
            let ins = cur.get(j).copied().unwrap_or(usize::MAX);
            let best = sub.min(del.saturating_add(1)).min(ins.saturating_add(1));
            if let Some(c) = cur.get_mut(j.saturating_add(1)) {
                *c = best;
            }
        }
        core::mem::swap(&mut prev, &mut cur);
    }
    prev.get(b.len()).copied().unwrap_or(usize::MAX)
}

/// The command closest to `word`: the first command it is a prefix of, else one at edit
/// distance 2 or less (the first in [`COMMANDS`] order at the smallest distance).
pub fn suggest(word: &str) -> Option<&'static str> {
    let lower = word.to_ascii_lowercase();
    if !lower.is_empty() {
        if let Some(c) = COMMANDS.iter().find(|c| c.0.starts_with(lower.as_str())) {
            return Some(c.0);
        }
    }
    COMMANDS
        .iter()
        .map(|c| (distance(&lower, c.0), c.0))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, w)| w)
}

/// Parses one console line. Words are separated by spaces or tabs; command words are
/// case-sensitive (lower case).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let Some(word) = words.next() else {
        return Err(ParseError::Empty);
    };
    let Some(&(word, usage, _)) = COMMANDS.iter().find(|c| c.0 == word) else {
        return Err(ParseError::Unknown {
            word: String::from(word),
            suggestion: suggest(word),
        });
    };
    let args: [Option<&str>; 3] = [words.next(), words.next(), words.next()];
    // (required, optional) argument counts
    let (required, optional): (usize, usize) = match word {
        "list" => (0, 0),
        "snapshots" | "help" => (0, 1),
        "snapshot" => (1, 1),
        "rollback" | "clone" => (2, 0),
        _ => (1, 0),
    };
    let given = args.iter().take_while(|a| a.is_some()).count();
    let max: usize = required.saturating_add(optional);
    if given < required {
        return Err(ParseError::Missing { usage });
    }
    if given > max {
        let extra = args.get(max).copied().flatten().unwrap_or_default();
        return Err(ParseError::Extra {
            usage,
            extra: String::from(extra),
        });
    }
    if word == "help" {
        return match args[0] {
            None => Ok(Command::Help(None)),
            Some(w) => match COMMANDS.iter().find(|c| c.0 == w) {
                Some(c) => Ok(Command::Help(Some(c.0))),
                None => Err(ParseError::UnknownHelp {
                    word: String::from(w),
                    suggestion: suggest(w),
                }),
            },
        };
    }
    let name = |i: usize| -> Result<Option<Name>, ParseError> {
        match args.get(i).copied().flatten() {
            None => Ok(None),
            Some(s) => Name::parse(s).map(Some).map_err(|why| ParseError::BadName {
                usage,
                name: String::from(s),
                why,
            }),
        }
    };
    let a = name(0)?;
    let b = name(1)?;
    let need = |n: Option<Name>| n.ok_or(ParseError::Missing { usage });
    Ok(match word {
        "list" => Command::List,
        "info" => Command::Info(need(a)?),
        "pause" => Command::Pause(need(a)?),
        "resume" => Command::Resume(need(a)?),
        "stop" => Command::Stop(need(a)?),
        "restart" => Command::Restart(need(a)?),
        "snapshot" => Command::Snapshot {
            vm: need(a)?,
            name: b,
        },
        "snapshots" => Command::Snapshots(a),
        "rollback" => Command::Rollback {
            vm: need(a)?,
            snapshot: need(b)?,
        },
        "clone" => Command::Clone {
            snapshot: need(a)?,
            new_vm: need(b)?,
        },
        _ => Command::Delete(need(a)?),
    })
}

/// `help`'s text: every command, or one command's usage and description.
pub fn help_text(cmd: Option<&str>) -> String {
    use core::fmt::Write;
    let mut s = String::new();
    for &(word, usage, what) in COMMANDS {
        if cmd.is_none() || cmd == Some(word) {
            let _ = writeln!(s, "  {usage:<20} {what}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(parse("list"), Ok(Command::List));
        assert_eq!(parse("  info\tweb1 "), Ok(Command::Info(n("web1"))));
        assert_eq!(parse("pause a"), Ok(Command::Pause(n("a"))));
        assert_eq!(parse("resume a"), Ok(Command::Resume(n("a"))));
        assert_eq!(parse("stop a"), Ok(Command::Stop(n("a"))));
        assert_eq!(parse("restart a"), Ok(Command::Restart(n("a"))));
        assert_eq!(
            parse("snapshot a"),
            Ok(Command::Snapshot {
                vm: n("a"),
                name: None
            })
        );
        assert_eq!(
            parse("snapshot a s1.pre-fix_2"),
            Ok(Command::Snapshot {
                vm: n("a"),
                name: Some(n("s1.pre-fix_2"))
            })
        );
        assert_eq!(parse("snapshots"), Ok(Command::Snapshots(None)));
        assert_eq!(parse("snapshots a"), Ok(Command::Snapshots(Some(n("a")))));
        assert_eq!(
            parse("rollback a s1"),
            Ok(Command::Rollback {
                vm: n("a"),
                snapshot: n("s1")
            })
        );
        assert_eq!(
            parse("clone s1 b"),
            Ok(Command::Clone {
                snapshot: n("s1"),
                new_vm: n("b")
            })
        );
        assert_eq!(parse("delete s1"), Ok(Command::Delete(n("s1"))));
        assert_eq!(parse("help"), Ok(Command::Help(None)));
        assert_eq!(parse("help clone"), Ok(Command::Help(Some("clone"))));
    }

    #[test]
    fn argument_count_errors_name_the_usage() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse(" \t "), Err(ParseError::Empty));
        assert_eq!(parse("info"), Err(ParseError::Missing { usage: "info VM" }));
        assert_eq!(
            parse("rollback a"),
            Err(ParseError::Missing {
                usage: "rollback VM NAME"
            })
        );
        assert_eq!(
            parse("list x"),
            Err(ParseError::Extra {
                usage: "list",
                extra: "x".into()
            })
        );
        assert_eq!(
            parse("snapshot a b c d"),
            Err(ParseError::Extra {
                usage: "snapshot VM [NAME]",
                extra: "c".into()
            })
        );
        let e = parse("clone s1").unwrap_err().to_string();
        assert_eq!(e, "missing argument; usage: clone NAME NEWVM");
        let e = parse("delete a b").unwrap_err().to_string();
        assert_eq!(e, "unexpected argument `b`; usage: delete NAME");
    }

    #[test]
    fn unknown_commands_get_a_suggestion() {
        let e = parse("lsit").unwrap_err();
        assert_eq!(
            e,
            ParseError::Unknown {
                word: "lsit".into(),
                suggestion: Some("list")
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown command `lsit`; did you mean `list`?"
        );
        assert_eq!(suggest("snap"), Some("snapshot")); // a prefix wins over `stop` at distance 2
        assert_eq!(suggest("snapshts"), Some("snapshots"));
        assert_eq!(suggest("resu"), Some("resume"));
        assert_eq!(suggest("rollbak"), Some("rollback"));
        assert_eq!(suggest("LIST"), Some("list"));
        assert_eq!(
            parse("frobnicate x").unwrap_err().to_string(),
            "unknown command `frobnicate`; `help` lists the commands"
        );
        assert_eq!(
            parse("help clo").unwrap_err().to_string(),
            "no command `clo`; did you mean `clone`?"
        );
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse("-a"), Err(NameError::BadStart));
        assert_eq!(Name::parse(".a"), Err(NameError::BadStart));
        assert_eq!(Name::parse("a/b"), Err(NameError::BadByte(b'/')));
        assert_eq!(Name::parse("a\u{e9}"), Err(NameError::BadByte(0xc3)));
        assert!(Name::parse(&"a".repeat(MAX_NAME)).is_ok());
        assert_eq!(
            Name::parse(&"a".repeat(MAX_NAME + 1)),
            Err(NameError::TooLong)
        );
        assert_eq!(
            parse("info ../x").unwrap_err().to_string(),
            "bad name `../x`: may not contain `/` (only A-Z a-z 0-9 _ - .); usage: info VM"
        );
        assert_eq!(
            parse("clone s1 -x").unwrap_err().to_string(),
            "bad name `-x`: must start with a letter or digit; usage: clone NAME NEWVM"
        );
    }

    #[test]
    fn help_lists_every_command() {
        let all = help_text(None);
        for (word, usage, _) in COMMANDS {
            assert!(all.contains(usage), "{word}");
        }
        assert_eq!(help_text(Some("delete")).lines().count(), 1);
        assert!(help_text(Some("delete")).contains("delete NAME"));
        assert_eq!(usage("rollback"), Some("rollback VM NAME"));
    }
}
