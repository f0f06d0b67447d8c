//! Private-network keys: reading the libp2p `swarm.key` file.
//!
//! The format is three lines: `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits (32 bytes).
//! libp2p-pnet has a parser, but its errors do not say which line is wrong; a daemon that refuses
//! to start must tell the operator exactly what to fix, so the format is checked here.

use std::path::Path;

use libp2p::pnet::PreSharedKey;

use crate::Error;

const HEADER: &str = "/key/swarm/psk/1.0.0/";
const ENCODING: &str = "/base16/";

/// Reads a `swarm.key` file. Errors name the file and what is wrong with it.
pub fn load_psk(path: impl AsRef<Path>) -> Result<PreSharedKey, Error> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::PskRead {
        path: path.to_owned(),
        source,
    })?;
    parse_psk(&text).map_err(|reason| Error::PskFormat {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the contents of a `swarm.key` file; the error is a human-readable reason.
pub fn parse_psk(text: &str) -> Result<PreSharedKey, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines.next().ok_or("the file is empty")?;
    if header != HEADER {
        return Err(format!("first line must be {HEADER:?}, found {header:?}"));
    }
    let encoding = lines
        .next()
        .ok_or(format!("second line {ENCODING:?} is missing"))?;
    if encoding != ENCODING {
        return Err(format!(
            "second line must be {ENCODING:?} (the only supported encoding), found {encoding:?}"
        ));
    }
    let hex_key = lines
        .next()
        .ok_or("third line (64 hex digits) is missing")?;
    if hex_key.len() != 64 {
        return Err(format!(
            "key must be 64 hex digits, found {} characters",
            hex_key.chars().count()
        ));
    }
    if let Some(bad) = hex_key.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("key contains {bad:?}, which is not a hex digit"));
    }
    if lines.next().is_some() {
        return Err("unexpected content after the key line".to_owned());
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|e| format!("key is not valid hex: {e}"))?;
    Ok(PreSharedKey::new(bytes))
}

/// Formats a key as a `swarm.key` file (useful to generate one).
pub fn format_psk(key: &PreSharedKey) -> String {
    key.to_key_file()
}

/// The 32 secret bytes of a key, for deriving other credentials from the cluster key (the
/// mirror's HMAC key). libp2p-pnet has no accessor, so they are read back from its key file form.
pub fn psk_secret(key: &PreSharedKey) -> [u8; 32] {
    let file = key.to_key_file();
    let mut bytes = [0u8; 32];
    let last = file.lines().map(str::trim).rfind(|l| !l.is_empty());
    if let Some(hex_key) = last {
        // The format is fixed by libp2p-pnet; a failure here would be a libp2p change.
        let _ = hex::decode_to_slice(hex_key, &mut bytes);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "/key/swarm/psk/1.0.0/\n/base16/\n\
        0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef\n";

    #[test]
    fn secret_bytes_are_the_key() {
        let k = parse_psk(GOOD).unwrap();
        let s = psk_secret(&k);
        assert_eq!(s[0], 0x01);
        assert_eq!(s[15], 0xef);
        assert_eq!(PreSharedKey::new(s), k);
    }

    #[test]
    fn parses_and_round_trips() {
        let k = parse_psk(GOOD).unwrap();
        assert_eq!(parse_psk(&format_psk(&k)).unwrap(), k);
        // CRLF and surrounding blank lines are tolerated.
        assert_eq!(parse_psk(&GOOD.replace('\n', "\r\n")).unwrap(), k);
    }

    #[test]
    fn reasons_name_the_problem() {
        assert!(parse_psk("").unwrap_err().contains("empty"));
        assert!(
            parse_psk("/key/swarm/psk/2.0.0/\n")
                .unwrap_err()
                .contains("first line")
        );
        let b64 = GOOD.replace("/base16/", "/base64/");
        assert!(parse_psk(&b64).unwrap_err().contains("second line"));
        let short = "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n";
        assert!(parse_psk(short).unwrap_err().contains("found 4 characters"));
        let bad = GOOD.replace("0123", "g123");
        assert!(parse_psk(&bad).unwrap_err().contains("'g'"));
        let extra = format!("{GOOD}more\n");
        assert!(parse_psk(&extra).unwrap_err().contains("after the key"));
        assert!(
            parse_psk("/key/swarm/psk/1.0.0/\n/base16/\n")
                .unwrap_err()
                .contains("third")
        );
    }
}
