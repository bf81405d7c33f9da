//! Parsing of `/proc/self/mountinfo` (proc(5)), I/O-free.
//!
//! Each line: `id parent major:minor root mount_point mount_options [optional fields...] - fstype source super_options`.
//! Paths are octal-escaped by the kernel (`\040` space, `\011` tab, `\012` newline, `\134` backslash).

use std::path::{Path, PathBuf};

/// One mount from mountinfo (only the fields the driver uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Path inside the source filesystem that is mounted (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options (field 6), e.g. `ro`, `nosuid`.
    pub options: Vec<String>,
    /// Filesystem type (after the ` - ` separator).
    pub fs_type: String,
}

impl MountEntry {
    /// True when the per-mount options include `ro`.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Errors parsing mountinfo.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountInfoError {
    /// A line does not have the fields proc(5) describes.
    #[error("malformed mountinfo line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is missing.
        reason: &'static str,
    },
}

/// Decodes the kernel's octal escapes (`\NNN`) in a mountinfo path field.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v =
                    u32::from(digits[0] - b'0') * 64 + u32::from(digits[1] - b'0') * 8 + u32::from(digits[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the whole mountinfo text.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, MountInfoError> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 6 {
            return Err(MountInfoError::Malformed {
                line: line_no,
                reason: "fewer than 6 fields before the separator",
            });
        }
        let sep = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .ok_or(MountInfoError::Malformed { line: line_no, reason: "no ' - ' separator" })?;
        let fs_type = fields
            .get(sep + 1)
            .ok_or(MountInfoError::Malformed { line: line_no, reason: "no filesystem type after the separator" })?;
        out.push(MountEntry {
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            options: fields[5].split(',').map(str::to_owned).collect(),
            fs_type: (*fs_type).to_owned(),
        });
    }
    Ok(out)
}

/// The mounts whose mount point is exactly `target`, in mount order (the last one is the visible one).
pub fn mounts_at<'a>(entries: &'a [MountEntry], target: &Path) -> Vec<&'a MountEntry> {
    entries.iter().filter(|e| e.mount_point == target).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 8:1 /run/spire/sockets /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/spiffe/mount ro,relatime shared:1 - ext4 /dev/sda1 rw
37 22 0:5 / /mnt/with\\040space rw master:3 - tmpfs tmpfs rw
38 36 8:1 /run/spire/sockets /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/spiffe/mount rw - ext4 /dev/sda1 rw
39 22 0:6 / /no/optional rw - proc proc rw
";

    #[test]
    fn parses_fields_escapes_and_optional_fields() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].mount_point, PathBuf::from("/"));
        assert_eq!(e[0].fs_type, "ext4");
        assert_eq!(e[1].root, PathBuf::from("/run/spire/sockets"));
        assert!(e[1].read_only());
        assert_eq!(e[2].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(e[2].fs_type, "tmpfs");
        assert!(!e[2].read_only());
        assert_eq!(e[4].fs_type, "proc");
    }

    #[test]
    fn mounts_at_finds_stacked_mounts_in_order() {
        let e = parse(SAMPLE).unwrap();
        let t = Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/spiffe/mount");
        let m = mounts_at(&e, t);
        assert_eq!(m.len(), 2);
        assert!(m[0].read_only());
        assert!(!m[1].read_only());
        assert!(mounts_at(&e, Path::new("/var/lib/kubelet/pods/u1")).is_empty());
        assert!(mounts_at(&e, Path::new("/mnt/with\\040space")).is_empty());
    }

    #[test]
    fn unescape_table() {
        for (input, want) in [
            ("plain", "plain"),
            ("a\\040b", "a b"),
            ("tab\\011x", "tab\tx"),
            ("nl\\012", "nl\n"),
            ("back\\134slash", "back\\slash"),
            ("short\\04", "short\\04"),
            ("notoct\\089", "notoct\\089"),
            ("\\", "\\"),
        ] {
            assert_eq!(unescape(input), want, "{input}");
        }
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for (text, line) in [
            ("1 2 3", 1),
            ("22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw", 1),
            ("22 1 8:1 / / rw - ext4 x rw\n22 1 8:1 / / rw -", 2),
        ] {
            assert!(matches!(parse(text), Err(MountInfoError::Malformed { line: l, .. }) if l == line), "{text}");
        }
        assert_eq!(parse("").unwrap(), vec![]);
    }
}
