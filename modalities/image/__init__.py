"""The image modality: timm Vision Transformers, masked-patch (MAE) pretraining and image
classification, trained by foundry's one loop (``foundry.train.run_training``)."""
