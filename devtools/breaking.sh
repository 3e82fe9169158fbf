#!/usr/bin/env bash
# buf breaking (FILE rules) of protos/ as it is in the working tree, against the previous release: the
# latest tag v0.* reachable from HEAD; before there is one (or where tags were not fetched), the merge
# base of HEAD and main (origin/main). The baseline is built in a temp dir from that commit's protos/,
# with the vendored module laid under it (commits before it was vendored lack it), so any commit compares.
#   devtools/breaking.sh BUF THIRD_PARTY      (make breaking)
set -euo pipefail
buf=$(realpath "$1") third_party=$2

git rev-parse --git-dir >/dev/null 2>&1 || { echo "breaking: not a git checkout, nothing to compare against" >&2; exit 1; }
if ref=$(git describe --tags --abbrev=0 --match 'v0.*' 2>/dev/null); then
  what="release $ref"
elif ref=$(git merge-base HEAD main 2>/dev/null || git merge-base HEAD origin/main 2>/dev/null); then
  what="merge base ${ref:0:12}"
else
  echo "breaking: no v0.* tag and no merge base with main or origin/main (shallow clone? git fetch --unshallow --tags)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/$third_party"
cp -R "$third_party/." "$tmp/$third_party"
if git cat-file -e "$ref:$third_party" 2>/dev/null; then git archive "$ref" "$third_party" | tar -x -C "$tmp"; fi
git archive "$ref" protos | tar -x -C "$tmp"
printf 'version: v2\nmodules:\n  - path: protos\n  - path: %s\n' "$third_party" > "$tmp/buf.yaml"
(cd "$tmp" && "$buf" build protos -o baseline.binpb)

if ! out=$("$buf" breaking protos --against "$tmp/baseline.binpb" 2>&1); then
  printf '%s\nbreaking: protos/ breaks the API of %s\n' "$out" "$what" >&2
  exit 1
fi
echo "breaking: protos/ is compatible with $what"
