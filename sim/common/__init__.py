"""Small helpers used across sim (and by cifar): one of each.

validation (ConfigError and the checks that name the parameter), files (atomic writes),
meta (versions, git commit), threads (Numba/BLAS thread setup), figures (a figure saved
with a sidecar naming its command and commit), overrides (`--set A.B=VALUE`), norms,
outdir (output folders that never mix two runs: resume, overwrite), progress (bars on a
terminal, a line per stage otherwise).
None of them imports torch or another part of sim.
"""
