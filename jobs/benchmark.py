"""`sparkdbn-benchmark`, as a script: the code is sparkdbn/jobs/benchmark.py."""

import sys

from sparkdbn.jobs.benchmark import console

if __name__ == "__main__":
    sys.exit(console())
