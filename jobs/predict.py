"""`sparkdbn-predict`, as a script: the code is sparkdbn/jobs/predict.py."""

import sys

from sparkdbn.jobs.predict import console

if __name__ == "__main__":
    sys.exit(console())
