"""The analysis of runs from their CSV files: edge-of-stability verdicts, tables over seeds,
figures. Reads pandas frames; never imports torch."""
