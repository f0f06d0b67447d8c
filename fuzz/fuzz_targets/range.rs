//! `Range` header parsing and resolution: never panics; printing round-trips; a resolved range
//! always lies inside the blob, is non-empty, and its `Content-Range` names it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::Range;

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    let Ok(r) = Range::parse(header) else { return };
    let printed = r.to_string();
    assert_eq!(Range::parse(&printed), Ok(r), "{header:?} via {printed:?}");
    match r.resolve(size) {
        Ok(b) => {
            assert!(b.start <= b.end_inclusive, "{header:?} size {size}: {b:?}");
            assert!(b.end_inclusive < size, "{header:?} size {size}: {b:?}");
            assert!(b.len() >= 1 && b.len() <= size);
            assert_eq!(
                r.content_range(size),
                format!("bytes {}-{}/{size}", b.start, b.end_inclusive)
            );
        }
        Err(_) => assert_eq!(r.content_range(size), format!("bytes */{size}")),
    }
});
