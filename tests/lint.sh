#!/usr/bin/env bash
# tests/lint.sh SRCDIR - house-style gates that a compiler does not enforce (STYLE.md):
# no strcpy/strcat/sprintf/vsprintf/gets/atoi/atol/atof, no system(), no popen().
# Prints each offending line and "N passed, N failed" at the end.
set -u
cd "${1:-.}" || exit 2
dirs="libcloud api-server scheduler compute-agent image-store billing cli tests bench"
pass=0 fail=0
check() {
    local what=$1 re=$2 hits
    hits=$(grep -rnE --include='*.c' --include='*.h' "$re" $dirs 2>/dev/null |
           grep -vE '^[^:]+:[0-9]+:\s*(/\*|\*|//)' || true)
    if [ -n "$hits" ]; then
        echo "FAIL $what:"; echo "$hits"; fail=$((fail + 1))
    else
        echo "ok   $what"; pass=$((pass + 1))
    fi
}
check "unbounded string copies" '\b(strcpy|strcat|sprintf|vsprintf|gets)\s*\('
check "unchecked number parsing" '\b(atoi|atol|atoll|atof)\s*\('
check "shell execution" '(^\s*|[=(;!&|,]\s*)(system|popen)\s*\('
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
