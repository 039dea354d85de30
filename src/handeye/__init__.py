"""HandEye: pretrained vision encoders for dexterous manipulation, reproducibly."""

__version__ = "0.1.0"
