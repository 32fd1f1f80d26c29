//! The part of the hypervisor manifest format xtask needs: which files a manifest names.
//!
//! The hypervisor parses the whole manifest itself. xtask only has to find the lines whose key
//! names a file that must be put on the ESP next to it (`image = "..."`, `initrd = "..."`,
//! `snapshot = "..."`),
//! so this scanner reads `key = "value"` lines and nothing else.

use anyhow::{bail, Result};

/// Keys whose value is a file, relative to `\hv\` on the ESP.
pub const FILE_KEYS: &[&str] = &["image", "initrd", "snapshot"];

/// One file a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `image`, `initrd` or `snapshot`.
    pub key: String,
    /// The value: a path relative to `\hv\`, with `/` separators.
    pub path: String,
    /// 1-based line number in the manifest.
    pub line_no: usize,
    /// The line as written (trimmed), for error messages.
    pub line: String,
}

/// Lists the files named by `image`/`initrd` keys in manifest text, in order of appearance.
/// The same path named twice (two guests sharing an image) is listed once.
pub fn file_refs(text: &str) -> Result<Vec<FileRef>> {
    let mut refs: Vec<FileRef> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if line.starts_with('#') || !FILE_KEYS.contains(&key) {
            continue;
        }
        let path = match parse_string(value.trim()) {
            Some(path) => path,
            None => bail!(
                "line {line_no}: `{line}`: expected {key} = \"<file name>\" (a quoted string)"
            ),
        };
        if let Err(why) = check_path(&path) {
            bail!("line {line_no}: `{line}`: {why}");
        }
        if !refs.iter().any(|r| r.path == path) {
            refs.push(FileRef {
                key: key.to_string(),
                path,
                line_no,
                line: line.to_string(),
            });
        }
    }
    Ok(refs)
}

/// Parses a TOML basic (`"..."`) or literal (`'...'`) string without escapes, followed by
/// nothing but an optional comment.
fn parse_string(value: &str) -> Option<String> {
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &value[1..];
    let end = rest.find(quote)?;
    let body = &rest[..end];
    let tail = rest[end + 1..].trim();
    if !(tail.is_empty() || tail.starts_with('#')) || (quote == '"' && body.contains('\\')) {
        return None;
    }
    Some(body.to_string())
}

/// A file path must stay inside `\hv\`.
fn check_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() {
        return Err("the file name is empty");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains(':') {
        return Err("the file name must be relative to \\hv\\ and use / between directories");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("the file name may not contain empty, `.` or `..` components");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_image_and_initrd_lines_once_each() {
        let text = r#"
[hypervisor]
poweroff_when_done = true
# image = "commented.elf"

[[guest]]
name = "a"
image = "hello.elf"   # trailing comment
initrd = 'linux/initrd.gz'

[[guest]]
name = "b"
image = "hello.elf"
cmdline = "image=not-a-file"
"#;
        let refs = file_refs(text).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].key, "image");
        assert_eq!(refs[0].path, "hello.elf");
        assert_eq!(refs[0].line_no, 8);
        assert_eq!(refs[1].key, "initrd");
        assert_eq!(refs[1].path, "linux/initrd.gz");
    }

    #[test]
    fn rejects_unquoted_and_escaping_paths() {
        let err = file_refs("image = hello.elf\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        for bad in [
            "\"../x.elf\"",
            "\"/abs.elf\"",
            "\"a\\\\b\"",
            "\"\"",
            "\"a//b\"",
        ] {
            let text = format!("[[guest]]\nimage = {bad}\n");
            let err = file_refs(&text).unwrap_err().to_string();
            assert!(err.contains("line 2"), "{bad}: {err}");
        }
    }
}
