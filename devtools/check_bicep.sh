#!/usr/bin/env bash
# Scan infra/ with checkov's Bicep rules, offline (no Bicep CLI, no checkov policy download).
#
# checkov pins old packages (notably pycep-parser 0.5.1, while tests/infra uses 0.7.1), so it lives in its own
# virtual environment, .venv-checkov, created on first use from PyPI. Exit status: 0 when no check fails
# (suppressed checks carry an inline `// checkov:skip=CKV_...:reason` in the template), non-zero otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECKOV_VENV:-$ROOT/.venv-checkov}"
CHECKOV_VERSION="3.3.30"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo "check_bicep: creating $VENV with checkov==$CHECKOV_VERSION" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
      >"$VENV/pip-install.log" 2>&1; then
    cat "$VENV/pip-install.log" >&2
    echo "check_bicep: could not install checkov==$CHECKOV_VERSION (needs PyPI)" >&2
    exit 2
  fi
fi

cd "$ROOT"
# --skip-download: no Prisma/Bridgecrew policy download (offline); --compact: no code excerpts in the output.
# checkov exits 1 when any check fails and prints the failures; a parse error is reported as a failure below.
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
status=0
"$VENV/bin/checkov" --framework bicep --skip-download --quiet --compact -d infra >"$OUT" 2>&1 || status=$?
cat "$OUT"
if grep -Eq "Parsing errors: [1-9]|Traceback" "$OUT"; then
  echo "check_bicep: checkov could not parse part of infra/ (see above)" >&2
  exit 2
fi
if ! grep -q "Passed checks:" "$OUT"; then
  echo "check_bicep: checkov ran no Bicep checks (no summary line)" >&2
  exit 2
fi
exit "$status"
