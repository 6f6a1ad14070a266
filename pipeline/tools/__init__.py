"""Operator tools around the pipeline: benchmarks, the device check, quality, memory sizing, model fetch."""
