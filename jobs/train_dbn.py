"""`sparkdbn-train`, as a script: the code is sparkdbn/jobs/train_dbn.py."""

import sys

from sparkdbn.jobs.train_dbn import console

if __name__ == "__main__":
    sys.exit(console())
