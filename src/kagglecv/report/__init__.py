"""report: the run's HTML page (`make report`): curves, CV table, confusion, suspect labels, and
look/, which looks inside the model (galleries, Grad-CAM heatmaps, the data map)."""
