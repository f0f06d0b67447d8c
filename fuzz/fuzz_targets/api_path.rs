//! `ApiPath::parse` on arbitrary request paths: never panics, every accepted path prints back
//! to a path that parses to the same route, and no accepted path escapes the grammar (no
//! `..`, `//`, backslash or percent-encoding in a repository or reference). `split_registry`
//! on the same input never panics, only splits off a valid `host[:port]` (one the allowlist
//! accepts as a name), and leaves a `/v2/` path made of the rest of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_oci::{ApiPath, ManifestRef};

fuzz_target!(|s: &str| {
    if let Some((registry, rest)) = shoal_oci::split_registry(s) {
        assert!(
            !registry.contains(['/', '%', '\\']) && !registry.is_empty(),
            "{s:?} split off {registry:?}"
        );
        assert!(
            rest.starts_with("/v2/") && s.ends_with(&rest[4..]),
            "{s:?} -> {rest:?}"
        );
        assert!(
            shoal_oci::Allowlist::only([registry.as_str()]).is_ok(),
            "{s:?}: {registry:?}"
        );
    }
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
