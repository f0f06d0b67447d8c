//! `Reference::parse` on arbitrary text: never panics, and what it prints parses back to the
//! same reference (the printed form is the normalised one, so printing is idempotent too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::Reference;

fuzz_target!(|s: &str| {
    let Ok(r) = Reference::parse(s) else { return };
    let printed = r.to_string();
    let again = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} parsed, printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, r, "round trip of {s:?} via {printed:?}");
    assert_eq!(again.to_string(), printed);
    // Derived views must not panic either.
    let _ = (r.manifest_ref(), r.tag_key());
});
