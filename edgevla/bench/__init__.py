"""Benchmarks behind ``edgevla bench NAME``: each module has ``run(args) -> int``.

Speed is never asserted in tests; it is measured here, printed as a table and
written as JSON, with the peers (PyTorch, ONNX Runtime, ...) timed in the same
run so the figures are read as ratios on a noisy machine.
"""
