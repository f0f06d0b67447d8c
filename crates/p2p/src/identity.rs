//! The node's libp2p identity, persisted in `--data-dir` so that a restarted node keeps its
//! peer id (other nodes' records about it stay valid and its routing-table slots are reused).

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::Error;

/// File name under the data dir.
pub const IDENTITY_FILE: &str = "p2p-identity.key";

/// Loads the identity from `data_dir`, or creates and stores a new Ed25519 one.
/// Without a data dir a fresh identity is generated.
pub fn load_or_create(data_dir: Option<&Path>) -> Result<Keypair, Error> {
    let Some(dir) = data_dir else {
        return Ok(Keypair::generate_ed25519());
    };
    let path = dir.join(IDENTITY_FILE);
    let err = |reason: String| Error::Identity {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            err(format!(
                "not a libp2p private key ({e}); delete it to start afresh"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| err(format!("cannot encode key: {e}")))?;
            write_private(dir, &path, &bytes).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), peer = %kp.public().to_peer_id(), "created peer identity");
            Ok(kp)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes `bytes` to `path` through a temp file + rename, readable by the owner only.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{IDENTITY_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(Some(dir.path())).unwrap();
        let b = load_or_create(Some(dir.path())).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let e = load_or_create(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains(IDENTITY_FILE), "{e}");
    }
}
