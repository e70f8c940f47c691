"""MNC (Multi-task Network Cascades, Dai, He, Sun, CVPR 2016) in PyTorch + torchvision.

The model package of the annotation workbench; it knows nothing of databases or UIs.
"""
from . import distributed
from .backbone import BackboneWeightsError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import MNCConfig
from .data import InstanceDataset, Sample
from .model import MNC, build_model
from .predictor import Instance, Predictor
from .roi_warp import roi_warp
from .train import TrainProgress, default_lr, train_model
from .warm_start import warm_start

__all__ = ["MNCConfig", "MNC", "Predictor", "Instance", "Sample", "InstanceDataset", "save_checkpoint",
           "load_checkpoint", "train_model", "TrainProgress", "build_model", "roi_warp", "BackboneWeightsError", "default_lr",
           "warm_start", "distributed"]
