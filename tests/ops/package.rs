//! The Debian package: built with cargo-deb (`[package.metadata.deb]`),
//! unpacked into a scratch root with `dpkg -x`, and checked file by file:
//! the binary, the unit, sysusers.d and tmpfiles.d entries, the conffile,
//! the man page, completions and the Prometheus rules.
//!
//! CI (`.ci/run`) builds the release package first and points `$REKEY_DEB`
//! at it; otherwise the test packages the test build itself (`cargo deb
//! --no-build --profile dev`), and skips with the install hint when
//! cargo-deb is missing (failing in CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{in_ci, rekey_bin, require_tool};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Run `cmd`, insisting on success; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package to check: `$REKEY_DEB`, else one built from the test binary.
fn package(scratch: &Path) -> Option<PathBuf> {
    if let Some(deb) = std::env::var_os("REKEY_DEB") {
        return Some(PathBuf::from(deb));
    }
    require_tool(
        "cargo-deb",
        "cargo install cargo-deb --version 3.8.0 --locked",
    )?;
    // The generated assets the manifest names (.ci/run makes them from the
    // release binary the same way).
    let assets = Path::new(MANIFEST_DIR).join("target/assets");
    std::fs::create_dir_all(&assets).unwrap();
    for (args, file) in [
        (&["man"][..], "rekey.1"),
        (&["completions", "bash"][..], "rekey.bash"),
        (&["completions", "zsh"][..], "_rekey"),
        (&["completions", "fish"][..], "rekey.fish"),
    ] {
        let text = run(Command::new(rekey_bin()).args(args));
        std::fs::write(assets.join(file), text).unwrap();
    }
    let deb = scratch.join("rekey.deb");
    run(Command::new("cargo")
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(&deb)
        .current_dir(MANIFEST_DIR));
    Some(deb)
}

/// Does the ELF64 little-endian image `elf` have a section of type
/// `SHT_SYMTAB` (a symbol table `strip` removes)? Panics on anything but
/// an ELF64 LE file.
fn has_symbol_table(elf: &[u8]) -> bool {
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1,
        "not an ELF64 little-endian file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
    let (shentsize, shnum) = (u16_at(0x3A), u16_at(0x3C));
    const SHT_SYMTAB: u32 = 2;
    (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == SHT_SYMTAB)
}

#[test]
fn elf_symbol_tables_are_found_in_unstripped_binaries_only() {
    // The test binary itself has one (debug builds keep symbols); the
    // same bytes with the section's type zeroed have none.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(has_symbol_table(&exe));
    let mut stripped = exe.clone();
    let shoff = u64::from_le_bytes(exe[0x28..0x30].try_into().unwrap()) as usize;
    let shentsize = u16::from_le_bytes([exe[0x3A], exe[0x3B]]) as usize;
    let shnum = u16::from_le_bytes([exe[0x3C], exe[0x3D]]) as usize;
    for i in 0..shnum {
        let o = shoff + i * shentsize + 4;
        if u32::from_le_bytes(exe[o..o + 4].try_into().unwrap()) == 2 {
            stripped[o..o + 4].copy_from_slice(&0u32.to_le_bytes());
        }
    }
    assert!(!has_symbol_table(&stripped));
}

#[test]
fn the_debian_package_installs_the_binary_unit_users_conffile_man_page_and_completions() {
    if require_tool("dpkg-deb", "unpacks the Debian package").is_none() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let Some(deb) = package(scratch.path()) else {
        assert!(!in_ci(), "CI must build and check the package");
        return;
    };
    let root = scratch.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));

    for file in [
        "usr/bin/rekey",
        "usr/lib/systemd/system/rekey.service",
        "usr/lib/sysusers.d/rekey.conf",
        "usr/lib/tmpfiles.d/rekey.conf",
        "etc/rekey/rekey.toml",
        "usr/share/man/man1/rekey.1.gz",
        "usr/share/bash-completion/completions/rekey",
        "usr/share/zsh/vendor-completions/_rekey",
        "usr/share/fish/vendor_completions.d/rekey.fish",
        "usr/share/rekey/prometheus/rekey-rules.yml",
        "usr/share/doc/rekey/examples/rekey.example.toml",
        "usr/share/doc/rekey/examples/file-sink/rekey.service.d/myapp-keys.conf",
        "usr/share/doc/rekey/examples/file-sink/myapp-keys.path",
        "usr/share/doc/rekey/README.md",
    ] {
        let p = root.join(file);
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|_| panic!("the package lacks /{file}"))
            .len();
        assert!(len > 0, "/{file} is empty");
    }
    // Shipped as in the repository.
    for (installed, source) in [
        (
            "usr/lib/systemd/system/rekey.service",
            "systemd/rekey.service",
        ),
        (
            "usr/lib/sysusers.d/rekey.conf",
            "packaging/sysusers.d/rekey.conf",
        ),
        (
            "usr/lib/tmpfiles.d/rekey.conf",
            "packaging/tmpfiles.d/rekey.conf",
        ),
        ("etc/rekey/rekey.toml", "config/rekey.toml"),
        (
            "usr/share/rekey/prometheus/rekey-rules.yml",
            "contrib/prometheus/rekey-rules.yml",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.join(installed)).unwrap(),
            std::fs::read(Path::new(MANIFEST_DIR).join(source)).unwrap(),
            "/{installed} differs from {source}"
        );
    }

    // The binary runs, and the shipped config passes its own check while
    // rotating nothing.
    let bin = root.join("usr/bin/rekey");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bin).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    // target/release/rekey keeps its symbol table (the release profile's
    // `strip = "debuginfo"`: benches/order-symbols.sh reads the names the
    // linker orders from it); cargo-deb strips the copy it packs.
    assert!(
        !has_symbol_table(&std::fs::read(&bin).unwrap()),
        "the packaged binary is not stripped (cargo-deb should strip it)"
    );
    // A release package (CI's, `$REKEY_DEB`) has its relative relocations
    // packed (build.rs: `-z pack-relative-relocs`, DT_RELR), and so depends
    // on a glibc that reads them (2.36: Cargo.toml names it, as
    // dpkg-shlibdeps sees only symbol versions); the test build's binary is
    // not packed.
    if std::env::var_os("REKEY_DEB").is_some()
        && require_tool("readelf", "reads the dynamic section").is_some()
    {
        let dynamic = run(Command::new("readelf").arg("-d").arg(&bin));
        assert!(
            dynamic.contains("(RELR)"),
            "the release binary's relative relocations are not packed:\n{dynamic}"
        );
        let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
        assert!(
            depends.contains("libc6 (>= 2.36)"),
            "a binary with DT_RELR needs glibc 2.36: {depends}"
        );
    }
    // The config names credentials: not for every local user (postinst
    // gives it to group rekey).
    let conf_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("etc/rekey/rekey.toml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(conf_mode & 0o777, 0o640);
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("rekey {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(&bin)
        .args(["check", "--no-secrets", "-c"])
        .arg(root.join("etc/rekey/rekey.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the shipped config fails its check:\n{stderr}"
    );
    assert!(
        stderr.contains("no [[policy]] sections: rekey has nothing to do"),
        "the shipped config rotates nothing until edited:\n{stderr}"
    );

    // Package metadata: the config is a conffile, the maintainer scripts
    // create the users and directories, systemd is a dependency.
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/rekey/rekey.toml");
    let postinst = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(
        postinst.contains("systemd-sysusers rekey.conf"),
        "{postinst}"
    );
    assert!(
        postinst.contains("chgrp rekey /etc/rekey/rekey.toml"),
        "{postinst}"
    );
    assert!(
        postinst.contains("systemd-tmpfiles --create rekey.conf"),
        "{postinst}"
    );
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    assert!(depends.contains("systemd"), "{depends}");
    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        // Valid shell, and never silent about a failing step.
        run(Command::new("sh").arg("-n").arg(control.join(script)));
        let text = std::fs::read_to_string(control.join(script)).unwrap();
        assert!(text.contains("set -e"), "{script}:\n{text}");
    }

    // The man page and completions come from the CLI definition.
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/rekey.1.gz")));
    for section in [
        ".TH rekey 1",
        "REKEY CHECK",
        "\\-\\-no\\-secrets",
        "REKEY_CONFIG",
    ] {
        assert!(man.contains(section), "man page lacks {section:?}");
    }
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/rekey")).unwrap();
    assert!(bash.contains("--credentials-dir") && bash.contains("completions"));
}
