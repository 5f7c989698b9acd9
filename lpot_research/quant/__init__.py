"""The vocabulary of quantization tuning: the tuning space and its configurations, the accuracy criterion,
calibration range searches, the one ordering of results, the QAT loop settings."""
