#!/usr/bin/env bash
# Run every `func FuzzXxx` in the repository's modules for FUZZTIME each
# (default 15s): the parsers of image references, hosts.toml, config.toml,
# registries.conf, systemd units, resolv.conf, WWW-Authenticate, config.json
# agent reports, and registry answers through probe → report → the
# aggregator's Validate (e2e/hostile). New targets are picked up without editing this file.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-15s}
status=0
for module in agent aggregator pkg proto e2e; do
  [ -d "$module" ] || continue
  while IFS= read -r file; do
    dir=$(dirname "$file")
    for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | awk '{print $2}'); do
      echo "== $module/${dir#"$module"/} $target ($FUZZTIME)"
      out=$(cd "$module" && go test "./${dir#"$module"/}" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" 2>&1) && rc=0 || rc=$?
      printf '%s\n' "$out"
      if ((rc != 0)); then
        # go's fuzzing engine can end a short run with "context deadline
        # exceeded" when the time runs out while it minimizes a new
        # interesting input on a busy machine; that is no finding (a
        # finding always writes its failing input under testdata/fuzz).
        if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
          echo "== $module/${dir#"$module"/} $target: the fuzzing time ran out mid-minimization (no failing input): not a finding"
        else
          status=1
        fi
      fi
    done
  done < <(grep -rl --include='*_test.go' '^func Fuzz' "$module")
done
exit $status
