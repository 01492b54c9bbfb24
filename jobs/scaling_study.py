"""`sparkdbn-scaling-study`, as a script: the code is sparkdbn/jobs/scaling_study.py."""

import sys

from sparkdbn.jobs.scaling_study import console

if __name__ == "__main__":
    sys.exit(console())
