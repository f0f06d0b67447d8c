//! `Document::parse` on arbitrary bytes with an arbitrary or well-known media type hint: never
//! panics; an accepted document serialises to JSON that parses back to the same document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::{Document, MAX_MANIFEST_BYTES, media};

const HINTS: [&str; 5] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    "application/octet-stream",
];

fuzz_target!(|input: (u8, Option<&str>, &[u8])| {
    let (pick, free_hint, bytes) = input;
    let hint = match pick % 3 {
        0 => None,
        1 => Some(HINTS[usize::from(pick / 3) % HINTS.len()]),
        _ => free_hint,
    };
    let Ok(doc) = Document::parse(hint, bytes) else {
        return;
    };
    let _ = (doc.media_type(), doc.children());
    let json = match &doc {
        Document::Index(i) => serde_json::to_vec(i),
        Document::Manifest(m) => serde_json::to_vec(m),
    }
    .expect("a parsed document serialises");
    if json.len() > MAX_MANIFEST_BYTES {
        return;
    }
    let again = Document::parse(hint, &json)
        .unwrap_or_else(|e| panic!("re-parse failed: {e}\n{}", String::from_utf8_lossy(&json)));
    assert_eq!(again, doc);
});
