"""How a model is measured: latency (interleaved with FP32), accuracy metrics, objectives."""
