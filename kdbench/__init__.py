"""kdbench: a benchmarking harness for adversarial knowledge distillation."""
__version__ = "0.1.0"
