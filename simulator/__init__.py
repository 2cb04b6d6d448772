"""The simulated network: the model-driven simulator, its workload, and recorded traces (replayed live or offline)."""
