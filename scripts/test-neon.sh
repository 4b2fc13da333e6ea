#!/usr/bin/env bash
# Cross-compile the NEON GEMM kernels (src/model/gemm/neon.rs) for aarch64 and run their tests
# under qemu-user: the harness crate scripts/neon/ includes the kernel file as it stands and
# checks it against an f64 reference at odd sizes. Needs rustup's aarch64 target, Debian's
# qemu-user-static and gcc-aarch64-linux-gnu (installed here when run as root).
#   scripts/test-neon.sh            # kernel tests under qemu
#   CHECK_ENGRAM=1 scripts/test-neon.sh   # also `cargo check` all of engram for aarch64
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
# What cannot be installed skips the test (ENGRAM_REQUIRE_NEON=1 makes that a failure).
skip() {
    echo "test-neon: SKIPPED ($1)"
    [ "${ENGRAM_REQUIRE_NEON:-0}" = 1 ] && exit 1
    exit 0
}
if ((${#need[@]})); then
    [ "$(id -u)" = 0 ] || skip "needs ${need[*]}; run as root to install them"
    apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y "${need[@]}" >/dev/null 2>&1; } ||
        skip "apt-get could not install ${need[*]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" ||
    skip "rustup could not add the $target standard library"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
t0=$(date +%s)
CARGO_TARGET_DIR=target/neon cargo test --manifest-path scripts/neon/Cargo.toml --target "$target"
echo "test-neon: NEON kernel tests passed under qemu in $(($(date +%s) - t0)) s"
if [ "${CHECK_ENGRAM:-0}" = 1 ]; then
    CARGO_TARGET_DIR=target/neon cargo check --lib --target "$target"
    echo "test-neon: engram checks for $target"
fi
