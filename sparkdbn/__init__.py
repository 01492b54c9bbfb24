"""sparkdbn: Deep Belief Networks trained on Apache Spark (ParDBN)."""

__version__ = "0.1.0"
