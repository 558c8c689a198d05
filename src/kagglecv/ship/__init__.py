"""ship: take a run elsewhere. `make export` (weights, model.json, a standalone predict.py, ONNX),
`make kernel` (a Kaggle notebook + dataset, a dry run here, the push) and what the notebook runs on
Kaggle."""
