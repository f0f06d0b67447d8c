//! `ApiPath::parse` on arbitrary request paths: never panics, every accepted path prints back
//! to a path that parses to the same route, and no accepted path escapes the grammar (no
//! `..`, `//`, backslash or percent-encoding in a repository or reference).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::{ApiPath, ManifestRef};

fuzz_target!(|s: &str| {
    match ApiPath::parse(s) {
        Ok(p) => {
            let printed = p.to_string();
            assert_eq!(
                ApiPath::parse(&printed).as_ref(),
                Ok(&p),
                "{s:?} via {printed:?}"
            );
            if let Some(repo) = p.repository() {
                let r = repo.as_str();
                assert!(
                    !r.contains("..") && !r.contains("//") && !r.contains(['\\', '%']),
                    "{s:?} accepted repository {r:?}"
                );
            }
            if let ApiPath::Manifest {
                reference: ManifestRef::Tag(t),
                ..
            } = &p
            {
                assert!(!t.as_str().contains(['/', '%', '\\']), "{s:?}");
            }
        }
        Err(e) => {
            // Every refusal maps to a status the router can send.
            let status = e.status();
            assert!((400..500).contains(&status), "{s:?}: {e} -> {status}");
        }
    }
});
