//! S3 credentials: from a credentials file `[store] credentials_file` names (AWS's shared-credentials format,
//! profile `default`), else from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`). Never from `cluster.toml` (validation refuses them there), never logged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// An access key pair (and session token), as the object store signs requests with it.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id.
    pub key_id: String,
    /// The secret access key.
    pub secret: String,
    /// A session token, for temporary credentials.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ key_id: {:?}, secret: <redacted> }}",
            self.key_id
        )
    }
}

/// The credentials from `file`, or from the environment when `None`; the error says what to do.
pub fn load(file: Option<&Path>) -> Result<Credentials, String> {
    match file {
        Some(f) => from_file(f),
        None => from_env(),
    }
}

fn from_env() -> Result<Credentials, String> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => Ok(Credentials {
            key_id,
            secret,
            token: get("AWS_SESSION_TOKEN"),
        }),
        _ => Err(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in imgbuild's environment \
             (for the service: an EnvironmentFile readable only by root), or name a file with \
             `credentials_file` under [store]"
                .into(),
        ),
    }
}

fn from_file(path: &Path) -> Result<Credentials, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read the credentials file {}: {e}; create it (`[default]`, `aws_access_key_id = …`, \
             `aws_secret_access_key = …`) with mode 0600",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "the credentials file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
    parse(&text).ok_or_else(|| {
        format!(
            "the credentials file {} has no aws_access_key_id and aws_secret_access_key under [default]",
            path.display()
        )
    })
}

/// The `[default]` profile (or the keys before any section) of an AWS shared-credentials file.
fn parse(text: &str) -> Option<Credentials> {
    let (mut section, mut id, mut secret, mut token) = (String::from("default"), None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if section != "default" {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    Some(Credentials {
        key_id: id?,
        secret: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_profile_and_refuses_a_readable_file() {
        let c = parse("[other]\naws_access_key_id = X\n[default]\naws_access_key_id = GK1\naws_secret_access_key = s3cr3t\n")
            .unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str()), ("GK1", "s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(parse("[other]\naws_access_key_id = X\n").is_none());
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("creds");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id=a\naws_secret_access_key=b\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(Some(&f)).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(Some(&f)).unwrap().key_id, "a");
    }
}
