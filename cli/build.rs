//! Links the `shoal` binary at a fixed address (not position-independent) on Linux/glibc.
//!
//! A CLI command is a short process, and most of its start-up was the dynamic loader
//! applying the binary's 71,000 relative relocations: each page of `.data.rel.ro` they touch
//! is copied on first write, about 280 page faults before `main` (471 in all against 191
//! without them), 1.4 ms of a 4.3 ms `shoal --version` on a busy 2-core machine. Packed
//! relocations (`-z pack-relative-relocs`) shrink the table but not the page faults; a
//! fixed-address executable has none to apply. The price is that the binary's own image is
//! not randomised (its heap, stack, libraries and JIT code still are), as with Go's default
//! executables. The daemons that run guests in production, `shoal-orchestrator` and
//! `shoal-executor`, stay position-independent (SECURITY.md).

fn main() {
    // Linux with glibc, linked through the C compiler (which takes -no-pie); a musl or
    // static build keeps the default.
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux"
        && target("CARGO_CFG_TARGET_ENV") == "gnu"
        && !target("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static")
    {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
