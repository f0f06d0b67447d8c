//! The HTTP `Range` request header (RFC 9110 §14), restricted to what a blob server needs.
//!
//! containerd resumes interrupted layer downloads with `Range: bytes=<offset>-`, so serving
//! ranges is required; serving several ranges in one multipart response is not, and is refused.
//! Parsing is separate from [`Range::resolve`] because satisfiability depends on the blob size,
//! which the caller learns only after finding the blob.

use std::fmt;
use std::str::FromStr;

/// One parsed byte-range spec, not yet applied to a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Range {
    /// `bytes=first-last` (both inclusive).
    Bounded { first: u64, last: u64 },
    /// `bytes=first-`: from `first` to the end.
    From { first: u64 },
    /// `bytes=-length`: the final `length` bytes.
    Suffix { length: u64 },
}

/// An absolute, satisfiable byte range of a blob (both ends inclusive, never empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end_inclusive: u64,
}

impl ByteRange {
    /// Number of bytes in the range (at least 1).
    pub fn len(&self) -> u64 {
        self.end_inclusive - self.start + 1
    }

    /// Always false: a resolved range holds at least one byte. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value for a 206 answer: `bytes start-end/size`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end_inclusive)
    }
}

/// Why a `Range` header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The header does not follow the `bytes=` range grammar. RFC 9110 lets a server ignore
    /// such a header and answer 200 with the whole blob.
    #[error("malformed Range header {header:?}: {reason}")]
    Malformed {
        header: String,
        reason: &'static str,
    },
    /// A range unit other than `bytes` (RFC 9110: ignore the header, answer 200).
    #[error("unsupported range unit {0:?}; only bytes is supported")]
    UnsupportedUnit(String),
    /// More than one range was asked for; multipart answers are not served.
    #[error("multiple ranges are not supported ({count} requested)")]
    MultipleRanges { count: usize },
    /// The range does not overlap the blob (answer 416 with `Content-Range: bytes */size`).
    #[error("range {range} is not satisfiable for a blob of {size} bytes")]
    Unsatisfiable { range: Range, size: u64 },
}

/// Optional whitespace as RFC 9110 defines it: spaces and horizontal tabs.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Parse a decimal position. Values beyond `u64` saturate: a position past any real blob
/// means the same thing as `u64::MAX`.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

impl Range {
    /// Parse a `Range` header value such as `bytes=0-1023`.
    pub fn parse(header: &str) -> Result<Range, RangeError> {
        let malformed = |reason| RangeError::Malformed {
            header: header.to_owned(),
            reason,
        };
        let (unit, set) = header
            .split_once('=')
            .ok_or_else(|| malformed("missing '=' after the range unit"))?;
        let unit = trim_ows(unit);
        if !unit.eq_ignore_ascii_case("bytes") {
            if unit.is_empty() {
                return Err(malformed("missing range unit"));
            }
            return Err(RangeError::UnsupportedUnit(unit.to_owned()));
        }
        // RFC 9110 list syntax: empty elements (`0-1, ,`) are allowed and ignored.
        let specs: Vec<&str> = set
            .split(',')
            .map(trim_ows)
            .filter(|s| !s.is_empty())
            .collect();
        let spec = match specs.as_slice() {
            [] => return Err(malformed("no range given")),
            [one] => *one,
            many => return Err(RangeError::MultipleRanges { count: many.len() }),
        };
        let (first, last) = spec
            .split_once('-')
            .ok_or_else(|| malformed("range has no '-'"))?;
        let (first, last) = (trim_ows(first), trim_ows(last));
        match (first.is_empty(), last.is_empty()) {
            (true, true) => Err(malformed("range has neither start nor end")),
            (true, false) => Ok(Range::Suffix {
                length: parse_pos(last)
                    .ok_or_else(|| malformed("suffix length is not a number"))?,
            }),
            (false, true) => Ok(Range::From {
                first: parse_pos(first).ok_or_else(|| malformed("start is not a number"))?,
            }),
            (false, false) => {
                let first = parse_pos(first).ok_or_else(|| malformed("start is not a number"))?;
                let last = parse_pos(last).ok_or_else(|| malformed("end is not a number"))?;
                if last < first {
                    return Err(malformed("end is before start"));
                }
                Ok(Range::Bounded { first, last })
            }
        }
    }

    /// The absolute range this spec selects from a blob of `size` bytes.
    pub fn resolve(&self, size: u64) -> Result<ByteRange, RangeError> {
        let unsatisfiable = || RangeError::Unsatisfiable { range: *self, size };
        let last_byte = size.checked_sub(1).ok_or_else(unsatisfiable)?;
        let (start, end_inclusive) = match *self {
            Range::Bounded { first, last } => (first, last.min(last_byte)),
            Range::From { first } => (first, last_byte),
            Range::Suffix { length: 0 } => return Err(unsatisfiable()),
            Range::Suffix { length } => (size - length.min(size), last_byte),
        };
        if start > last_byte {
            return Err(unsatisfiable());
        }
        Ok(ByteRange {
            start,
            end_inclusive,
        })
    }

    /// The `Content-Range` header value to answer with: `bytes a-b/size` when satisfiable
    /// (with 206), `bytes */size` when not (with 416).
    pub fn content_range(&self, size: u64) -> String {
        match self.resolve(size) {
            Ok(r) => r.content_range(size),
            Err(_) => format!("bytes */{size}"),
        }
    }
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Range::parse(s)
    }
}

/// Prints the header value (`bytes=0-99`, `bytes=100-`, `bytes=-50`).
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Bounded { first, last } => write!(f, "bytes={first}-{last}"),
            Range::From { first } => write!(f, "bytes={first}-"),
            Range::Suffix { length } => write!(f, "bytes=-{length}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(r("bytes=0-99"), Range::Bounded { first: 0, last: 99 });
        assert_eq!(r("bytes=100-"), Range::From { first: 100 });
        assert_eq!(r("bytes=-50"), Range::Suffix { length: 50 });
    }

    #[test]
    fn tolerates_whitespace_case_and_empty_list_elements() {
        assert_eq!(r(" bytes = 1 - 2 "), Range::Bounded { first: 1, last: 2 });
        assert_eq!(r("Bytes=\t5-"), Range::From { first: 5 });
        assert_eq!(r("bytes=, 0-1 ,"), Range::Bounded { first: 0, last: 1 });
    }

    #[test]
    fn refuses_multi_range_other_units_and_garbage() {
        assert_eq!(
            "bytes=0-1,5-6".parse::<Range>(),
            Err(RangeError::MultipleRanges { count: 2 })
        );
        assert_eq!(
            "items=0-1".parse::<Range>(),
            Err(RangeError::UnsupportedUnit("items".into()))
        );
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=1",
            "=0-1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=0x10-",
        ] {
            assert!(
                matches!(bad.parse::<Range>(), Err(RangeError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn huge_positions_saturate() {
        assert_eq!(
            r("bytes=0-99999999999999999999999"),
            Range::Bounded {
                first: 0,
                last: u64::MAX
            }
        );
        assert_eq!(
            r("bytes=0-99999999999999999999").resolve(10).unwrap().len(),
            10
        );
    }

    #[test]
    fn resolves_against_size() {
        let br = |start, end_inclusive| ByteRange {
            start,
            end_inclusive,
        };
        assert_eq!(r("bytes=0-99").resolve(1000), Ok(br(0, 99)));
        assert_eq!(r("bytes=900-2000").resolve(1000), Ok(br(900, 999)));
        assert_eq!(r("bytes=999-").resolve(1000), Ok(br(999, 999)));
        assert_eq!(r("bytes=-50").resolve(1000), Ok(br(950, 999)));
        assert_eq!(r("bytes=-5000").resolve(1000), Ok(br(0, 999)));
        assert_eq!(br(950, 999).len(), 50);
    }

    #[test]
    fn unsatisfiable_ranges() {
        for (h, size) in [
            ("bytes=1000-", 1000),
            ("bytes=1000-1001", 1000),
            ("bytes=-0", 1000),
            ("bytes=0-", 0),
            ("bytes=-5", 0),
        ] {
            let range = r(h);
            assert_eq!(
                range.resolve(size),
                Err(RangeError::Unsatisfiable { range, size }),
                "{h}"
            );
            assert_eq!(range.content_range(size), format!("bytes */{size}"));
        }
    }

    #[test]
    fn content_range_header() {
        assert_eq!(r("bytes=10-19").content_range(100), "bytes 10-19/100");
        assert_eq!(r("bytes=-1").content_range(100), "bytes 99-99/100");
    }

    #[test]
    fn prints_header_value() {
        for h in ["bytes=0-99", "bytes=100-", "bytes=-50"] {
            assert_eq!(r(h).to_string(), h);
        }
    }
}
