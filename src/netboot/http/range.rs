//! HTTP conditional and range request logic (RFC 9110 §13, §14), pure: headers in, decision out.

use std::ops::Range;

/// What to send for a file of `size` bytes with strong ETag `etag` (quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 304: the client has this exact content.
    NotModified,
    /// 200 with the whole file.
    Full,
    /// 206 with one byte range.
    Partial(Range<u64>),
    /// 416: no byte of the range lies in the file.
    Unsatisfiable,
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 §13.1.2 asks).
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || bare(t) == bare(etag)
    })
}

/// Parses one `bytes=` range against `size`. `None`: not a single byte range we honour (serve the whole file,
/// which RFC 9110 allows). `Some(Err(()))`: unsatisfiable.
pub fn parse_range(header: &str, size: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let n = num(b)?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok(size.saturating_sub(n)..size));
    }
    let start = num(a)?;
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        let e = num(b)?;
        if e < start {
            return None;
        }
        e.min(size.saturating_sub(1))
    };
    if start >= size {
        return Some(Err(()));
    }
    Some(Ok(start..end + 1))
}

/// Decides the response from `If-None-Match`, `Range` and `If-Range`.
pub fn decide(
    if_none_match: Option<&str>,
    range: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    size: u64,
) -> Decision {
    if if_none_match.is_some_and(|h| none_match(h, etag)) {
        return Decision::NotModified;
    }
    let Some(range) = range else {
        return Decision::Full;
    };
    // If-Range needs a strong match; a date or another tag means "send everything".
    if let Some(ir) = if_range
        && ir.trim() != etag
    {
        return Decision::Full;
    }
    match parse_range(range, size) {
        None => Decision::Full,
        Some(Err(())) => Decision::Unsatisfiable,
        Some(Ok(r)) if r.start == 0 && r.end == size => Decision::Full,
        Some(Ok(r)) => Decision::Partial(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "\"abc\"";

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-1000", 100), Some(Ok(0..100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some(Ok(50..100)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-1", 100), None);
        assert_eq!(parse_range("bytes=+1-2", 100), None);
    }

    #[test]
    fn decisions() {
        assert_eq!(
            decide(Some(E), Some("bytes=0-1"), None, E, 10),
            Decision::NotModified
        );
        assert_eq!(
            decide(Some("\"x\", W/\"abc\""), None, None, E, 10),
            Decision::NotModified
        );
        assert_eq!(decide(Some("*"), None, None, E, 10), Decision::NotModified);
        assert_eq!(decide(Some("\"x\""), None, None, E, 10), Decision::Full);
        assert_eq!(
            decide(None, Some("bytes=2-3"), None, E, 10),
            Decision::Partial(2..4)
        );
        assert_eq!(
            decide(None, Some("bytes=2-3"), Some(E), E, 10),
            Decision::Partial(2..4)
        );
        assert_eq!(
            decide(None, Some("bytes=2-3"), Some("\"old\""), E, 10),
            Decision::Full
        );
        assert_eq!(decide(None, Some("bytes=0-"), None, E, 10), Decision::Full);
        assert_eq!(
            decide(None, Some("bytes=10-"), None, E, 10),
            Decision::Unsatisfiable
        );
    }
}
