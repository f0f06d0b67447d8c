//! `Digest` parsing on arbitrary text: never panics, round-trips through `Display`, and the
//! serde form agrees with the text form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::Digest;

fuzz_target!(|s: &str| {
    let Ok(d) = s.parse::<Digest>() else {
        // Whatever the text form refuses, the JSON form refuses too.
        let json = serde_json::to_string(s).unwrap();
        assert!(serde_json::from_str::<Digest>(&json).is_err(), "{s:?}");
        return;
    };
    let printed = d.to_string();
    assert_eq!(
        printed.parse::<Digest>().as_ref(),
        Ok(&d),
        "{s:?} via {printed:?}"
    );
    assert_eq!(d.hex().len(), d.algorithm().hex_len());
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
});
