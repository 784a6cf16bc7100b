"""Datasets, transforms and batching for DETR training/evaluation."""
