//! Reading the serial console and the manifests: the line formats every section shares.

/// A guest console line as the hypervisor shows it: `[<guest>] <text>`.
pub fn guest_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (name, text) = rest.split_once("] ")?;
    (!name.is_empty() && !name.contains(' ')).then_some((name, text))
}

/// How a VM ended, from `vm <name>: exited code=<n>` / `vm <name>: stopped: <reason>`.
pub fn vm_outcome<'a>(serial: &'a str, vm: &str) -> Option<&'a str> {
    let prefix = format!("vm {vm}: ");
    serial.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        ["exited", "stopped", "not started"]
            .iter()
            .any(|p| rest.starts_with(p))
            .then_some(rest)
    })
}

/// `vm <name>: <what>` lines: (name, what).
pub(super) fn vm_line(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("vm ")?.split_once(": ")
}

/// The first whitespace-separated number in `s` after `key`.
pub(super) fn number_after(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    s[at..].split_whitespace().next()?.parse().ok()
}

/// The first `key = "value"` of manifest text (comments and other keys skipped).
pub fn manifest_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|raw| {
        let line = raw.trim();
        let (k, v) = line.split_once('=')?;
        if line.starts_with('#') || k.trim() != key {
            return None;
        }
        let v = v.trim();
        let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let end = v[1..].find(quote)?;
        Some(v[1..1 + end].to_string())
    })
}

/// `(name, weight)` of every `[[guest]]` in manifest text (weight 100 unless given).
pub fn manifest_weights(text: &str) -> Vec<(String, u32)> {
    let mut guests: Vec<(String, u32)> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line == "[[guest]]" {
            guests.push((String::new(), 100));
            continue;
        }
        let (Some(g), Some((key, value))) = (guests.last_mut(), line.split_once('=')) else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "name" => g.0 = value.trim_matches(|c| c == '"' || c == '\'').to_string(),
            "weight" => {
                if let Ok(w) = value.replace('_', "").parse() {
                    g.1 = w;
                }
            }
            _ => {}
        }
    }
    guests
}

/// `(name, cmdline)` of every `[[guest]]` in manifest text.
pub fn manifest_cmdlines(text: &str) -> Vec<(String, String)> {
    let mut guests: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line == "[[guest]]" {
            guests.push((String::new(), String::new()));
            continue;
        }
        let (Some(g), Some((key, value))) = (guests.last_mut(), line.split_once('=')) else {
            continue;
        };
        let value = value.split('#').next().unwrap_or("").trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'').to_string();
        match key.trim() {
            "name" => g.0 = value,
            "cmdline" => g.1 = value,
            _ => {}
        }
    }
    guests
}

/// `vm <name>: first output <t> TSC ticks after the manifest was read` lines: (name, t).
pub fn first_outputs(serial: &str) -> Vec<(String, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, what) = vm_line(l)?;
            let t = what
                .strip_prefix("first output ")?
                .split_whitespace()
                .next()?;
            Some((name.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// The first `cycles=<n>` in manifest text.
pub(super) fn manifest_cycles(text: &str) -> Option<u64> {
    let at = text.find("cycles=")? + "cycles=".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '_')
        .filter(|c| *c != '_')
        .collect();
    digits.parse().ok()
}

/// `x` to three decimals; 0 for a figure that isn't a number (a phase of no bytes).
pub fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}
