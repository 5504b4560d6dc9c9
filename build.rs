//! Build script: release-only link arguments for the `rekey` binary.
//!
//! Issue 13 (idle RSS): the kernel maps 64 KiB of page cache around every
//! text page fault ("fault-around", not narrowed by `MADV_RANDOM`), so the
//! ~3.5 MB of code the daemon runs, spread over ~11 MB of `.text`, made
//! ~10 MB of it resident. `packaging/hot-symbols.txt` lists the functions
//! that run (start-up, checks, the status endpoint, rotations; produced by
//! `benches/order-symbols.sh` with callgrind from the release binary) and the
//! linker lays them out first and together
//! (`-Wl,--symbol-ordering-file`), so fault-around stops pulling in cold
//! code. `benches/RESULTS.md` has the figures and how to regenerate.
//!
//! Only for profiles that inherit `release` (`PROFILE == "release"`: the
//! `release`, `bench` and `bench-fast` builds) and only when the linker is
//! LLD, which is what the file's option belongs to: Rust's default on
//! `x86_64-unknown-linux-gnu` since 1.90 (`cc -fuse-ld=lld` with rust-lld;
//! CI uses that default). GNU ld rejects the option, so the arguments are
//! left out when the target is another one, when the rustflags pick another
//! linker (`-fuse-ld=` other than lld, `-Clinker-flavor`, LLD switched off in
//! `linker-features`/`link-self-contained`), or when
//! `REKEY_NO_SYMBOL_ORDERING` is set. Then the build still works; it is only
//! laid out as before.
//!
//! Names in the file are exact mangled symbols (legacy mangling carries a
//! hash of the crate's `-C metadata`, which depends on the profile, the
//! `strip` setting included). That is why the release profile keeps its
//! symbol table (`strip = "debuginfo"`; `.symtab` is not loaded, so RSS is
//! unchanged) and the profile run uses `target/release/rekey` itself; the
//! Debian package is stripped by cargo-deb. Names the linker does not find
//! (a stale file after a dependency bump or a rename) are skipped silently
//! (`--no-warn-symbol-ordering`): a stale file costs layout, never a build.
//! `benches/order-symbols.sh --check` counts them.
//!
//! Relative relocations packed (`-Wl,-z,pack-relative-relocs`, the
//! `DT_RELR` format of the gABI, in glibc since 2.36 and LLD since 15):
//! a position-independent binary carries one relocation per absolute
//! address in its data (vtables, string tables: ~19,700 `R_X86_64_RELATIVE`
//! entries here, 24 bytes each, a 470 kB `.rela.dyn`), and the dynamic
//! loader reads every one of them at start, so all of it stayed resident
//! for the life of the daemon. Packed, they are a bitmap of a few kB. The
//! binary then needs glibc ≥ 2.36 (Debian 12; the package's `$auto`
//! dependency records it through the `GLIBC_ABI_DT_RELR` version). Same
//! conditions as the symbol order, and only when the glibc linked against
//! defines that version (with an older one the option is left out, and the
//! binary keeps plain relocations); `REKEY_NO_PACKED_RELOCS` leaves it out
//! too (a binary for an older glibc than the build host's).

use std::env;
use std::path::PathBuf;

/// The ordering file, relative to the package root.
const ORDER_FILE: &str = "packaging/hot-symbols.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=REKEY_NO_SYMBOL_ORDERING");
    println!("cargo:rerun-if-env-changed=REKEY_WARN_SYMBOL_ORDERING");
    println!("cargo:rerun-if-env-changed=REKEY_NO_PACKED_RELOCS");
    println!("cargo:rerun-if-env-changed=CC");

    let release = env::var("PROFILE").as_deref() == Ok("release");
    if !release || !linker_is_lld() {
        return;
    }
    if env::var_os("REKEY_NO_PACKED_RELOCS").is_none() && libc_reads_packed_relocs() {
        println!("cargo:rustc-link-arg-bin=rekey=-Wl,-z,pack-relative-relocs");
    }
    if env::var_os("REKEY_NO_SYMBOL_ORDERING").is_some() {
        return;
    }
    let root =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let order = root.join(ORDER_FILE);
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=rekey=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // REKEY_WARN_SYMBOL_ORDERING=1 has LLD name every listed symbol it
    // cannot place (shown with `cargo rustc --release --bin rekey -- -W
    // linker-messages`; benches/order-symbols.sh --link-check counts them).
    let warn = env::var_os("REKEY_WARN_SYMBOL_ORDERING").is_some();
    println!(
        "cargo:rustc-link-arg-bin=rekey=-Wl,--{}warn-symbol-ordering",
        if warn { "" } else { "no-" }
    );
}

/// Does rustc link this target with LLD? True for `x86_64-unknown-linux-gnu`
/// with Rust's default linker set-up (rust-lld through `cc -fuse-ld=lld`),
/// unless the rustflags cargo passes pick another linker.
fn linker_is_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    // A linker program configured for the target (`linker = ...` in
    // `.cargo/config.toml` or `CARGO_TARGET_<triple>_LINKER`, which cargo
    // resolves into `RUSTC_LINKER`): its flavour is unknown here.
    if env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    !flags.split('\x1f').any(|f| {
        (f.contains("-fuse-ld=") && !f.contains("-fuse-ld=lld"))
            || f.contains("linker-flavor")
            || f.contains("linker-features=-lld")
            || f.contains("link-self-contained=-linker")
            || f.trim_start_matches("-C").starts_with("linker=")
    })
}

/// Does the C library this build links against read packed relative
/// relocations? glibc defines the symbol version `GLIBC_ABI_DT_RELR` from
/// 2.36 on (a binary that needs it refuses to start on an older glibc
/// rather than run unrelocated). The library is the one `cc` links
/// (`cc -print-file-name=libc.so.6`, `$CC` when set); anything unexpected
/// answers no.
fn libc_reads_packed_relocs() -> bool {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = std::process::Command::new(cc)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    const VERSION: &[u8] = b"GLIBC_ABI_DT_RELR";
    std::fs::read(path).is_ok_and(|lib| lib.windows(VERSION.len()).any(|w| w == VERSION))
}
