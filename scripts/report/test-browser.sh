#!/usr/bin/env bash
# The report page in a real browser:
#
#     scripts/report/test-browser.sh [RUN_DIR]
#
# Without RUN_DIR it runs the tiny-fixture suite tests/fixtures/suites/cluster.toml (seconds)
# into a temporary directory and tests that report; with RUN_DIR (e.g. a finished
# `engram batch probes/smoke.toml --out runs/smoke`, or a single probe run) it tests that one.
# Opens RUN_DIR/index.html and every step's report page from file:// in Debian's headless
# chromium, driven by playwright-core (scripts/report/package.json + package-lock.json,
# installed with `npm ci` into ~/.cache/engram/browser-test, outside the repository): clicks a
# head, checks the weights the viewer shows against patterns.safetensors, checks every link and
# image resolves, that the console has no errors and nothing but file:// is requested; saves
# screenshots and browser-test.json (page weight, load time) under RUN_DIR/browser-test/. Every
# dashboard.html below RUN_DIR (`engram sae dashboard --out RUN_DIR`) is opened too: searching a
# latent index must show that latent's contexts as embedded.
#
# Needs chromium and node (installs Debian's chromium with apt-get when root and missing;
# otherwise prints SKIPPED and exits 0, or 1 with ENGRAM_REQUIRE_BROWSER=1). ENGRAM is the binary
# (default: the newer of target/release/engram and target/debug/engram).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
t_start=$(date +%s)
say() { echo "[$(($(date +%s) - t_start))s] test-browser.sh: $*"; }
skip() {
    echo "test-browser.sh: SKIPPED: $*" >&2
    [ "${ENGRAM_REQUIRE_BROWSER:-0}" = 1 ] && exit 1
    exit 0
}
chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    [ "$(id -u)" = 0 ] || skip "no chromium at $chromium and installing it needs root"
    say "installing Debian's chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; } ||
        skip "apt-get install chromium failed"
fi
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
    [ "$(id -u)" = 0 ] || skip "needs node and npm (installing Debian's needs root)"
    say "installing Debian's nodejs and npm"
    pkgs=npm
    command -v node > /dev/null || pkgs="nodejs npm"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs > /dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs > /dev/null; } ||
        skip "apt-get install $pkgs failed"
fi
"$chromium" --headless --no-sandbox --disable-gpu --dump-dom about:blank > /dev/null 2>&1 ||
    skip "$chromium does not start headless"

# playwright-core, from the lockfile, cached by the lockfile's hash.
lock_hash=$(cat scripts/report/package.json scripts/report/package-lock.json | sha256sum | cut -c1-16)
deps=${ENGRAM_BROWSER_TEST_CACHE:-$HOME/.cache/engram/browser-test}/$lock_hash
if [ ! -d "$deps/node_modules/playwright-core" ]; then
    say "npm ci (playwright-core) into $deps"
    mkdir -p "$deps"
    cp scripts/report/package.json scripts/report/package-lock.json "$deps/"
    (cd "$deps" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error > /dev/null)
fi
cp scripts/report/browser-test.mjs "$deps/"

if [ $# -ge 1 ]; then
    run=$(cd "$1" && pwd)
else
    if [ -z "${ENGRAM:-}" ]; then
        ENGRAM=$repo/target/debug/engram
        if [ -x target/release/engram ] && { [ ! -x "$ENGRAM" ] || [ target/release/engram -nt "$ENGRAM" ]; }; then
            ENGRAM=$repo/target/release/engram
        fi
    fi
    [ -x "$ENGRAM" ] || { echo "test-browser.sh: no engram binary at $ENGRAM (cargo build --release)" >&2; exit 1; }
    work=$(mktemp -d /tmp/engram-browser.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    run=$work/run
    say "engram batch tests/fixtures/suites/cluster.toml"
    "$ENGRAM" --quiet batch tests/fixtures/suites/cluster.toml --out "$run" > "$work/batch.log" 2>&1 ||
        { cat "$work/batch.log" >&2; echo "test-browser.sh: FAILED: the suite run failed" >&2; exit 1; }
fi
say "testing $run/index.html in $("$chromium" --version 2>/dev/null | head -1)"
out=$run/browser-test
CHROMIUM=$chromium node "$deps/browser-test.mjs" "$run" "$out" || { echo "test-browser.sh: FAILED" >&2; exit 1; }
if [ $# -eq 0 ]; then
    # The temporary run is removed: keep the screenshots and numbers.
    keep=${ENGRAM_BROWSER_TEST_OUT:-/tmp/engram-browser-test}
    mkdir -p "$keep" && cp -r "$out/." "$keep/"
    out=$keep
fi
say "OK (screenshots and browser-test.json in $out)"
