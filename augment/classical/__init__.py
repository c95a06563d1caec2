"""Classical augmentation: named pipelines (`pipeline`, `pipelines.yaml`) of geometric
(`geometry`) and intensity (`intensity`) operations on albumentations, masks and boxes kept."""
