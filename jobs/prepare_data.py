"""`sparkdbn-prepare`, as a script: the code is sparkdbn/jobs/prepare_data.py."""

import sys

from sparkdbn.jobs.prepare_data import console

if __name__ == "__main__":
    sys.exit(console())
