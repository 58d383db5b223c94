"""Benchmark harness: real models and data that install offline, tasks, runner, result records."""
