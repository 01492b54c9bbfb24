"""`sparkdbn-pretrain-layer`, as a script: the code is sparkdbn/jobs/pretrain_layer.py."""

import sys

from sparkdbn.jobs.pretrain_layer import console

if __name__ == "__main__":
    sys.exit(console())
