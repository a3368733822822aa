"""How numbers are produced: timing blocks, statistics, accuracy metrics, per-configuration memory
in a child process, and the measure step that turns runners into records."""
