"""The benchmark's measurements: sparkdbn against this machine's limits (`suite.measure`).

Every figure is the median of several repetitions after a warm-up. Timings are reported, never
asserted: the README's Performance section shows one run.
"""
