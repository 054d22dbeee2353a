"""What sharpcli writes and reads: atomic writes, flushed CSV logs, the column lists of every
CSV (schema), run folders, and checkpoint files."""
