#!/usr/bin/env bash
# check-modules.sh: part of `make unit`. Every module of go.work (the shim,
# integration/, testkit/, bench/) is tidy (`go mod tidy` changes nothing),
# and a module that two of them require is required at one version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mods=$(go work edit -json | awk -F'"' '/"DiskPath"/ { print $4 }')
fail=0
for m in $mods; do
	tmp=$(mktemp -d)
	cp "$m/go.mod" "$tmp/"
	[[ -f "$m/go.sum" ]] && cp "$m/go.sum" "$tmp/"
	(cd "$m" && go mod tidy)
	if ! diff -u "$tmp/go.mod" "$m/go.mod" || { [[ -f "$tmp/go.sum" ]] && ! diff -q "$tmp/go.sum" "$m/go.sum" >/dev/null; }; then
		echo "check-modules: $m is not tidy: go mod tidy changed its go.mod or go.sum (now rewritten; commit it)" >&2
		fail=1
	fi
	rm -rf "$tmp"
done

# path version module, one line a requirement of a go.mod.
for m in $mods; do
	(cd "$m" && go mod edit -json) | awk -F'"' -v m="$m" '/"Path"/ { p = $4 } /"Version"/ && p != "" { print p, $4, m; p = "" }'
done | sort | awk '
	{ if ($1 == path && $2 != ver) { printf "check-modules: %s at %s in %s but %s in %s\n", $1, ver, where, $2, $3; bad = 1 }
	  path = $1; ver = $2; where = $3 }
	END { exit bad }' >&2 || fail=1
exit "$fail"
