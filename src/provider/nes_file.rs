//! The Huawei NES credential file: what `POST …/node-provider/credentials`
//! answers (PROTOCOLS §3, corrected 2026-11-30; seed
//! `huawei-bcs-create-credentials.txt`, whose example body is `PKXXX`).
//!
//! The body is bytes. When it starts with the ZIP local-file signature
//! `PK\x03\x04` it is read as a ZIP archive (with the `zip` crate) and its
//! `credential.csv` (any directory, name compared case-insensitively) is the
//! credential. Its columns are undocumented, so:
//!
//! - `credential`: the whole CSV text, byte for byte (the primary field,
//!   what a `raw` file sink writes);
//! - `credential_zip`: the archive's bytes, exactly as received;
//! - `csv_<column>`: when the CSV has a header row and one data row, each
//!   cell under its column name (lowercased, anything but `[a-z0-9]`
//!   turned into `_`). A row counts as a header only when every cell reads
//!   like a name (letters, spaces, `_-.`, no digits): field names are not
//!   secret, so key material must never become one.
//!
//! A CSV that is not UTF-8 is still `credential`, as bytes (carried base64
//! in `env`/`json`), without `csv_<column>` fields. An archive holding more
//! than one `credential.csv` is not guessed at: it is unreadable (sealed,
//! the rotation fails). Entry names are matched by their last component
//! after `/` or `\`; nothing is extracted, so `..` in a name is harmless.
//!
//! Anything else (the old text answer) is kept whole as `credential`.
//!
//! Hostile archives are bounded: at most [`MAX_ENTRIES`] entries, the CSV
//! at most [`MAX_CSV`] bytes uncompressed (read through a limit, never
//! trusting the declared size), nothing written to disk. A body that cannot
//! be read still yields its bytes (as `credential_zip`) and a message, so
//! the engine can seal the key before failing (see `NewKey::unreadable`).

use std::io::Read;

use crate::secret::{Secret, SecretFields};

/// ZIP local file header signature.
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Most entries an archive may list.
pub const MAX_ENTRIES: usize = 64;
/// Largest `credential.csv`, uncompressed.
pub const MAX_CSV: u64 = 64 * 1024;
/// Name of the credential inside the archive.
pub const CSV_NAME: &str = "credential.csv";

/// The secret fields of a credential file, and a message when it could not
/// be read completely (the fields then hold at least the raw bytes).
pub fn parse(body: &[u8]) -> (SecretFields, Option<String>) {
    let mut fields = SecretFields::new();
    if !body.starts_with(ZIP_MAGIC) {
        match std::str::from_utf8(body) {
            Ok(text) if !text.trim().is_empty() => {
                fields.insert("credential", Secret::new(text));
                return (fields, None);
            }
            Ok(_) => return (fields, Some("the credential file is empty".into())),
            Err(_) => {
                fields.insert("credential_zip", Secret::from_bytes(body.to_vec()));
                return (
                    fields,
                    Some("the credential file is neither a ZIP archive nor text".into()),
                );
            }
        }
    }
    fields.insert("credential_zip", Secret::from_bytes(body.to_vec()));
    match read_csv(body) {
        Ok(csv) => {
            let text = match String::from_utf8(csv.to_vec()) {
                Ok(t) => t,
                Err(_) => {
                    // Not UTF-8 (a header in GBK, say): still the key, byte
                    // for byte; no columns, since the text cannot be read.
                    fields.insert("credential", Secret::from_bytes(csv.to_vec()));
                    return (fields, None);
                }
            };
            for (name, value) in columns(&text) {
                fields.insert(&name, Secret::new(value));
            }
            fields.insert("credential", Secret::new(text));
            (fields, None)
        }
        Err(m) => (fields, Some(m)),
    }
}

fn read_csv(body: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body))
        .map_err(|e| format!("the credential archive cannot be read ({e})"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!(
            "the credential archive lists {} entries (at most {MAX_ENTRIES} are read)",
            archive.len()
        ));
    }
    // By base name, whatever the directories (`/` or, as archivers on
    // Windows write, `\\`): nothing is extracted, so `..` is harmless.
    let found: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive
                .name_for_index(i)
                .and_then(|r| r.ok())
                .is_some_and(|n| {
                    n.rsplit(['/', '\\'])
                        .next()
                        .is_some_and(|base| base.eq_ignore_ascii_case(CSV_NAME))
                })
        })
        .collect();
    // Two candidates: publishing the wrong one would break every consumer,
    // so the rotation fails (the archive is sealed) instead of guessing.
    let index = match found[..] {
        [i] => i,
        [] => return Err(format!("the credential archive holds no {CSV_NAME}")),
        _ => {
            return Err(format!(
                "the credential archive holds {} entries named {CSV_NAME}; which is the key is not known",
                found.len()
            ));
        }
    };
    let entry = archive
        .by_index(index)
        .map_err(|e| format!("{CSV_NAME} cannot be read ({e})"))?;
    let mut out = zeroize::Zeroizing::new(Vec::new());
    entry
        .take(MAX_CSV + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{CSV_NAME} cannot be read ({e})"))?;
    if out.len() as u64 > MAX_CSV {
        return Err(format!("{CSV_NAME} is larger than {MAX_CSV} bytes"));
    }
    Ok(out)
}

/// `csv_<column>` fields when the text is a header row plus one data row
/// of as many cells (RFC 4180 quoting); none otherwise.
fn columns(text: &str) -> Vec<(String, String)> {
    let rows = csv_rows(text.trim_start_matches('\u{feff}'));
    let rows: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r.iter().any(|c| !c.is_empty()))
        .collect();
    let [header, data] = rows.as_slice() else {
        return Vec::new();
    };
    // Field names are not secret (they show in logs and files), so a row is
    // taken for a header only if every cell reads like a name: 2–40
    // letters, spaces, `_`, `-` or `.`, starting with a letter, no digits
    // (a row of key material almost always has some).
    let header_like = header.iter().all(|h| {
        let h = h.trim();
        (2..=40).contains(&h.chars().count())
            && h.starts_with(|c: char| c.is_alphabetic())
            && h.chars().all(|c| c.is_alphabetic() || " _-.".contains(c))
    });
    if !header_like || header.len() != data.len() {
        return Vec::new();
    }
    header
        .iter()
        .zip(data.iter())
        .map(|(h, v)| {
            let name: String = h
                .trim()
                .to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            (format!("csv_{name}"), v.clone())
        })
        .collect()
}

/// Rows of cells; quotes per RFC 4180 (`""` inside quotes is a quote).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::zip::archive as zip_with;

    #[test]
    fn a_zip_answer_yields_the_csv_text_its_columns_and_the_archive() {
        let csv = "Access Key Id,api_key\r\nc-1,\"s3,cr\"\"t\"\r\n";
        let zip = zip_with("credential.csv", csv.as_bytes());
        let (f, problem) = parse(&zip);
        assert_eq!(problem, None);
        assert_eq!(f.get("credential").unwrap().expose(), csv);
        assert_eq!(f.get("credential_zip").unwrap().expose_bytes(), &zip[..]);
        assert_eq!(f.get("csv_access_key_id").unwrap().expose(), "c-1");
        assert_eq!(f.get("csv_api_key").unwrap().expose(), "s3,cr\"t");
        assert_eq!(f.primary().unwrap().0, "credential");
    }

    #[test]
    fn key_material_never_becomes_a_field_name() {
        // Two rows of data, no header: no csv_* fields at all.
        let zip = zip_with("credential.csv", b"AK9f3k2,SKx81mq0\nAK2,SK3\n");
        let (f, problem) = parse(&zip);
        assert_eq!(problem, None);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(!format!("{f:?}").contains("AK9f3k2"));
    }

    #[test]
    fn a_csv_without_a_header_row_is_kept_whole() {
        let zip = zip_with("dir/CREDENTIAL.CSV", b"0123456789abcdef\n");
        let (f, problem) = parse(&zip);
        assert_eq!(problem, None);
        assert_eq!(f.get("credential").unwrap().expose(), "0123456789abcdef\n");
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn the_old_text_answer_keeps_todays_behaviour() {
        let (f, problem) = parse(b"PKabcdef0123");
        assert_eq!(problem, None);
        assert_eq!(f.get("credential").unwrap().expose(), "PKabcdef0123");
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn an_unreadable_answer_keeps_its_bytes_and_says_why() {
        let zip = zip_with("other.txt", b"x");
        let (f, problem) = parse(&zip);
        assert!(problem.unwrap().contains("no credential.csv"));
        assert_eq!(f.get("credential_zip").unwrap().expose_bytes(), &zip[..]);
        let (f, problem) = parse(b"PK\x03\x04garbage");
        assert!(problem.is_some());
        assert_eq!(
            f.get("credential_zip").unwrap().expose_bytes(),
            b"PK\x03\x04garbage"
        );
    }

    /// An archive of several `(name, content)` entries, deflated.
    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(content).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_csv_that_is_not_utf8_is_the_credential_as_bytes_not_a_failed_rotation() {
        // A console in Chinese may write its header in GBK ("用户名" is
        // D3 C3 BB A7 C3 FB): the key is still the CSV, byte for byte.
        let csv: &[u8] = b"\xd3\xc3\xbb\xa7\xc3\xfb,api_key\r\nc-1,s3cr3t\xff\r\n";
        let zip = zip_with("credential.csv", csv);
        let (f, problem) = parse(&zip);
        assert_eq!(problem, None);
        assert_eq!(f.get("credential").unwrap().expose_bytes(), csv);
        assert_eq!(f.primary().unwrap().0, "credential");
        assert_eq!(f.len(), 2, "no csv_* fields from undecoded text");
    }

    #[test]
    fn an_archive_with_two_credential_csvs_is_not_guessed_at() {
        let zip = zip_of(&[
            ("a/credential.csv", b"id,api_key\nc-1,first\n"),
            ("credential.csv", b"id,api_key\nc-2,second\n"),
        ]);
        let (f, problem) = parse(&zip);
        assert!(problem.unwrap().contains("2 entries named credential.csv"));
        assert!(f.get("credential").is_none());
        assert_eq!(f.get("credential_zip").unwrap().expose_bytes(), &zip[..]);
    }

    #[test]
    fn credential_csv_is_found_under_backslash_and_traversal_names_without_touching_disk() {
        for name in [
            "..\\credential.csv",
            "../credential.csv",
            "x\\y\\credential.csv",
        ] {
            let zip = zip_of(&[("readme.txt", b"hi"), (name, b"k\n")]);
            let (f, problem) = parse(&zip);
            assert_eq!(problem, None, "{name}");
            assert_eq!(f.get("credential").unwrap().expose(), "k\n", "{name}");
        }
        // A name that merely ends like it is not it.
        let zip = zip_of(&[("old-credential.csv", b"k\n")]);
        assert!(parse(&zip).1.unwrap().contains("no credential.csv"));
    }

    #[test]
    fn too_many_entries_are_refused_and_the_bytes_kept() {
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("f{i}")).collect();
        let mut entries: Vec<(&str, &[u8])> =
            names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        entries.push(("credential.csv", b"k\n"));
        let zip = zip_of(&entries);
        let (f, problem) = parse(&zip);
        assert!(problem.unwrap().contains("entries"));
        assert_eq!(f.get("credential_zip").unwrap().expose_bytes(), &zip[..]);
    }

    #[test]
    fn a_zip_bomb_is_refused_without_inflating_it() {
        let big = vec![b'a'; (MAX_CSV as usize) * 16];
        let zip = zip_with("credential.csv", &big);
        assert!(zip.len() < big.len() / 10, "deflate should shrink it");
        let (f, problem) = parse(&zip);
        assert!(problem.unwrap().contains("larger than"));
        assert!(f.get("credential").is_none());
    }
}
