"""ml: the torch side shared by training and prediction. Datasets and loaders, per-batch
augmentation, the timm model factory, the Stepper (forward, loss, AMP, flips) and processes for
data-parallel training. Imports only core."""
