"""Pure numpy math: no Spark here, so every kernel is testable against exact results."""
