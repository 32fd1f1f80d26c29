//! Command line handling: space-separated `key=value` tokens.

/// Longest command line read from the loader.
pub const MAX_LEN: usize = 4096;

/// Builds a `&str` from the loader's NUL-terminated command line. Stops at
/// NUL or `MAX_LEN` bytes and drops any invalid UTF-8 tail. Null gives "".
///
/// # Safety
/// `ptr` must be null or point to readable memory up to its NUL (or
/// `MAX_LEN` bytes) that stays unchanged for the rest of the program.
pub unsafe fn from_ptr(ptr: *const u8) -> &'static str {
    if ptr.is_null() {
        return "";
    }
    let mut len = 0;
    // SAFETY: readable up to the NUL or MAX_LEN, per the caller.
    while len < MAX_LEN && unsafe { ptr.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: as above; the memory is never written afterwards.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        // The prefix up to `valid_up_to` is valid UTF-8.
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Value of the first `key=value` token, if any.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
}

/// Parses hex with an optional `0x`/`0X` prefix and `_` separators.
pub fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        value = value
            .checked_mul(16)?
            .checked_add(u64::from(c.to_digit(16)?))?;
        any = true;
    }
    any.then_some(value)
}

/// Parses a number: hex with a `0x`/`0X` prefix, else decimal; `_`
/// separators are allowed.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.starts_with("0x") || s.starts_with("0X") {
        return parse_hex(s);
    }
    let mut value: u64 = 0;
    let mut any = false;
    for c in s.chars() {
        if c == '_' {
            continue;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(c.to_digit(10)?))?;
        any = true;
    }
    any.then_some(value)
}

/// The number given for `key` (see [`parse_u64`]); `default` if the key is
/// absent, `None` if its value does not parse.
pub fn number(cmdline: &str, key: &str, default: u64) -> Option<u64> {
    get(cmdline, key).map_or(Some(default), parse_u64)
}

/// True if `key` is present with value `1`, `true`, `yes` or `on`.
pub fn flag(cmdline: &str, key: &str) -> bool {
    matches!(get(cmdline, key), Some("1" | "true" | "yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_finds_values() {
        let c = "  target=0x1000  write=1 x target=5";
        assert_eq!(get(c, "target"), Some("0x1000"));
        assert_eq!(get(c, "write"), Some("1"));
        assert_eq!(get(c, "x"), None);
        assert_eq!(get(c, "targ"), None);
        assert_eq!(get("", "target"), None);
        assert_eq!(get("target=", "target"), Some(""));
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex("0x40000000"), Some(0x4000_0000));
        assert_eq!(parse_hex("DEADbeef"), Some(0xdead_beef));
        assert_eq!(parse_hex("0X1_0000_0000"), Some(0x1_0000_0000));
        assert_eq!(parse_hex("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex("1ffffffffffffffff"), None);
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex(""), None);
        assert_eq!(parse_hex("12g"), None);
        assert_eq!(parse_hex("+12"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("1_000_000"), Some(1_000_000));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("0x2f0"), Some(0x2F0));
        assert_eq!(parse_u64("2f0"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("_"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(number("cycles=500 x=1", "cycles", 7), Some(500));
        assert_eq!(number("x=1", "cycles", 7), Some(7));
        assert_eq!(number("cycles=abc", "cycles", 7), None);
    }

    #[test]
    fn flags() {
        assert!(flag("write=1", "write"));
        assert!(flag("a write=true", "write"));
        assert!(!flag("write=0", "write"));
        assert!(!flag("write", "write"));
        assert!(!flag("", "write"));
    }

    #[test]
    fn from_raw() {
        // SAFETY: NUL-terminated static strings.
        unsafe {
            assert_eq!(from_ptr(c"hi there".as_ptr().cast()), "hi there");
            assert_eq!(from_ptr(c"".as_ptr().cast()), "");
            assert_eq!(from_ptr(core::ptr::null()), "");
            assert_eq!(from_ptr(c"ok\xff\xfe".as_ptr().cast()), "ok");
        }
        let long: &'static [u8] = Box::leak(vec![b'a'; MAX_LEN + 10].into_boxed_slice());
        // SAFETY: readable for more than MAX_LEN bytes.
        assert_eq!(unsafe { from_ptr(long.as_ptr()) }.len(), MAX_LEN);
    }
}
