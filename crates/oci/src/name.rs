//! Repository names and tags, validated against the OCI distribution grammar.
//!
//! Both arrive from untrusted places (request paths, image references typed by users, tag keys
//! from peers) and end up in log lines, DHT keys and upstream URLs, so they are only ever held
//! as these validated newtypes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest repository name accepted (the distribution registry's limit).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag accepted (the spec's `{0,127}` after the first character).
pub const MAX_TAG_LEN: usize = 128;

/// Why a repository name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {len} characters long; at most {MAX_REPOSITORY_LEN} are allowed")]
    TooLong { len: usize },
    #[error("repository name {name:?} contains uppercase {found:?}; names must be lowercase")]
    Uppercase { name: String, found: char },
    #[error(
        "repository name {name:?} contains {found:?}; only a-z, 0-9, '.', '_', '-' and '/' are allowed"
    )]
    BadChar { name: String, found: char },
    #[error("repository name {name:?} has an empty path component")]
    EmptyComponent { name: String },
    #[error(
        "repository name component {component:?} is invalid: it must start and end with a-z0-9 \
         and use only '.', '_', '__' or dashes between them"
    )]
    BadComponent { component: String },
}

/// Why a tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("tag is empty")]
    Empty,
    #[error("tag is {len} characters long; at most {MAX_TAG_LEN} are allowed")]
    TooLong { len: usize },
    #[error("tag {tag:?} starts with {found:?}; it must start with a-z, A-Z, 0-9 or '_'")]
    BadStart { tag: String, found: char },
    #[error("tag {tag:?} contains {found:?}; only a-z, A-Z, 0-9, '.', '_' and '-' are allowed")]
    BadChar { tag: String, found: char },
}

/// A repository name such as `library/nginx`, matching
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks one `/`-separated component against `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, assuming
/// every character is already known to be in `[a-z0-9._-]`.
fn component_ok(component: &str) -> bool {
    let (Some(first), Some(last)) = (component.chars().next(), component.chars().last()) else {
        return false;
    };
    if !is_lower_alnum(first) || !is_lower_alnum(last) {
        return false;
    }
    component
        .split(is_lower_alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

impl FromStr for Repository {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_REPOSITORY_LEN {
            return Err(NameError::TooLong { len: s.len() });
        }
        if let Some(found) = s.chars().find(char::is_ascii_uppercase) {
            return Err(NameError::Uppercase {
                name: s.to_owned(),
                found,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|&c| !(is_lower_alnum(c) || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(NameError::BadChar {
                name: s.to_owned(),
                found,
            });
        }
        for component in s.split('/') {
            if component.is_empty() {
                return Err(NameError::EmptyComponent { name: s.to_owned() });
            }
            if !component_ok(component) {
                return Err(NameError::BadComponent {
                    component: component.to_owned(),
                });
            }
        }
        Ok(Repository(s.to_owned()))
    }
}

/// A tag such as `1.27-alpine`, matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag `latest`, implied when a reference names neither tag nor digest.
    pub fn latest() -> Tag {
        Tag("latest".to_owned())
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(first) = s.chars().next() else {
            return Err(TagError::Empty);
        };
        if s.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong { len: s.len() });
        }
        if !(first.is_ascii_alphanumeric() || first == '_') {
            return Err(TagError::BadStart {
                tag: s.to_owned(),
                found: first,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TagError::BadChar {
                tag: s.to_owned(),
                found,
            });
        }
        Ok(Tag(s.to_owned()))
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(Repository);
string_newtype_impls!(Tag);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_repository_names() {
        for ok in [
            "nginx",
            "library/nginx",
            "a/b/c",
            "a.b_c__d---e/f0",
            "0",
            "my-app/sub.component",
        ] {
            let r: Repository = ok.parse().unwrap();
            assert_eq!(r.as_str(), ok);
            assert_eq!(r.to_string(), ok);
        }
    }

    #[test]
    fn refuses_bad_repository_names_with_reason() {
        assert_eq!("".parse::<Repository>(), Err(NameError::Empty));
        assert!(matches!(
            "Library/nginx".parse::<Repository>(),
            Err(NameError::Uppercase { found: 'L', .. })
        ));
        assert!(matches!(
            "a%2fb".parse::<Repository>(),
            Err(NameError::BadChar { found: '%', .. })
        ));
        assert!(matches!(
            "a\\b".parse::<Repository>(),
            Err(NameError::BadChar { found: '\\', .. })
        ));
        for empty in ["a//b", "/a", "a/"] {
            assert!(
                matches!(
                    empty.parse::<Repository>(),
                    Err(NameError::EmptyComponent { .. })
                ),
                "{empty}"
            );
        }
        for bad in [
            "..", "a/../b", "a..b", "a___b", "-a", "a-", "a._b", "_a", "a.-b",
        ] {
            assert!(
                matches!(
                    bad.parse::<Repository>(),
                    Err(NameError::BadComponent { .. })
                ),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_REPOSITORY_LEN + 1);
        assert_eq!(
            long.parse::<Repository>(),
            Err(NameError::TooLong { len: 256 })
        );
        assert!("a".repeat(MAX_REPOSITORY_LEN).parse::<Repository>().is_ok());
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "1.27-alpine", "_x", "V1.2.3", &"a".repeat(128)] {
            assert_eq!(ok.parse::<Tag>().unwrap().as_str(), ok);
        }
        assert_eq!("".parse::<Tag>(), Err(TagError::Empty));
        assert!(matches!(
            ".hidden".parse::<Tag>(),
            Err(TagError::BadStart { found: '.', .. })
        ));
        assert!(matches!(
            "-x".parse::<Tag>(),
            Err(TagError::BadStart { found: '-', .. })
        ));
        assert!(matches!(
            "a:b".parse::<Tag>(),
            Err(TagError::BadChar { found: ':', .. })
        ));
        assert_eq!(
            "a".repeat(129).parse::<Tag>(),
            Err(TagError::TooLong { len: 129 })
        );
    }

    #[test]
    fn serde_validates() {
        let t: Tag = serde_json::from_str("\"v1\"").unwrap();
        assert_eq!(t.as_str(), "v1");
        assert!(serde_json::from_str::<Repository>("\"UPPER\"").is_err());
    }
}
