# Sourced by test.sh, demo.sh and bench.sh. The services a run starts are recorded (services.sh up
# --started-file "$started") and stopped when it exits, however it ends. The long child (mocha, the demo, the
# benchmark) runs through run_child: in its own process group, waited for in the background, so a SIGINT or
# SIGTERM reaches this script at once and cleanup ends the child and every process it started, then the
# services. A second signal during cleanup cannot cut it short.
started="$(mktemp)"
child=""
set -m # run_child's child gets a process group of its own, which cleanup can end as a whole

cleanup() {
  local rc=$?
  trap '' INT TERM
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [ -s "$started" ]; then
    echo "== stopping the services this run started: $(sort -u "$started" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2046
    bash scripts/services.sh down $(sort -u "$started" | tr '\n' ' ') || true
  fi
  rm -f "$started"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs "$@" as the run's child and returns its exit status.
run_child() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  return "$rc"
}
