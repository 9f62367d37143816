"""Checkpoints: files and CRC (files), the model they describe (model), run records (records), resuming
(resume) and fine-tuning (finetune)."""
