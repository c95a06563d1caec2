"""The task models: U-Net / Attention U-Net segmenters (`segment`) and Faster R-CNN
detectors with the cost-sensitive RPN (`detect`)."""
