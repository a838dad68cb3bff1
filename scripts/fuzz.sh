#!/usr/bin/env bash
# Run every `func FuzzXxx` in the repository's modules for FUZZTIME each
# (default 15s): the parsers of image references, hosts.toml, config.toml,
# registries.conf, systemd units, resolv.conf, WWW-Authenticate, config.json
# and agent reports. New targets are picked up without editing this file.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-15s}
status=0
for module in agent aggregator pkg proto; do
  [ -d "$module" ] || continue
  while IFS= read -r file; do
    dir=$(dirname "$file")
    for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | awk '{print $2}'); do
      echo "== $module/${dir#"$module"/} $target ($FUZZTIME)"
      if ! (cd "$module" && go test "./${dir#"$module"/}" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME"); then
        status=1
      fi
    done
  done < <(grep -rl --include='*_test.go' '^func Fuzz' "$module")
done
exit $status
