"""A study's orchestration: its spec, samplers and pruners, one trial's objective, the worker
loop every worker runs, local worker processes, Ray workers, progress and kept checkpoints."""
