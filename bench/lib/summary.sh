# Sourced by each benchmark: when `bench/report` runs it (BENCH_SUMMARY names a file), the
# benchmark adds its headline figures to the report's one table, separated by the ASCII unit
# separator (0x1f; a tab would let `read` merge empty fields):
# figure, sync-agent, baseline (named, from the same run), ratio, target.
summary_row() {
  [ -n "${BENCH_SUMMARY:-}" ] || return 0
  printf '%s\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s\n' "$BENCH_NAME" "$@" >>"$BENCH_SUMMARY"
}
