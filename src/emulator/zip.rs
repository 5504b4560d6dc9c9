//! ZIP archives as the Huawei NES console hands out credentials (one
//! deflated `credential.csv`), built in memory for the emulator's create
//! answer and for tests of hostile archives.

use std::io::Write;

/// A ZIP archive holding one file `name` with `content`, deflated.
pub fn archive(name: &str, content: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    // Writing to a Vec cannot fail but for a bug: say which.
    w.start_file(name, opts)
        .expect("an in-memory ZIP entry starts");
    w.write_all(content)
        .expect("an in-memory ZIP entry takes bytes");
    w.finish().expect("an in-memory ZIP finishes").into_inner()
}
