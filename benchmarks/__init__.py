"""brainscan.benchmarks: perf_analyzer load tests of a running server, in-process baselines
on the same files with the same preprocessing, and the report (`brainscan bench run`)."""
