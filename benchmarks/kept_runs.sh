# Sourced by the long evidence scripts: keep each finished run's small files in results/ (committed as they
# finish) and put them back into runs/ on a fresh checkout, so an experiment resumes on any machine.
#
#   start_runs RUNS KEPT     # before the experiment: restore_runs, or with FRESH=1 start over
#   restore_runs RUNS KEPT   # finished runs come back from KEPT into RUNS
#   keep_runs RUNS KEPT      # the small files of each finished run in RUNS copied to KEPT
#
# Runs store absolute paths; the kept copies name them from the checkout ("./", "../"), which the
# comparison of a run's settings reads back against the working folder (config.absolute_paths).

kept_files="config.yaml summary.json diverged.json metrics.jsonl"

keep_runs() {
  local runs=$1 kept=$2 here above done dir rel f
  here=$(pwd); above=$(dirname "$here")
  for done in "$runs"/*/summary.json "$runs"/*/*/summary.json "$runs"/*/diverged.json "$runs"/*/*/diverged.json; do
    [ -f "$done" ] || continue  # an unfinished run has no summary.json yet
    dir=$(dirname "$done"); rel=${dir#"$runs"/}
    mkdir -p "$kept/$rel"
    for f in $kept_files; do
      [ -f "$dir/$f" ] && sed -e "s#$here/#./#g" -e "s#$above/#../#g" "$dir/$f" > "$kept/$rel/$f"
    done
  done
}

restore_runs() {
  local runs=$1 kept=$2 marker rel
  [ -d "$kept" ] || return 0
  for marker in "$kept"/*/summary.json "$kept"/*/*/summary.json "$kept"/*/diverged.json "$kept"/*/*/diverged.json; do
    [ -f "$marker" ] || continue
    rel=$(dirname "${marker#"$kept"/}")
    [ -e "$runs/$rel/summary.json" ] || [ -e "$runs/$rel/diverged.json" ] || {
      mkdir -p "$runs/$rel"; cp "$kept/$rel"/* "$runs/$rel/"; }
  done
}

# FRESH=1 reruns an experiment from nothing instead of reusing the committed runs: the local runs and the
# kept copies are removed (git still has the kept ones; `git diff` then shows what the rerun changed).
start_runs() {
  if [ "${FRESH:-0}" = 1 ]; then rm -rf "$1" "$2"; else restore_runs "$1" "$2"; fi
}
