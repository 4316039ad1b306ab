"""qa-toolkit: extractive QA end to end (LoRA fine-tuning, merge, ONNX export, batch serving, benchmarks)."""
