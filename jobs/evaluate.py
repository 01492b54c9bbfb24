"""`sparkdbn-evaluate`, as a script: the code is sparkdbn/jobs/evaluate.py."""

import sys

from sparkdbn.jobs.evaluate import console

if __name__ == "__main__":
    sys.exit(console())
