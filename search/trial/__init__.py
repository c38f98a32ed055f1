"""One trial's work: datasets and the split, data on the device, augmentation, models and
backbones, the training loop, and what a model costs (params, FLOPs, latency)."""
