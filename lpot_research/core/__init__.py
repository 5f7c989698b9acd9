"""What every layer stands on: errors, the CPU class, the time budget, batches, lazy imports."""
