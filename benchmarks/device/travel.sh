#!/usr/bin/env bash
# What a call to a lent GPU machine carries: the checkout (tracked and untracked files) plus the carried ignored
# paths, 64 MiB in all; the bundled models' weights are 22 MB each. Before the call, leave some models' weights at
# home (untracked and excluded, the files stay on disk); after it, restore the index:
#   bash benchmarks/device/travel.sh leave coat-afhq-cat-128 [MODEL ...]   # prints the size of what travels
#   bash benchmarks/device/travel.sh size .gl/faces .gl/whl .gl/lpips      # the checkout plus these carried paths
#   bash benchmarks/device/travel.sh restore
set -euo pipefail
cd "$(dirname "$0")/../.."
EXCLUDE=$(git rev-parse --git-path info/exclude)
size() {  # the checkout git would copy (tracked and untracked, not ignored) plus the paths named
  { git ls-files -z --cached --others --exclude-standard; for path in "$@"; do find "$path" -type f -print0; done; } |
    du -cb --files0-from=- 2>/dev/null | tail -1 | awk '{printf "%.1f MiB travel (64 MiB at most)\n", $1 / 1048576}'
}
case ${1:-} in
  leave)
    shift
    [ $# -gt 0 ] || { echo "travel.sh leave: name at least one model folder under coat_hf/pretrained" >&2; exit 2; }
    for model in "$@"; do
      folder=coat_hf/pretrained/$model
      [ -d "$folder" ] || { echo "travel.sh leave: no model folder $folder" >&2; exit 2; }
      git rm -r -q --cached --ignore-unmatch "$folder"/*.safetensors
      echo "$folder/*.safetensors" >> "$EXCLUDE"  # restore removes these lines
    done
    size ;;
  size)
    shift
    size "$@" ;;
  restore)
    grep -v -x 'coat_hf/pretrained/[^/]*/\*\.safetensors' "$EXCLUDE" > "$EXCLUDE.tmp" || true
    mv "$EXCLUDE.tmp" "$EXCLUDE"
    git reset -q -- coat_hf/pretrained
    git status --short -- coat_hf/pretrained ;;
  *)
    echo "usage: travel.sh leave MODEL [MODEL ...] | size [PATH ...] | restore" >&2
    exit 2 ;;
esac
