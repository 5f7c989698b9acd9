"""One tuning run: the loop (tuner), trials one at a time or on workers (scheduler, trial), evaluation and
per-op inspection, the run's record (history), its summary and report, and what watches it (callbacks,
tracking). Settings it runs under: policy."""
