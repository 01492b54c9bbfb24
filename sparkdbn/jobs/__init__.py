"""The jobs' code: each module's `main` parses flags and calls the library, `console` is its
console script (setup.cfg), and jobs/NAME.py runs the same `console`."""
